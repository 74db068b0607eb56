"""Which ranks must agree on a replicated tensor: all-reduce groups and the copies to compare.

Metadata only (index records and unshard plans): the unsharder verifies its replicas
with these pairs (comparator/unshard.py), and ``dumpcmp check`` (comparator/check/)
judges exactly the same pairs without a baseline.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

from dumper.format import IndexRecord

if TYPE_CHECKING:
    from comparator.unshard import Coords, UnshardPlan


def reduction_group_axes(records: Sequence[IndexRecord], axis: str) -> tuple[str, ...]:
    """The axes whose coordinates an all-reduce over ``axis`` keeps fixed.

    Those are the other active axes independent of ``axis``: an axis that ``axis``
    determines, or that determines it (a coarser or finer view of the same ranks,
    ``attn_tp`` over the whole world against ``ep``), plays no part. With ``ep`` x
    ``moe_tp`` and a world-sized ``attn_tp``, the ``ep`` groups are the ranks that share
    their ``moe_tp`` rank, and the ``attn_tp`` group is the whole world.
    """
    sizes = {a: info.size for record in records for a, info in record.parallel.items() if info.size > 1}
    return tuple(other for other in sorted(sizes) if other != axis
                 and not _determines(records, other, axis) and not _determines(records, axis, other))


def reduction_groups(records: Sequence[IndexRecord], axis: str) -> tuple[tuple[int, ...], ...]:
    """The ranks of each all-reduce group of ``axis`` among ``records`` (sorted)."""
    fixed = reduction_group_axes(records, axis)
    groups: dict[tuple[int, ...], set[int]] = {}
    for record in records:
        groups.setdefault(_coords_on(record, fixed), set()).add(record.rank)
    return tuple(sorted(tuple(sorted(ranks)) for ranks in groups.values()))


def _determines(records: Sequence[IndexRecord], axis: str, other: str) -> bool:
    """Whether a rank's coordinate on ``axis`` fixes its coordinate on ``other``."""
    seen: dict[int, int] = {}
    for record in records:
        if axis not in record.parallel or other not in record.parallel:
            return False
        if seen.setdefault(record.parallel[axis].rank, record.parallel[other].rank) != record.parallel[other].rank:
            return False
    return True


def _coords_on(record: IndexRecord, axes: Sequence[str]) -> tuple[int, ...]:
    return tuple(record.parallel[a].rank if a in record.parallel else 0 for a in axes)


def copy_pairs(plan: UnshardPlan, copies: Sequence[IndexRecord]) -> list[tuple[str, int, int]]:
    """(axis, leader, other) positions in ``copies``: each copy against the first copy of its
    all-reduce group on each replicated axis, where the two sit at different places on it."""
    axes = plan.replicated_axes()
    fixed = {axis: reduction_group_axes(plan.records, axis) for axis in axes}
    leaders: dict[tuple[str, tuple[int, ...]], int] = {}
    pairs: list[tuple[str, int, int]] = []
    for index, record in enumerate(copies):
        for axis in axes:
            leader = leaders.setdefault((axis, _coords_on(record, fixed[axis])), index)
            if leader == index or copies[leader].parallel[axis].rank == record.parallel[axis].rank:
                continue  # a leader, or the same place on this axis: the other axes judge them
            pairs.append((axis, leader, index))
    return pairs


@dataclass(frozen=True, kw_only=True)
class ReplicaPair:
    """Two records that a replicated axis says must hold the same values."""

    axis: str
    kept: IndexRecord  # the first copy of its all-reduce group on ``axis``
    other: IndexRecord


def replica_pairs(plan: UnshardPlan) -> tuple[ReplicaPair, ...]:
    """Every comparison that verifying the plan's replicated axes makes (metadata only).

    The same pairs ``execute_unshard`` compares when it verifies replicas, so a check
    that needs no baseline (comparator/check/) judges exactly what ``compare`` would.
    """
    picks = sum(1 for op in plan.ops if op.kind == "pick")
    if not picks:
        return ()
    # NOTE: picks are innermost: the copies of one shard share every coordinate before them.
    outer = len(plan.ops) - picks
    by_shard: dict[Coords, list[IndexRecord]] = {}
    for coords, record in plan.shards:
        by_shard.setdefault(coords[:outer], []).append(record)
    return tuple(ReplicaPair(axis=axis, kept=copies[leader], other=copies[index])
                 for copies in by_shard.values() for axis, leader, index in copy_pairs(plan, copies))
