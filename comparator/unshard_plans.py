"""Plan the unsharding of many logical tensors of the same layout once (comparator/unshard.py).

NOTE: a million-record run holds 120k logical tensors but only a few hundred layouts:
the same name and tags at every step, dumped by the same ranks with the same shapes.
``plan_unshard`` checks a layout in about 0.3 ms (issue 23: most of a 40 s plan), so a
:class:`UnshardPlanner` plans each layout once and gives every other tensor of that
layout the same plan with its own records. A layout is what ``plan_unshard`` reads: the
dims (override or the records'), and each record's dims, dtype, shape and parallel axes,
in order. Failed plans are not remembered: each tensor's error names it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence, TypeVar

from comparator.unshard import AxisOp, Coords, UnshardPlan, plan_unshard
from dumper.dims import DimsSpec
from dumper.format import IndexRecord

__all__ = ["UnshardPlanner"]

T = TypeVar("T")


@dataclass(frozen=True, kw_only=True)
class _Layout:
    ops: tuple[AxisOp, ...]
    order: tuple[tuple[Coords, int], ...]  # the plan's shards: coordinates -> index in the records given
    dims: DimsSpec | None
    shape: tuple[int, ...]
    dtype: str
    notes: tuple[str, ...]
    squeeze: tuple[int, ...]
    # NOTE: the layout's key holds id()s of the records' parallel dicts (shared per rank
    # by the reader); keeping the dicts here keeps those ids from being reused.
    parallels: tuple[Any, ...]


class UnshardPlanner:
    """``plan_unshard`` with a memory of the layouts it planned (one comparison's worth)."""

    def __init__(self, limit: int = 1 << 16) -> None:
        self._layouts: dict[tuple[Any, ...], _Layout] = {}
        self._limit = limit
        self._values: dict[Any, Any] = {}

    def shared(self, value: T) -> T:
        """One copy of an equal immutable value (a plan's description, a tuple of ranks) for all the work items."""
        if len(self._values) >= self._limit:
            return value
        return self._values.setdefault(value, value)

    def plan(self, label: str, records: Sequence[IndexRecord], *, dims: str | None = None) -> UnshardPlan:
        key = (dims, tuple((r.dims, r.dtype, r.shape, id(r.parallel)) for r in records))
        layout = self._layouts.get(key)
        if layout is not None:
            return UnshardPlan(label=label, ops=layout.ops, shards=tuple((c, records[i]) for c, i in layout.order),
                               dims=layout.dims, shape=layout.shape, dtype=layout.dtype, notes=layout.notes,
                               squeeze=layout.squeeze)
        plan = plan_unshard(label, records, dims=dims)
        if len(self._layouts) < self._limit:
            where = {id(record): index for index, record in enumerate(records)}
            self._layouts[key] = _Layout(
                ops=plan.ops, order=tuple((coords, where[id(record)]) for coords, record in plan.shards),
                dims=plan.dims, shape=plan.shape, dtype=plan.dtype, notes=plan.notes, squeeze=plan.squeeze,
                parallels=tuple(r.parallel for r in records))
        return plan
