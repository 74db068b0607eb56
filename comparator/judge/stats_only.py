"""Stats-only measurements: compare a tensor from the index's statistics and checksums alone.

A run dumped in ``stats`` mode writes no tensor data, only each record's stats (numel,
min, max, mean, abs-mean, std, L2 norm, NaN/Inf counts, in float64) and a checksum (crc32 or xxh3_64) of its
bytes. That is enough for a cheap nightly gate:

- ``checksum``: the tensors are bitwise identical when their checksums are (a
  determinism check between two runs of one configuration);
- ``norm_ratio`` = l2(t) / l2(b): the metric that catches a doubled or missing reduction;
- ``mean_diff`` = |mean(t) - mean(b)| / abs_mean(b), and ``abs_mean_diff`` =
  |abs_mean(t) - abs_mean(b)| / abs_mean(b): drifts the norm can hide;
- NaN/Inf counts must agree.

What stats cannot see: a permutation of the values, or errors that keep norms and
means. Stats-only results say so in every report (``stats_only``). A stats comparison
is a measurement like tensor metrics (comparator/results.py ``StatsMeasurement``):
judged by the same verdicts (comparator/judge/verdicts.py), against the ``stats:``
section of the same thresholds file (comparator/judge/thresholds.py), with the same hints.

Shards are combined from their stats without data (plan from metadata only): a split
(``concat``) pools the shards' moments; a replicated axis picks one replica and checks
the others agree (their checksums, or else their stats); a partial sum cannot be rebuilt
from stats, so such tensors are skipped with the reason. Pooled stats do not depend on
row order, so a reordering token aligner changes nothing; padding rows do change them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

from comparator.errors import UnshardError
from dumper.checksums import comparable
from comparator.unshard import UnshardPlan

@dataclass(frozen=True, kw_only=True)
class PooledStats:
    """One side's whole-tensor statistics, pooled from its shards' index stats."""

    numel: int
    finite: int
    mean: float | None
    abs_mean: float | None
    std: float | None
    l2: float | None
    min: float | None
    max: float | None
    nan: int
    inf: int
    checksums: tuple[str, ...]  # per leaf shard, in plan order (one for a whole tensor)
    layout: str  # the plan's ops: checksums compare only between equal layouts

    def to_json(self) -> dict[str, Any]:
        return {
            "numel": self.numel, "mean": _finite(self.mean), "abs_mean": _finite(self.abs_mean),
            "std": _finite(self.std), "l2": _finite(self.l2), "min": _finite(self.min), "max": _finite(self.max),
            "nan": self.nan, "inf": self.inf, "checksums": list(self.checksums),
        }


@dataclass(frozen=True, kw_only=True)
class StatsComparison:
    """A stats-only comparison: both sides' pooled stats, the metrics, the checksum verdict."""

    baseline: PooledStats
    target: PooledStats
    norm_ratio: float
    mean_diff: float
    abs_mean_diff: float
    checksum_match: bool | None  # None: layouts, dtypes or checksum algorithms differ: checksums say nothing
    replica_stats_diff: float = 0.0
    replica_checksum_mismatch: tuple[str, ...] = ()  # replicated axes whose copies are not bitwise equal

    def values(self) -> dict[str, float]:
        return {
            "norm_ratio": self.norm_ratio, "mean_diff": self.mean_diff, "abs_mean_diff": self.abs_mean_diff,
            "replica_stats_diff": self.replica_stats_diff,
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "norm_ratio": _finite(self.norm_ratio), "mean_diff": _finite(self.mean_diff),
            "abs_mean_diff": _finite(self.abs_mean_diff), "replica_stats_diff": _finite(self.replica_stats_diff),
            "checksum_match": self.checksum_match, "replica_checksum_mismatch": list(self.replica_checksum_mismatch),
            "baseline": self.baseline.to_json(), "target": self.target.to_json(),
        }


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


