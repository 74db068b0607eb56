"""Put a logical tensor's shards back together, from its dims annotation.

Two halves (STYLE habit 15):

- :func:`plan_unshard` works on index records only. It checks the layout (every
  active axis accounted for, no shard missing, no two ranks in the same place) and
  returns an :class:`UnshardPlan`, so errors surface before any tensor is loaded
  and the plan can be printed in the report.
- :func:`execute_unshard` applies a plan to tensors, loading one shard at a time.

Operations, outermost first: ``sum`` the partial sums of a partial axis, ``concat``
the shards of a split dim (outer axis first), then ``pick`` one copy among the ranks
that hold the same shard. An axis of size 1 plays no part.

Two parallel views of one world often overlap: in a TP=2 run ``attn_tp`` and
``moe_tp`` are the same two ranks; under DP-attention ``attn_dp`` and ``ep`` may be.
The replicated axes are therefore not a grid: the ranks that share coordinates on
every sum and concat axis are *copies*; one is kept and the others are verified
against it. A disagreement is charged to a replicated axis when the two ranks differ
along it inside one of its all-reduce groups (comparator/replicas.py), so a
missing all-reduce over ``ep`` is charged to ``ep`` and not to ``moe_tp``.
"""

from __future__ import annotations

import functools

import dataclasses
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Literal, Sequence

from dumper.dims import DimsSpec, parse_dims
from comparator.errors import DimsSyntaxError, UnshardError
from comparator.replicas import copy_pairs
from dumper.format import IndexRecord

if TYPE_CHECKING:
    import torch

OpKind = Literal["pick", "sum", "concat"]
Coords = tuple[int, ...]


@dataclass(frozen=True, kw_only=True, slots=True)
class AxisOp:
    axis: str  # the run's parallel axis
    size: int
    kind: OpKind
    dim: int | None = None  # the tensor dim a concat joins
    # A zigzag split (SGLang's context parallelism): the dim is cut into 2 x size chunks
    # and rank r holds chunks r and 2 x size - 1 - r, one after the other.
    zigzag: bool = False

    def describe(self) -> str:
        if self.kind == "concat":
            return f"concat dim {self.dim} over {self.axis}({self.size}){', zigzag order' if self.zigzag else ''}"
        if self.kind == "sum":
            return f"sum over {self.axis}({self.size})"
        return f"pick one {self.axis} replica of {self.size}, verify the rest"


@dataclass(frozen=True, kw_only=True, slots=True)
class UnshardPlan:
    label: str  # the tensor, for messages
    ops: tuple[AxisOp, ...]
    shards: tuple[tuple[Coords, IndexRecord], ...]  # coordinates along ``ops`` -> record
    dims: DimsSpec | None
    shape: tuple[int, ...]  # the whole tensor's shape (size-1 ``1`` dims dropped)
    dtype: str
    notes: tuple[str, ...] = ()
    squeeze: tuple[int, ...] = ()  # dims named ``1`` in the dumped layout, dropped at the end

    @property
    def records(self) -> tuple[IndexRecord, ...]:
        return tuple(record for _, record in self.shards)

    @property
    def token_dim(self) -> int | None:
        return self.dims.token_dim if self.dims is not None else None

    def describe(self) -> str:
        steps = [op.describe() for op in self.ops]
        if self.squeeze:
            steps.append(f"drop size-1 dim{'s' if len(self.squeeze) > 1 else ''} {', '.join(map(str, self.squeeze))}")
        return "; ".join(steps) if steps else "single shard"

    def replicated_axes(self) -> tuple[str, ...]:
        return tuple(op.axis for op in self.ops if op.kind == "pick")


@dataclass(kw_only=True)
class UnshardOutcome:
    tensor: "torch.Tensor"
    # Replicated axis -> largest rel_diff of a replica from the one picked.
    replica_disagreement: dict[str, float] = field(default_factory=dict)


