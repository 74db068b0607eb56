"""Put a logical tensor's shards back together, from its dims annotation.

Two halves (STYLE habit 15):

- :func:`plan_unshard` works on index records only. It checks the layout (every
  active axis accounted for, no shard missing, no two ranks in the same place) and
  returns an :class:`UnshardPlan`, so errors surface before any tensor is loaded
  and the plan can be printed in the report.
- :func:`execute_unshard` applies a plan to tensors, loading one shard at a time.

Operations, outermost first: ``pick`` one replica of a replicated axis (measuring
how far the other replicas are from it), ``sum`` the partial sums of a partial
axis, ``concat`` the shards of a split dim (outer axis first). An axis of size 1
plays no part.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Literal, Sequence

from comparator.dims import DimsSpec, parse_dims
from comparator.errors import DimsSyntaxError, UnshardError
from dumper.format import IndexRecord

if TYPE_CHECKING:
    import torch

OpKind = Literal["pick", "sum", "concat"]
Coords = tuple[int, ...]


@dataclass(frozen=True, kw_only=True)
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


@dataclass(frozen=True, kw_only=True)
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

    @property
    def trivial(self) -> bool:
        return not self.ops and len(self.shards) == 1

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
        spec = parse_dims(text) if text else None
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
    squeeze = spec.squeeze_dims if spec is not None else ()
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
    assert op.dim is not None
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

    ``sum_axes`` turns the ``pick`` of those replicated axes into a ``sum`` (used to
    test whether the replicas are un-reduced partial sums).
    """
    outcome = UnshardOutcome(tensor=None)  # type: ignore[arg-type]
    by_coords = dict(plan.shards)
    tensor = _build(plan, by_coords, load, 0, (), sum_axes, verify_replicas, outcome)
    for dim in reversed(plan.squeeze):
        tensor = tensor.squeeze(dim)
    outcome.tensor = tensor
    return outcome


def _build(plan: UnshardPlan, by_coords: dict[Coords, IndexRecord], load: Callable[[IndexRecord], "torch.Tensor"],
           level: int, prefix: Coords, sum_axes: frozenset[str], verify: bool, outcome: UnshardOutcome) -> "torch.Tensor":
    import torch

    if level == len(plan.ops):
        return load(by_coords[prefix])
    op = plan.ops[level]
    present = _ranks_at(plan, level, prefix)

    def sub(rank: int) -> "torch.Tensor":
        return _build(plan, by_coords, load, level + 1, prefix + (rank,), sum_axes, verify, outcome)

    if op.kind == "sum" or (op.kind == "pick" and op.axis in sum_axes):
        total = sub(present[0]).to(torch.float64)
        for rank in present[1:]:
            total += sub(rank).to(torch.float64)
        return total
    if op.kind == "pick":
        picked = None
        for rank in present:
            try:
                replica = sub(rank)
            except (UnshardError, KeyError):
                continue  # an incomplete replica (checked by the planner): not verified
            if picked is None:
                picked = replica
                if not verify:
                    break
                continue
            from comparator.metrics import rel_diff

            disagreement = rel_diff(picked, replica)
            previous = outcome.replica_disagreement.get(op.axis, 0.0)
            outcome.replica_disagreement[op.axis] = max(previous, disagreement) if not math.isnan(disagreement) else math.nan
            del replica
        assert picked is not None  # the planner guarantees one complete replica
        return picked
    parts = [sub(rank) for rank in range(op.size)]
    if len({p.dtype for p in parts}) > 1:
        parts = [p.to(torch.float64) for p in parts]
    if op.zigzag:
        halves = [part.chunk(2, dim=op.dim) for part in parts]
        parts = [first for first, _ in halves] + [second for _, second in reversed(halves)]
    return torch.cat(parts, dim=op.dim)


def coords_text(plan: UnshardPlan, coords: Coords) -> str:
    return ", ".join(f"{op.axis}={c}" for op, c in zip(plan.ops, coords))


def grid_size(plan: UnshardPlan) -> int:
    return math.prod(op.size for op in plan.ops) if plan.ops else 1


__all__ = ["AxisOp", "UnshardOutcome", "UnshardPlan", "execute_unshard", "plan_unshard"]
