"""Grafting, engine side: the baseline's value at a dump site, cut to this rank's shard.

``dumpcmp run --graft-from BASE --graft FILTER`` (the application layer) reads the
baseline once, before the command starts, and writes a *graft plan*: one directory
holding ``graft.json`` (which sites, steps and tags; see :class:`GraftPlan`) and
``graft.safetensors`` (each site's logical tensor, already unsharded and token-aligned).
Inside the engine, ``dumper.graft_point(name, value, dims=..., **tags)`` looks its
site up in that plan and, when found, returns :func:`reshard` of the logical tensor
for this rank instead of ``value``. The rules of comparing (aligners, unsharding)
stay in the comparator: this module only reads a plan and slices by dims.

:func:`reshard` is the inverse of the comparator's unsharding (comparator/unshard.py),
for the rank whose coordinates are given:

- a split axis (``h[tp]``): this rank's slice of the dim (outer axis first; zigzag:
  chunks ``r`` and ``2 x size - 1 - r``);
- a replicated axis: the whole value;
- a partial-sum axis: the value on the axis's rank 0 and zeros elsewhere, so that
  the sum over the axis is the value.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping

from dumper.dims import parse_dims
from dumper.errors import DumpcmpError
from dumper.format import AxisInfo
from dumper.safeio import JSON_LIMIT, read_text

if TYPE_CHECKING:
    import torch

PLAN_FILE = "graft.json"
DATA_FILE = "graft.safetensors"
PLAN_SCHEMA = 1


class GraftError(DumpcmpError):
    """A graft cannot be made: no such site in the baseline, no data, a layout or dtype that cannot match."""


def site_key(name: str, step: int, tags: Mapping[str, Any]) -> tuple[str, int, tuple[tuple[str, str], ...]]:
    """Name, step and tags as one hashable key; the same as an index record's identity."""
    return (name, int(step), tuple(sorted((str(k), json.dumps(v, default=str)) for k, v in tags.items())))


@dataclass(frozen=True, kw_only=True)
class GraftEntry:
    """One site's baseline value: the logical tensor stored under ``key`` in graft.safetensors."""

    name: str
    step: int  # the target step it replaces
    tags: dict[str, Any]
    key: str
    shape: tuple[int, ...]
    dtype: str  # the baseline's dtype, without "torch."
    baseline_step: int

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "step": self.step, "tags": self.tags, "key": self.key, "shape": list(self.shape),
                "dtype": self.dtype, "baseline_step": self.baseline_step}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "GraftEntry":
        return cls(name=str(data["name"]), step=int(data["step"]), tags=dict(data.get("tags") or {}),
                   key=str(data["key"]), shape=tuple(int(s) for s in data["shape"]), dtype=str(data["dtype"]),
                   baseline_step=int(data.get("baseline_step", data["step"])))

    @property
    def label(self) -> str:
        tags = " ".join(f"{k}={v}" for k, v in sorted(self.tags.items()))
        return f"{self.name} step={self.step}{' ' + tags if tags else ''}"


@dataclass(frozen=True, kw_only=True)
class GraftPlan:
    """What to graft: written by ``dumpcmp run`` before the command starts, read by every rank."""

    baseline: str  # the baseline run's directory (absolute)
    filter: str  # the --graft expression
    aligner: str
    entries: tuple[GraftEntry, ...]
    dir: str = ""  # where the plan lives (set by the reader)

    def to_json(self) -> dict[str, Any]:
        return {"schema": PLAN_SCHEMA, "baseline": self.baseline, "filter": self.filter, "aligner": self.aligner,
                "entries": [entry.to_json() for entry in self.entries]}

    def summary(self) -> dict[str, Any]:
        """What run.json records about the graft."""
        return {"from": self.baseline, "filter": self.filter, "aligner": self.aligner,
                "sites": [entry.label for entry in self.entries]}


