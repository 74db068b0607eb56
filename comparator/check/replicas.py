"""Replicated tensors whose ranks disagree.

A dims annotation that says ``ep:replicated`` promises that the ranks of an ``ep``
all-reduce group hold the same values: after an all-reduce they do, bit for bit. When
they do not, the reduction is missing (seed 1: the EP all-reduce skipped under fusion
leaves each EP rank with its own experts' partial sum) or a rank computed something
else. The pairs compared are exactly those ``compare`` verifies when it unshards
(:func:`comparator.replicas.replica_pairs`), judged by the same ``replica_rel_diff``
limit (thresholds file, or the dtype's default).

Stats-mode runs: equal checksums mean equal bytes; otherwise the records' stats are
compared with the stats-only ``replica_stats_diff`` limit.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING

from comparator.check.context import CheckContext, PlannedTensor
from comparator.check.findings import CheckCoverage, Finding
from comparator.judge.limits import STATS_DEFAULTS, dtype_class
from comparator.judge.stats_only import record_stats_distance
from comparator.replicas import ReplicaPair, reduction_groups, replica_pairs

if TYPE_CHECKING:
    import torch


def check_replicas(context: CheckContext) -> tuple[CheckCoverage, list[Finding]]:
    checked = 0
    findings: list[Finding] = []
    for planned in context.tensors:
        if isinstance(planned.plan, Exception):
            continue
        pairs = replica_pairs(planned.plan)
        if not pairs:
            continue
        worst: dict[str, tuple[float, ReplicaPair]] = {}
        cache: dict[tuple[str, int], "torch.Tensor"] = {}
        for pair in pairs:
            if _nonfinite(pair):
                continue  # the nonfinite check reports it; rel_diff says nothing here
            checked += 1
            value = _disagreement(context, pair, cache)
            if value > worst.get(pair.axis, (0.0, pair))[0]:
                worst[pair.axis] = (value, pair)
        limit = _limit(context, planned)
        disagreeing = {axis for axis, (value, _) in worst.items() if value > limit}
        for axis in _finest(planned, disagreeing):
            value, pair = worst[axis]
            if value > limit:
                findings.append(_finding(planned, axis, value, limit, pair, context.stats_only))
    _mark_first(findings, context)
    return CheckCoverage(check="replicas", checked=checked, unit="replica pairs"), findings


def _finest(planned: PlannedTensor, axes: set[str]) -> list[str]:
    """The disagreeing axes, less those that only hold a finer one's disagreement.

    NOTE: a world-sized ``attn_tp`` whose groups contain the ``ep`` groups disagrees
    whenever ``ep`` does; the missing reduction is over ``ep``, so only ``ep`` is named.
    """
    records = planned.tensor.records
    groups = {axis: [set(g) for g in reduction_groups(records, axis)] for axis in axes}

    def coarser(axis: str, than: str) -> bool:
        return all(any(small < big for big in groups[axis]) for small in groups[than])

    return sorted(axis for axis in axes if not any(other != axis and coarser(axis, other) for other in axes))


def _nonfinite(pair: ReplicaPair) -> bool:
    return any(r.stats.nan or r.stats.inf for r in (pair.kept, pair.other))


def _disagreement(context: CheckContext, pair: ReplicaPair, cache: dict[tuple[str, int], "torch.Tensor"]) -> float:
    if pair.kept.checksum and pair.kept.checksum == pair.other.checksum:
        return 0.0
    if context.stats_only or pair.kept.file is None or pair.other.file is None:
        return record_stats_distance(pair.kept, pair.other)
    from comparator.judge.metrics import rel_diff

    key = (pair.kept.source, pair.kept.seq)
    if key not in cache:
        cache[key] = context.load(pair.kept)
    value = rel_diff(cache[key], context.load(pair.other))
    return math.inf if math.isnan(value) else value


def _limit(context: CheckContext, planned: PlannedTensor) -> float:
    dtype = planned.tensor.records[0].dtype
    if context.stats_only:
        stats_limit = STATS_DEFAULTS[dtype_class(dtype)].get("replica_stats_diff")
        return stats_limit.high if stats_limit is not None and stats_limit.high is not None else 0.0
    _, limits = context.thresholds.limits_for(planned.tensor.name, planned.tensor.tags, dtype, dtype)
    found = limits.get("replica_rel_diff")
    return found.high if found is not None and found.high is not None else 0.0


def _finding(planned: PlannedTensor, axis: str, value: float, limit: float, pair: ReplicaPair,
             stats_only: bool) -> Finding:
    measure = "stats differ by" if stats_only else "rel_diff"
    tensor = planned.tensor
    return Finding(
        check="replicas", tensor=tensor.label, name=tensor.name, step=tensor.step, tags=dict(tensor.tags),
        axis=axis, ranks=(pair.kept.rank, pair.other.rank), value=value, limit=limit, order=tensor.position,
        message=(f"{tensor.label} is declared replicated over {axis}, but ranks {pair.kept.rank} and "
                 f"{pair.other.rank} disagree ({measure} {value:.3g} > {limit:.3g})"),
    )


def _mark_first(findings: list[Finding], context: CheckContext) -> None:
    """Give the first disagreement on each axis the hint: everything before it agreed."""
    seen: set[str] = set()
    for index, finding in enumerate(findings):
        if finding.axis is None or finding.axis in seen:
            continue
        seen.add(finding.axis)
        before = _last_agreeing(context, finding)
        where = f" (the replicated tensors before it agree; the last is {before})" if before else ""
        findings[index] = dataclasses.replace(finding, hint=(
            f"the first tensor whose {finding.axis} replicas disagree{where}: a missing or skipped all-reduce "
            f"over {finding.axis} between the two, or a rank that computed something else; if the {finding.axis} "
            f"ranks' values summed give the baseline, it is the all-reduce"))


def _last_agreeing(context: CheckContext, finding: Finding) -> str | None:
    last = None
    for planned in context.tensors:
        if planned.tensor.position >= finding.order:
            break
        if not isinstance(planned.plan, Exception) and finding.axis in planned.plan.replicated_axes():
            last = planned.label
    return last