def plan_unshard(label: str, records: Sequence[IndexRecord], *, dims: str | None = None) -> UnshardPlan:
    """Plan how to rebuild one logical tensor from its records (one per rank).

    ``dims`` overrides the records' own annotation. Raises UnshardError (or
    DimsSyntaxError) with a message naming the tensor and what to fix.
    """
    if not records:
        raise UnshardError(f"{label}: no records")
    text = dims if dims is not None else _common_dims(label, records)
    try:
        spec = _parse_dims_cached(text) if text else None
    except DimsSyntaxError as exc:
        raise UnshardError(f"{label}: {exc}") from None
    dtypes = {record.dtype for record in records}
    if len(dtypes) > 1:
        raise UnshardError(f"{label}: ranks dumped different dtypes ({', '.join(sorted(dtypes))})")
    for record in records:
        if spec is not None and spec.ndim != len(record.shape):
            raise UnshardError(
                f"{label}: dims {spec.text!r} name {spec.ndim} dims but rank {record.rank} dumped shape "
                f"{list(record.shape)} ({len(record.shape)} dims); fix the annotation or use --override-dims"
            )
    sizes = _axis_sizes(label, records)
    active = {axis: size for axis, size in sizes.items() if size > 1}
    mentioned = spec.mentioned if spec is not None else set()
    notes: list[str] = []
    for axis, size in sorted(active.items()):
        if axis in mentioned:
            continue
        held = sorted({record.parallel[axis].rank for record in records if axis in record.parallel})
        if len(held) > 1:
            raise UnshardError(
                f"{label}: axis {axis} has size {size} but dims {text!r} do not say how its ranks combine; "
                f"annotate it, e.g. '{_example(spec, axis)}', or pass --override-dims '{records[0].name}=...'"
                if text else
                f"{label}: dumped by {size} {axis} ranks without a dims annotation; say how they combine, "
                f"e.g. dims='t h[{axis}]' (split), 't h[{axis}:partial]' (partial sums) or "
                f"'t h # {axis}:replicated', or pass --override-dims '{records[0].name}=...'"
            )
        notes.append(f"only {axis} rank {held[0] if held else '?'} of {size} dumped it")
    ops = _ops(spec, active)
    if not ops and len(records) > 1:
        ranks = ", ".join(str(r.rank) for r in records)
        raise UnshardError(
            f"{label}: ranks {ranks} each dumped it but no parallel axis tells how they combine; "
            "record the layout with dumper.set_parallel(tp=(rank, size)) and annotate dims"
        )
    shards: list[tuple[Coords, IndexRecord]] = []
    seen: dict[Coords, IndexRecord] = {}
    for record in records:
        coords = tuple(record.parallel[op.axis].rank for op in ops)
        if coords in seen:
            other = seen[coords]
            place = ", ".join(f"{op.axis}={c}" for op, c in zip(ops, coords)) or "the only position"
            raise UnshardError(
                f"{label}: ranks {other.rank} and {record.rank} both hold {place}; the run's parallel layout "
                "does not tell them apart (declare every axis with dumper.set_parallel, or annotate the dims)"
            )
        seen[coords] = record
        shards.append((coords, record))
    shards.sort(key=lambda item: item[0])
    plan = UnshardPlan(
        label=label, ops=ops, shards=tuple(shards), dims=spec, shape=(), dtype=records[0].dtype, notes=tuple(notes)
    )
    shape = _walk_shape(plan, 0, ())
    squeeze: tuple[int, ...] = ()
    if spec is not None:
        squeeze = spec.squeeze_dims
        for dim in squeeze:
            if shape[dim] != 1:
                raise UnshardError(
                    f"{label}: dims {spec.text!r} name dim {dim} '1' (a dim of size 1, dropped before comparing) "
                    f"but it holds {shape[dim]} entries (shape {list(shape)}); name it, or use --override-dims"
                )
    return UnshardPlan(
        label=label, ops=ops, shards=plan.shards, dims=spec.squeezed() if spec is not None else None,
        shape=tuple(size for dim, size in enumerate(shape) if dim not in squeeze), dtype=plan.dtype,
        notes=tuple(notes), squeeze=squeeze,
    )


# A run holds a handful of distinct dims strings and 100k+ logical tensors: parse each once.
_parse_dims_cached = functools.lru_cache(maxsize=4096)(parse_dims)


def _common_dims(label: str, records: Sequence[IndexRecord]) -> str | None:
    found = {record.dims for record in records}
    if len(found) > 1:
        listed = ", ".join(repr(d) for d in sorted(found, key=str))
        raise UnshardError(f"{label}: ranks disagree on dims ({listed}); use --override-dims to choose one")
    return found.pop()


def _axis_sizes(label: str, records: Sequence[IndexRecord]) -> dict[str, int]:
    sizes: dict[str, int] = {}
    for record in records:
        for axis, info in record.parallel.items():
            if sizes.setdefault(axis, info.size) != info.size:
                raise UnshardError(f"{label}: ranks disagree on the size of axis {axis} ({sizes[axis]} vs {info.size})")
    for record in records:
        for axis, size in sizes.items():
            if size > 1 and axis not in record.parallel:
                raise UnshardError(f"{label}: rank {record.rank} does not record axis {axis} that other ranks have")
    return sizes