def write_graft_plan(directory: str, plan: GraftPlan, tensors: Mapping[str, "torch.Tensor"]) -> None:
    """Write ``graft.json`` and ``graft.safetensors`` into ``directory`` (created if needed)."""
    from safetensors.torch import save_file

    from dumper.format import write_json_atomic

    os.makedirs(directory, exist_ok=True)
    save_file({key: tensor.contiguous() for key, tensor in tensors.items()}, os.path.join(directory, DATA_FILE))
    write_json_atomic(os.path.join(directory, PLAN_FILE), plan.to_json())


def read_graft_plan(directory: str) -> GraftPlan:
    path = os.path.join(directory, PLAN_FILE)
    try:
        data = json.loads(read_text(path, limit=JSON_LIMIT, what="graft plan", error=GraftError))
        if data.get("schema") != PLAN_SCHEMA:
            raise GraftError(f"{path}: graft plan schema {data.get('schema')!r}, this dumper reads {PLAN_SCHEMA}")
        return GraftPlan(baseline=str(data["baseline"]), filter=str(data.get("filter", "")),
                         aligner=str(data.get("aligner", "none")),
                         entries=tuple(GraftEntry.from_json(entry) for entry in data["entries"]), dir=directory)
    except GraftError:
        raise
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise GraftError(f"cannot read the graft plan {path}: {exc}; rerun dumpcmp run --graft-from") from None


class GraftSource:
    """A plan opened for lookups: site -> entry, entry -> tensor (read once, kept on the CPU)."""

    def __init__(self, plan: GraftPlan) -> None:
        self.plan = plan
        self._by_site = {site_key(e.name, e.step, e.tags): e for e in plan.entries}
        self._names = {e.name for e in plan.entries}
        self._cache: dict[str, "torch.Tensor"] = {}

    def lookup(self, name: str, step: int, tags: Mapping[str, Any]) -> GraftEntry | None:
        if name not in self._names:  # the common case costs one set test
            return None
        return self._by_site.get(site_key(name, step, tags))

    def tensor(self, entry: GraftEntry) -> "torch.Tensor":
        cached = self._cache.get(entry.key)
        if cached is None:
            from safetensors import safe_open

            with safe_open(os.path.join(self.plan.dir, DATA_FILE), framework="pt") as handle:
                cached = handle.get_tensor(entry.key)
            self._cache[entry.key] = cached
        return cached


class Grafter:
    """The engine side of a graft: opens the plan on first use, answers each graft point.

    A site the plan cannot serve (a layout or dtype that does not fit) is refused with
    one warning line per site, and the engine goes on with its own value.
    """

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self._source: GraftSource | None = None

    def source(self) -> GraftSource:
        if self._source is None:
            self._source = GraftSource(read_graft_plan(self.directory))
        return self._source

    def apply(self, name: str, value: Any, *, dims: str | None, step: int, tags: Mapping[str, Any],
              parallel: Mapping[str, AxisInfo], warn: Callable[[str, str], None]) -> tuple[Any, str | None]:
        """``(value the engine goes on with, the baseline it came from or None)``."""
        source = self.source()
        entry = source.lookup(name, step, tags)
        if entry is None:
            return value, None
        try:
            return graft_value(source.tensor(entry), value, dims, parallel, label=entry.label), source.plan.baseline
        except GraftError as exc:
            warn(f"graft:{entry.label}", f"dumpcmp: not grafting {exc}")
            return value, None