# ------------------------------------------------------------------------ pooling
@dataclass(kw_only=True)
class _Pool:
    numel: int = 0
    finite: int = 0
    total: float = 0.0  # sum of finite values
    abs_total: float = 0.0
    squares: float = 0.0  # sum of (x - 0)^2 over finite values
    m2: float = 0.0  # sum of squared deviations, pooled as shards arrive
    low: float = math.inf
    high: float = -math.inf
    nan: int = 0
    inf: int = 0
    complete: bool = True  # every shard had finite stats where it had finite values
    checksums: list[str] = field(default_factory=list)

    def add_record(self, stats: Any, checksum: str) -> None:
        finite = stats.numel - stats.nan - stats.inf
        self.numel += stats.numel
        self.nan += stats.nan
        self.inf += stats.inf
        self.checksums.append(checksum)
        if finite <= 0:
            return
        if stats.mean is None or stats.abs_mean is None or stats.l2 is None or stats.std is None:
            self.complete = False
            return
        mean = stats.mean
        if self.finite:
            delta = mean - self.total / self.finite
            self.m2 += stats.std ** 2 * finite + delta * delta * self.finite * finite / (self.finite + finite)
        else:
            self.m2 = stats.std ** 2 * finite
        self.finite += finite
        self.total += mean * finite
        self.abs_total += stats.abs_mean * finite
        self.squares += stats.l2 ** 2
        self.low = min(self.low, stats.min if stats.min is not None else math.inf)
        self.high = max(self.high, stats.max if stats.max is not None else -math.inf)

    def add_pool(self, other: "_Pool") -> None:
        if other.finite and self.finite:
            delta = other.total / other.finite - self.total / self.finite
            self.m2 += other.m2 + delta * delta * self.finite * other.finite / (self.finite + other.finite)
        elif other.finite:
            self.m2 = other.m2
        self.numel += other.numel
        self.finite += other.finite
        self.total += other.total
        self.abs_total += other.abs_total
        self.squares += other.squares
        self.low = min(self.low, other.low)
        self.high = max(self.high, other.high)
        self.nan += other.nan
        self.inf += other.inf
        self.complete = self.complete and other.complete
        self.checksums.extend(other.checksums)

    def finish(self, layout: str) -> PooledStats:
        some = self.finite > 0
        return PooledStats(
            numel=self.numel, finite=self.finite,
            mean=self.total / self.finite if some else None,
            abs_mean=self.abs_total / self.finite if some else None,
            std=math.sqrt(max(self.m2, 0.0) / self.finite) if some else None,
            l2=math.sqrt(self.squares) if some else (0.0 if self.numel == 0 or self.nan + self.inf == self.numel else None),
            min=self.low if some else None, max=self.high if some else None,
            nan=self.nan, inf=self.inf, checksums=tuple(self.checksums), layout=layout,
        )


@dataclass(kw_only=True)
class _Replicas:
    stats_diff: float = 0.0
    checksum_mismatch: set[str] = field(default_factory=set)


def pool_stats(plan: UnshardPlan, replicas: _Replicas | None = None, *, partial_as_shards: bool = False) -> PooledStats:
    """Whole-tensor stats of a plan, from its records' stats (no data is read).

    Raises UnshardError when the plan sums partial values (stats of a sum are unknown)
    or a shard lacks stats. With ``partial_as_shards`` the partial sums are pooled as
    if they were shards: meaningful only against a side with the same layout.
    """
    partial = [op.axis for op in plan.ops if op.kind == "sum"]
    if partial and not partial_as_shards:
        raise UnshardError(
            f"{plan.label}: partial sums over {', '.join(partial)} cannot be added up from stats; "
            "dump this tensor in tensor mode, or after its reduction"
        )
    replicas = replicas if replicas is not None else _Replicas()
    by_coords = dict(plan.shards)
    pool = _pool(plan, by_coords, 0, (), replicas)
    if not pool.complete:
        raise UnshardError(f"{plan.label}: the index holds no stats for some shards; cannot compare from stats")
    layout = ";".join(f"{op.kind}:{op.axis}:{op.size}:{op.dim}" for op in plan.ops if op.kind != "pick")
    return pool.finish(layout + f"|{plan.dtype}|{list(plan.shape)}")


def _pool(plan: UnshardPlan, by_coords: dict[tuple[int, ...], Any], level: int, prefix: tuple[int, ...],
          replicas: _Replicas) -> _Pool:
    if level == len(plan.ops):
        record = by_coords[prefix]
        pool = _Pool()
        pool.add_record(record.stats, record.checksum)
        return pool
    op = plan.ops[level]
    present = sorted({coords[level] for coords, _ in plan.shards if coords[:level] == prefix})
    if op.kind == "pick":
        picked: _Pool | None = None
        for rank in present:
            try:
                pool = _pool(plan, by_coords, level + 1, prefix + (rank,), replicas)
            except KeyError:
                continue  # an incomplete replica (the planner checked one is complete)
            if picked is None:
                picked = pool
                continue
            if pool.checksums != picked.checksums:
                if comparable(*pool.checksums, *picked.checksums):
                    replicas.checksum_mismatch.add(op.axis)
                a, b = picked.finish(""), pool.finish("")
                replicas.stats_diff = max(replicas.stats_diff, *_stats_distance(a, b))
        if picked is None:
            raise RuntimeError("a replicated axis with no shard to pick")
        return picked
    combined = _Pool()
    for rank in range(op.size):
        combined.add_pool(_pool(plan, by_coords, level + 1, prefix + (rank,), replicas))
    return combined


