"""Judge a measurement against limits; then, over all results: origins, first divergence, exit code.

One judge for every kind of measurement: tensor metrics and stats-only comparisons
(comparator/results.py) are judged by the same function against the same kind of
limits (comparator/judge/thresholds.py ``Criteria``).

Exit codes (DESIGN.md): 0 every tensor passed (or its failure/skip was allowed);
1 a failure, error or skip that was not allowed; 3 nothing was compared. (2, bad
input, is raised as an error before a report exists.)
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterable, Sequence

from comparator.judge.limits import Limit
from comparator.judge.metrics import Metrics
from comparator.judge.small_tensors import widen
from comparator.judge.thresholds import Criteria
from comparator.options import CompareOptions
from comparator.results import FirstDivergence, Judgement, StatsMeasurement, Summary, TensorMeasurement, TensorResult

Measured = TensorMeasurement | StatsMeasurement  # what can be judged against limits

EXIT_PASS = 0
EXIT_FAIL = 1
EXIT_NOTHING_COMPARED = 3


def metric_values(metrics: Metrics, replica_disagreement: dict[str, float]) -> dict[str, float | None]:
    worst = metrics.worst_token
    return {
        **metrics.as_dict(),
        "max_token_rel_l2": worst[1] if worst is not None else None,
        "replica_rel_diff": max(replica_disagreement.values(), default=0.0),
    }


def measured_values(measurement: Measured) -> dict[str, float | None]:
    """Every metric a measurement gives, by name (the names limits use)."""
    if isinstance(measurement, StatsMeasurement):
        return dict(measurement.stats.values())
    return metric_values(measurement.metrics, measurement.replica_disagreement)


def _nonfinite_differs(measurement: Measured) -> bool:
    if isinstance(measurement, StatsMeasurement):
        b, t = measurement.stats.baseline, measurement.stats.target
        return (b.nan, b.inf) != (t.nan, t.inf)
    return measurement.metrics.nonfinite_mismatch > 0


def judge(measurement: Measured, criteria: Criteria) -> Judgement:
    """The verdict of one measurement (tensor metrics or stats) against the limits of its rule.

    Failed checks are limit names, ``nonfinite`` (NaN/Inf differ) and ``checksum`` (a
    rule demands bitwise-identical data and the checksums differ or cannot be compared).
    """
    values = measured_values(measurement)
    numel = _numel(measurement)
    limits, factor = widen(criteria.limits, criteria.defaulted, numel)
    rule = criteria.rule if factor == 1.0 else \
        f"{criteria.rule}, widened x{factor:.3g} for {numel} element{'s' if numel != 1 else ''}"
    failed: list[str] = []
    required: dict[str, Limit] = {}
    for metric, limit in limits.items():
        value = values.get(metric)
        if value is None:
            continue
        if not limit.allows(value):
            failed.append(metric)
        if not math.isnan(value):
            required[metric] = limit.widened_to(value)
    if _nonfinite_differs(measurement):
        failed.append("nonfinite")
    if criteria.checksum and not (isinstance(measurement, StatsMeasurement) and measurement.stats.checksum_match):
        failed.append("checksum")
    calibrated = dict(criteria.calibrated)
    return Judgement(rule=rule, limits=limits, failed=tuple(failed), required=required,
                     calibrated=calibrated, floor_ratio=floor_ratio(values, calibrated))


def _numel(measurement: Measured) -> int:
    if isinstance(measurement, StatsMeasurement):
        return min(measurement.stats.baseline.numel, measurement.stats.target.numel)
    return measurement.metrics.numel


def floor_ratio(values: dict[str, float | None], calibrated: dict[str, float]) -> float | None:
    """The largest metric / calibrated noise (norm_ratio: its distance from 1), in float64."""
    ratios = []
    for metric, noise in calibrated.items():
        value = values.get(metric)
        if value is None or math.isnan(value):
            continue
        excess = abs(value - 1.0) if metric == "norm_ratio" else value
        ratios.append(excess / noise if noise > 0 else (0.0 if excess == 0 else math.inf))
    return max(ratios, default=None)


def describe_failure(judgement: Judgement, measurement: Measured) -> str:
    """One line: each failed check with its value and limit."""
    values = measured_values(measurement)
    parts = []
    for metric in judgement.failed:
        if metric == "nonfinite":
            parts.append(_describe_nonfinite(measurement))
        elif metric == "checksum" and isinstance(measurement, StatsMeasurement):
            parts.append("checksums differ (bitwise identical data required)" if measurement.stats.checksum_match is False
                         else "checksums not comparable (different layouts, dtypes or checksum algorithms) "
                         "but bitwise identity is required")
        elif metric in judgement.limits:
            parts.append(f"{metric} = {values[metric]:.6g} (limit: {judgement.limits[metric].describe()})")
    text = "; ".join(parts)
    return f"stats only: {text}" if isinstance(measurement, StatsMeasurement) else text


def _describe_nonfinite(measurement: Measured) -> str:
    if isinstance(measurement, StatsMeasurement):
        b, t = measurement.stats.baseline, measurement.stats.target
        return f"NaN/Inf counts differ (baseline {b.nan} NaN {b.inf} Inf, target {t.nan} NaN {t.inf} Inf)"
    return f"NaN/Inf differ at {measurement.metrics.nonfinite_mismatch} positions"


def finalize(results: Sequence[TensorResult], options: CompareOptions) -> tuple[tuple[TensorResult, ...], Summary, FirstDivergence | None, int, str]:
    results = [_mark_allowed(r, options) for r in results]
    results = _mark_origins(results)
    results = _mark_nonfinite_onset(results)
    summary = Summary(
        total=len(results),
        passed=sum(r.status == "pass" for r in results),
        failed=sum(r.status == "fail" for r in results),
        skipped=sum(r.status == "skip" for r in results),
        errored=sum(r.status == "error" for r in results),
        allowed_failures=sum(r.allowed and r.status in ("fail", "error") for r in results),
        allowed_skips=sum(r.allowed and r.status == "skip" for r in results),
        **_coverage_counts(results, options.min_compared),
    )
    first = _first_divergence(results)
    code, reason = _exit_code(results, summary)
    return tuple(results), summary, first, code, reason


def _coverage_counts(results: Sequence[TensorResult], min_compared: float) -> dict[str, Any]:
    """Results that compared nothing or part of their rows, and the fraction of rows compared overall.

    NOTE: a measured tensor without a row dim counts as one row; tensors not measured
    (one side only, errors) count for nothing either way.
    """
    compared = total = 0
    for result in results:
        coverage = result.coverage
        if coverage is not None:
            compared, total = compared + coverage.compared, total + coverage.total
        elif result.status in ("pass", "fail") and not result.stats_only:
            compared, total = compared + 1, total + 1
    return {
        "nothing_compared": sum(r.coverage is not None and r.coverage.total > 0 and r.coverage.compared == 0
                                for r in results),
        "partially_compared": sum(r.coverage is not None and 0 < r.coverage.compared < r.coverage.total
                                  for r in results),
        "compared_fraction": compared / total if total else 1.0,
        "min_compared": min_compared,
    }


def _nothing_compared(result: TensorResult) -> bool:
    return result.coverage is not None and result.coverage.total > 0 and result.coverage.compared == 0


def _mark_allowed(result: TensorResult, options: CompareOptions) -> TensorResult:
    pattern = options.allow_skip if result.status == "skip" else options.allow_fail if result.status in ("fail", "error") else None
    if pattern is not None and pattern.search(result.name):
        return dataclasses.replace(result, allowed=True)
    return result


def _mark_origins(results: list[TensorResult]) -> list[TensorResult]:
    """A failure is the *source* when what it consumes passed, else *propagated*."""
    by_key = {key: result for result in results for key in result.keys}
    marked = []
    for result in results:
        if result.status != "fail":
            marked.append(result)
            continue
        own = set(result.keys)
        consumed = [by_key[key] for key in result.predecessors if key not in own and key in by_key]
        # A tensor that stats alone could not judge (a partial sum) says nothing either way.
        unjudged = [c for c in consumed if c.stats_only and c.status == "skip"]
        consumed = [c for c in consumed if c not in unjudged]
        not_passing = [c for c in consumed if c.status != "pass"]
        if not not_passing:
            detail = (f"its inputs pass ({', '.join(c.label for c in consumed[:3])})" if consumed
                      else f"stats alone cannot judge its inputs ({', '.join(c.label for c in unjudged[:3])})" if unjudged
                      else "nothing was dumped before it on its ranks")
            marked.append(dataclasses.replace(result, origin="source", origin_detail=detail))
            continue
        culprit = not_passing[0]
        marked.append(dataclasses.replace(
            result, origin="propagated",
            origin_detail=f"consumes {culprit.label}, which did not pass ({culprit.status})",
        ))
    return marked


def _mark_nonfinite_onset(results: list[TensorResult]) -> list[TensorResult]:
    first: TensorResult | None = None
    marked = []
    for result in results:
        metrics = result.metrics
        only_target = (
            metrics is not None and (metrics.nan_target + metrics.inf_target) > 0
            and (metrics.nan_baseline + metrics.inf_baseline) == 0
        )
        if only_target and result.status == "fail" and metrics is not None:
            counts = f"{metrics.nan_target} NaN, {metrics.inf_target} Inf"
            if first is None:
                first = result
                hint = f"NaN/Inf only in target from here on ({counts}); the baseline has none"
            else:
                hint = f"NaN/Inf only in target ({counts}), since {first.label}"
            if result.hint is None or result.hint.startswith("NaN/Inf"):
                result = dataclasses.replace(result, hint=hint)
        marked.append(result)
    return marked


def _first_divergence(results: Sequence[TensorResult]) -> FirstDivergence | None:
    failing = [i for i, r in enumerate(results) if r.status == "fail"]
    if not failing:
        return None
    chosen = next((i for i in failing if not results[i].allowed), failing[0])
    result = results[chosen]
    return FirstDivergence(
        name=result.name, step=result.step, tags=result.tags, hint=result.hint,
        origin=result.origin or "source", origin_detail=result.origin_detail, reason=result.reason, index=chosen,
    )


def _exit_code(results: Iterable[TensorResult], summary: Summary) -> tuple[int, str]:
    results = list(results)
    if summary.compared == 0:
        return EXIT_NOTHING_COMPARED, "nothing was compared" + (
            f" ({summary.skipped} skipped, {summary.errored} errors)" if results else " (no tensors matched)"
        )
    bad = [r for r in results if r.status in ("fail", "error") and not r.allowed]
    # NOTE: results that compared nothing (every row left out after benign routing flips)
    # are gated by the fraction of rows compared overall, not one by one.
    skipped = [r for r in results if r.status == "skip" and not r.allowed and not _nothing_compared(r)]
    if bad:
        return EXIT_FAIL, f"{len(bad)} tensor(s) failed or errored (allow with --allow-fail REGEX)"
    if summary.compared_fraction < summary.min_compared:
        return EXIT_FAIL, (f"only {summary.compared_fraction:.1%} of the rows were compared (--min-compared "
                           f"{summary.min_compared:g}): {summary.nothing_compared} tensor(s) compared nothing and "
                           f"{summary.partially_compared} part of their rows (benign routing flips left out)")
    if skipped:
        return EXIT_FAIL, f"{len(skipped)} tensor(s) were present on one side only or not comparable (allow with --allow-skip REGEX)"
    return EXIT_PASS, "all compared tensors passed"