def graft_value(full: "torch.Tensor", value: Any, dims: str | None, parallel: Mapping[str, AxisInfo], *,
                label: str) -> "torch.Tensor":
    """This rank's shard of ``full`` in place of ``value``: same shape, the engine's dtype and device."""
    import torch

    if not isinstance(value, torch.Tensor):
        raise GraftError(f"{label}: the graft point holds a {type(value).__name__}, not a tensor; "
                         "graft a site that dumps one tensor")
    if value.dtype.is_floating_point != full.dtype.is_floating_point or value.dtype.is_complex:
        raise GraftError(f"{label}: the engine holds {str(value.dtype).removeprefix('torch.')} here and the baseline "
                         f"{str(full.dtype).removeprefix('torch.')}; a graft casts between floating types only")
    shard = reshard(full, dims, parallel, label=label)
    if tuple(shard.shape) != tuple(value.shape):
        raise GraftError(f"{label}: this rank's shard of the baseline is {list(shard.shape)} where the engine holds "
                         f"{list(value.shape)} (dims {dims!r}); the runs batch or split this site differently "
                         "(a baseline padded by DP-attention: dumpcmp run --graft-aligner concat_steps)")
    # NOTE: a copy, always: the engine may write into what it goes on with, and the plan's
    # tensor is cached for the other sites and ranks of this process.
    return shard.to(device=value.device, dtype=value.dtype, copy=True)


def reshard(full: "torch.Tensor", dims: str | None, parallel: Mapping[str, AxisInfo], *, label: str = "tensor"
            ) -> "torch.Tensor":
    """This rank's shard of the logical tensor ``full``, from the site's dims and the rank's coordinates.

    ``full`` is the comparator's unsharded tensor (its ``1`` dims dropped). Raises
    GraftError when the dims do not say how an active axis holds the tensor, or when a
    split does not divide the dim.
    """
    import torch

    active = {axis: info for axis, info in parallel.items() if info.size > 1}
    if dims is None:
        if active:
            axes = ", ".join(f"{a}({i.size})" for a, i in sorted(active.items()))
            raise GraftError(f"{label}: cannot cut the baseline to this rank's shard: the site has no dims annotation "
                             f"and the run has parallel axes {axes}; annotate dims at the graft point, e.g. 't h[tp]'")
        return full
    spec = parse_dims(dims)
    unknown = sorted(set(active) - spec.mentioned)
    if unknown:
        raise GraftError(f"{label}: dims {dims!r} do not say how axis {unknown[0]} ({active[unknown[0]].size} ranks) "
                         "holds the tensor; annotate it (split, ':partial' or ':replicated') to graft it")
    shard = full
    for index in spec.squeeze_dims:  # put back the size-1 dims the comparator dropped
        shard = shard.unsqueeze(index)
    if shard.dim() != spec.ndim:
        raise GraftError(f"{label}: the baseline holds {full.dim()} dims {list(full.shape)} but dims {dims!r} "
                         f"name {spec.ndim}; the site's layout differs from the baseline's")
    for index, dim in enumerate(spec.dims):
        for axis in dim.shards:  # outer split first
            info = active.get(spec.run_axis(axis))
            if info is None:
                continue
            shard = _cut(shard, index, info, zigzag=axis in spec.zigzag, label=label, dims=dims)
    if any(active[spec.run_axis(axis)].rank != 0 for axis in spec.partial if spec.run_axis(axis) in active):
        # A partial sum: one rank of the axis carries the value, the others add nothing.
        return torch.zeros_like(shard)
    return shard


def _cut(tensor: "torch.Tensor", dim: int, info: AxisInfo, *, zigzag: bool, label: str, dims: str) -> "torch.Tensor":
    import torch

    pieces = 2 * info.size if zigzag else info.size
    length = tensor.shape[dim]
    if length % pieces:
        raise GraftError(f"{label}: dim {dim} of the baseline holds {length} entries, which {info.size} ranks "
                         f"cannot split{' in zigzag order' if zigzag else ''} (dims {dims!r})")
    chunk = length // pieces
    if not zigzag:
        return tensor.narrow(dim, info.rank * chunk, chunk)
    first = tensor.narrow(dim, info.rank * chunk, chunk)
    second = tensor.narrow(dim, (pieces - 1 - info.rank) * chunk, chunk)
    return torch.cat([first, second], dim=dim)


__all__ = ["GraftEntry", "GraftError", "GraftPlan", "GraftSource", "Grafter", "graft_value", "read_graft_plan", "reshard", "site_key",
           "write_graft_plan"]