def _relative(a: float | None, b: float | None, scale: float | None) -> float:
    if a is None or b is None:
        return 0.0 if a is None and b is None else math.inf
    if a == b:
        return 0.0
    return abs(a - b) / scale if scale else math.inf


def _stats_distance(baseline: PooledStats, target: PooledStats) -> tuple[float, float, float]:
    """(|norm_ratio - 1|, mean_diff, abs_mean_diff) of two pooled stats."""
    return (
        abs(_norm_ratio(baseline, target) - 1.0),
        _relative(target.mean, baseline.mean, baseline.abs_mean),
        _relative(target.abs_mean, baseline.abs_mean, baseline.abs_mean),
    )


def record_stats_distance(kept: Any, other: Any) -> float:
    """How far two records' stats are apart (the largest of |norm_ratio - 1|, mean_diff and
    abs_mean_diff): what a replica disagreement is measured by when no data was dumped."""
    pools = []
    for record in (kept, other):
        pool = _Pool()
        pool.add_record(record.stats, record.checksum)
        pools.append(pool.finish(""))
    return max(_stats_distance(pools[0], pools[1]))


def _norm_ratio(baseline: PooledStats, target: PooledStats) -> float:
    b, t = baseline.l2 or 0.0, target.l2 or 0.0
    if b > 0:
        return t / b
    return 1.0 if t == 0 else math.inf


def _layout(plan: UnshardPlan) -> tuple[tuple[str, int, str, int | None], ...]:
    return tuple((op.axis, op.size, op.kind, op.dim) for op in plan.ops)


def compare_stats(baseline_plans: Sequence[UnshardPlan], target_plans: Sequence[UnshardPlan]) -> StatsComparison:
    """Compare two sides (each one plan per step of an aligned unit) from stats alone.

    Partial sums cannot be added up from stats; when both sides have the same layout
    (a nightly run against a baseline of the same configuration), they are compared
    shard by shard instead.
    """
    same_layout = [_layout(p) for p in baseline_plans] == [_layout(p) for p in target_plans]
    replicas = _Replicas()
    baseline = _pool_steps([pool_stats(p, partial_as_shards=same_layout) for p in baseline_plans])
    target = _pool_steps([pool_stats(p, replicas, partial_as_shards=same_layout) for p in target_plans])
    checksum_match: bool | None = None
    # NOTE: checksums of different algorithms (a crc32 run against an xxh3_64 one) always
    # differ and say nothing: no verdict then, as for different layouts.
    if baseline.layout == target.layout and comparable(*baseline.checksums, *target.checksums):
        checksum_match = baseline.checksums == target.checksums
    norm_delta, mean_diff, abs_mean_diff = _stats_distance(baseline, target)
    return StatsComparison(
        baseline=baseline, target=target, norm_ratio=_norm_ratio(baseline, target), mean_diff=mean_diff,
        abs_mean_diff=abs_mean_diff, checksum_match=checksum_match, replica_stats_diff=replicas.stats_diff,
        replica_checksum_mismatch=tuple(sorted(replicas.checksum_mismatch)),
    )


def _pool_steps(parts: list[PooledStats]) -> PooledStats:
    if len(parts) == 1:
        return parts[0]
    pool = _Pool()
    for part in parts:
        sub = _Pool(numel=part.numel, finite=part.finite, nan=part.nan, inf=part.inf, checksums=list(part.checksums))
        if part.finite:
            sub.total = (part.mean or 0.0) * part.finite
            sub.abs_total = (part.abs_mean or 0.0) * part.finite
            sub.squares = (part.l2 or 0.0) ** 2
            sub.m2 = (part.std or 0.0) ** 2 * part.finite
            sub.low, sub.high = part.min or 0.0, part.max or 0.0
        pool.add_pool(sub)
    return pool.finish("|".join(p.layout for p in parts))