def _example(spec: DimsSpec | None, axis: str) -> str:
    if spec is None:
        return f"t h[{axis}]"
    return f"{spec.text.split('#')[0].strip()} # {axis}:replicated"


def _ops(spec: DimsSpec | None, active: dict[str, int]) -> tuple[AxisOp, ...]:
    if spec is None:
        return ()
    ops: list[AxisOp] = []
    for axis in spec.partial:
        run_axis = spec.run_axis(axis)
        if run_axis in active:
            ops.append(AxisOp(axis=run_axis, size=active[run_axis], kind="sum"))
    for index, dim in enumerate(spec.dims):
        for axis in dim.shards:  # outer split first: it is combined last
            run_axis = spec.run_axis(axis)
            if run_axis in active:
                ops.append(AxisOp(axis=run_axis, size=active[run_axis], kind="concat", dim=index,
                                  zigzag=axis in spec.zigzag))
    # NOTE: picks come innermost, so each shard position picks among the replicas that
    # exist there: when two parallel views of one world overlap (DP-attention's attn_dp
    # and ep over the same 2 ranks), only the diagonal of the grid exists.
    for axis in spec.replicated:
        run_axis = spec.run_axis(axis)
        if run_axis in active:
            ops.append(AxisOp(axis=run_axis, size=active[run_axis], kind="pick"))
    return tuple(ops)


def _ranks_at(plan: UnshardPlan, level: int, prefix: Coords) -> list[int]:
    return sorted({coords[level] for coords, _ in plan.shards if coords[:level] == prefix})


def _walk_shape(plan: UnshardPlan, level: int, prefix: Coords) -> tuple[int, ...]:
    """Check that every needed shard is there; return the shape the subtree rebuilds."""
    if level == len(plan.ops):
        return tuple(dict(plan.shards)[prefix].shape)
    op = plan.ops[level]
    present = _ranks_at(plan, level, prefix)
    place = "".join(f" at {o.axis}={c}" for o, c in zip(plan.ops, prefix))
    if op.kind == "pick":
        # Any replica will do; those whose own shards are incomplete are not verified.
        shapes = []
        for rank in present:
            try:
                shapes.append(_walk_shape(plan, level + 1, prefix + (rank,)))
            except UnshardError:
                if not shapes and rank == present[-1]:
                    raise
        if len(set(shapes)) > 1:
            raise UnshardError(f"{plan.label}: replicas over {op.axis} have different shapes {sorted(set(shapes))}")
        return shapes[0]
    missing = [rank for rank in range(op.size) if rank not in present]
    if missing:
        raise UnshardError(
            f"{plan.label}: no shard from {op.axis} rank(s) {', '.join(map(str, missing))} of {op.size}{place} "
            f"(present: {', '.join(map(str, present)) or 'none'}); the run is incomplete"
        )
    shapes = [_walk_shape(plan, level + 1, prefix + (rank,)) for rank in range(op.size)]
    if op.kind == "sum":
        if len(set(shapes)) > 1:
            raise UnshardError(f"{plan.label}: partial sums over {op.axis} have different shapes {shapes}")
        return shapes[0]
    if op.dim is None:
        raise RuntimeError(f"{plan.label}: a concat over {op.axis} without a dim")
    if op.zigzag and any(shape[op.dim] % 2 for shape in shapes):
        raise UnshardError(
            f"{plan.label}: a zigzag split over {op.axis} needs an even number of entries in dim {op.dim} "
            f"on every rank (two chunks each), got {[shape[op.dim] for shape in shapes]}"
        )
    others = {shape[: op.dim] + shape[op.dim + 1 :] for shape in shapes}
    if len(others) > 1:
        raise UnshardError(
            f"{plan.label}: shards over {op.axis} differ outside dim {op.dim}: {[list(s) for s in shapes]}"
        )
    return shapes[0][: op.dim] + (sum(shape[op.dim] for shape in shapes),) + shapes[0][op.dim + 1 :]


def execute_unshard(plan: UnshardPlan, load: Callable[[IndexRecord], "torch.Tensor"], *,
                    sum_axes: frozenset[str] = frozenset(), verify_replicas: bool = True) -> UnshardOutcome:
    """Rebuild the tensor a plan describes, loading shards through ``load``.

    ``sum_axes`` turns the ``pick`` of those replicated axes into a ``sum`` over their
    all-reduce group (used to test whether the copies are un-reduced partial sums);
    raises UnshardError when a rank of that sum is missing.
    """
    if sum_axes & set(plan.replicated_axes()):
        plan = _summing(plan, sum_axes)
    outcome = UnshardOutcome(tensor=None)  # type: ignore[arg-type]
    by_coords = dict(plan.shards)
    tensor = _build(plan, by_coords, load, 0, (), verify_replicas, outcome)
    for dim in reversed(plan.squeeze):
        tensor = tensor.squeeze(dim)
    outcome.tensor = tensor
    return outcome


def _summing(plan: UnshardPlan, sum_axes: frozenset[str]) -> UnshardPlan:
    """The plan with the ``pick`` of ``sum_axes`` turned into a ``sum``, outermost.

    NOTE: outermost, so that the other copies are picked inside each summand: with
    overlapping views (ep and attn_tp over the same ranks) a sum nested inside a pick
    would see one rank per position and sum nothing.
    """
    order = sorted(range(len(plan.ops)), key=lambda i: 0 if plan.ops[i].kind == "pick" and plan.ops[i].axis in sum_axes else 1)
    ops = tuple(
        AxisOp(axis=op.axis, size=op.size, kind="sum") if op.kind == "pick" and op.axis in sum_axes else op
        for op in (plan.ops[i] for i in order)
    )
    shards = tuple(sorted(((tuple(coords[i] for i in order), record) for coords, record in plan.shards),
                          key=lambda item: item[0]))
    summing = dataclasses.replace(plan, ops=ops, shards=shards)
    _walk_shape(summing, 0, ())  # every rank of the sum is there
    return summing


def _build(plan: UnshardPlan, by_coords: dict[Coords, IndexRecord], load: Callable[[IndexRecord], "torch.Tensor"],
           level: int, prefix: Coords, verify: bool, outcome: UnshardOutcome) -> "torch.Tensor":
    import torch

    if level == len(plan.ops):
        return load(by_coords[prefix])
    op = plan.ops[level]
    if op.kind == "pick":
        # Picks are innermost: every rank below this prefix holds a copy of the same shard.
        copies = [record for coords, record in plan.shards if coords[:level] == prefix]
        return _pick_copy(plan, copies, load, verify, outcome)
    present = _ranks_at(plan, level, prefix)

    def sub(rank: int) -> "torch.Tensor":
        return _build(plan, by_coords, load, level + 1, prefix + (rank,), verify, outcome)

    if op.kind == "sum":
        total = sub(present[0]).to(torch.float64)
        for rank in present[1:]:
            total += sub(rank).to(torch.float64)
        return total
    dim = op.dim
    if dim is None:
        raise RuntimeError(f"{plan.label}: a concat over {op.axis} without a dim (the planner sets one)")
    parts = [sub(rank) for rank in range(op.size)]
    if len({p.dtype for p in parts}) > 1:
        parts = [p.to(torch.float64) for p in parts]
    if op.zigzag:
        halves = [part.chunk(2, dim=dim) for part in parts]
        parts = [first for first, _ in halves] + [second for _, second in reversed(halves)]
    return torch.cat(parts, dim=dim)


def _pick_copy(plan: UnshardPlan, copies: list[IndexRecord], load: Callable[[IndexRecord], "torch.Tensor"],
               verify: bool, outcome: UnshardOutcome) -> "torch.Tensor":
    """Keep the first copy; compare each other copy with the first of its group on each replicated axis."""
    picked = load(copies[0])
    if not verify or len(copies) == 1:
        return picked
    from comparator.judge.metrics import rel_diff

    for axis in plan.replicated_axes():
        outcome.replica_disagreement.setdefault(axis, 0.0)
    # NOTE: each group's first copy stays loaded while its group is checked; the
    # groups of one axis partition the copies, so this holds at most one tensor per group.
    loaded: dict[int, "torch.Tensor"] = {0: picked}
    current: tuple[int, "torch.Tensor"] | None = None
    for axis, leader, index in copy_pairs(plan, copies):
        if leader not in loaded:
            loaded[leader] = load(copies[leader])
        if index in loaded:
            tensor = loaded[index]
        elif current is not None and current[0] == index:
            tensor = current[1]
        else:
            tensor = load(copies[index])
            current = (index, tensor)
        disagreement = rel_diff(loaded[leader], tensor)
        previous = outcome.replica_disagreement[axis]
        outcome.replica_disagreement[axis] = (
            math.nan if math.isnan(disagreement) or math.isnan(previous) else max(previous, disagreement))
    return picked


def coords_text(plan: UnshardPlan, coords: Coords) -> str:
    return ", ".join(f"{op.axis}={c}" for op, c in zip(plan.ops, coords))


__all__ = ["AxisOp", "UnshardOutcome", "UnshardPlan", "coords_text", "execute_unshard", "plan_unshard"]
