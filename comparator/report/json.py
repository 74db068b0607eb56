"""The JSON report (``--format json``): the contract of DESIGN.md, plus details.

Contract fields (exact): ``summary`` {total, passed, failed, skipped, errored},
``first_divergence`` (null or {name, step, tags, hint, ...}), ``results`` in execution
order, each {name, step, tags, status, metrics {rel_diff, rel_l2, cosine, max_abs,
mean_abs, norm_ratio}, hint, ...}. Non-finite floats are written as null, so the
output is strict JSON.
"""

from __future__ import annotations

import json
import math
from typing import Any

from comparator.report.runs import runs_json
from comparator.results import Report, TensorResult

SCHEMA = "dumpcmp.compare/1"
GATE_METRICS = ("rel_diff", "rel_l2", "cosine", "max_abs", "mean_abs", "norm_ratio")


def _number(value: float | None) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return float(value)


def result_to_json(result: TensorResult) -> dict[str, Any]:
    metrics = result.metrics
    gate = {m: _number(metrics.as_dict()[m]) if metrics is not None else None for m in GATE_METRICS}
    if result.stats is not None:
        gate["norm_ratio"] = _number(result.stats.norm_ratio)  # the one contract metric stats can give
    data: dict[str, Any] = {
        "name": result.name,
        "step": result.step,
        "tags": result.tags,
        "status": result.status,
        "metrics": gate,
        "stats_only": result.stats_only,
        "stats": result.stats.to_json() if result.stats is not None else None,
        "hint": result.hint,
        "reason": result.reason,
        "origin": result.origin,
        "origin_detail": result.origin_detail,
        "allowed": result.allowed,
        "grafted": result.grafted,  # the target took the baseline's value here (dumpcmp run --graft)
        "notes": list(result.notes),
        "alignment": result.alignment.to_json() if result.alignment is not None else None,
        "rule": result.judgement.rule if result.judgement is not None else None,
        "judgement": result.judgement.to_json() if result.judgement is not None else None,
        "floor_ratio": _number(result.floor_ratio),  # metric / calibrated noise (dumpcmp calibrate); null if none
        "baseline": result.baseline.to_json() if result.baseline is not None else None,
        "target": result.target.to_json() if result.target is not None else None,
        "replica_disagreement": {a: _number(v) for a, v in result.replica_disagreement.items()},
        "routing": result.routing.to_json() if result.routing is not None else None,
        "downstream": result.downstream.to_json() if result.downstream is not None else None,
        "coverage": result.coverage.to_json() if result.coverage is not None else None,
    }
    if metrics is not None:
        worst = metrics.worst_token
        data["details"] = {
            "max_abs_index": list(metrics.max_abs_index),
            "max_abs_baseline": _number(metrics.max_abs_baseline),
            "max_abs_target": _number(metrics.max_abs_target),
            "baseline_norm": _number(metrics.baseline_norm),
            "target_norm": _number(metrics.target_norm),
            "scale": _number(metrics.scale),
            "numel": metrics.numel,
            "nan": {"baseline": metrics.nan_baseline, "target": metrics.nan_target},
            "inf": {"baseline": metrics.inf_baseline, "target": metrics.inf_target},
            "nonfinite_mismatch": metrics.nonfinite_mismatch,
            "token_dim": metrics.token_dim,
            "worst_token": {"index": worst[0], "rel_l2": _number(worst[1])} if worst is not None else None,
            "per_token_rel_l2": [_number(v) for v in metrics.per_token_rel_l2] if metrics.per_token_rel_l2 is not None else None,
        }
    else:
        data["details"] = None
    return data


def report_to_json(report: Report) -> dict[str, Any]:
    summary = report.summary
    first = report.first_divergence
    return {
        "schema": SCHEMA,
        "baseline": report.baseline,
        "target": report.target,
        "aligner": report.aligner,
        "aligner_reason": report.aligner_reason,
        "thresholds": report.thresholds,
        "exit_code": report.exit_code,
        "exit_reason": report.exit_reason,
        "summary": {
            "total": summary.total,
            "passed": summary.passed,
            "failed": summary.failed,
            "skipped": summary.skipped,
            "errored": summary.errored,
            "allowed_failures": summary.allowed_failures,
            "allowed_skips": summary.allowed_skips,
            "stats_only": sum(r.stats_only for r in report.results),
            "nothing_compared": summary.nothing_compared,
            "partially_compared": summary.partially_compared,
            "compared_fraction": summary.compared_fraction,
            "min_compared": summary.min_compared,
        },
        "first_divergence": None if first is None else {
            "name": first.name,
            "step": first.step,
            "tags": first.tags,
            "hint": first.hint,
            "origin": first.origin,
            "origin_detail": first.origin_detail,
            "reason": first.reason,
            "index": first.index,
            "collectives": report.collectives.to_json() if report.collectives is not None else None,
        },
        "results": [result_to_json(r) for r in report.results],
        # null, or what a graft did after its first grafted tensor: gone, moved (next_divergence), unchanged
        "graft": report.graft.to_json() if report.graft is not None else None,
        "problems": {side: list(found) for side, found in report.problems.items()},
        "runs": runs_json(report),  # what differs between the runs' fingerprints (comparator/report/runs.py)
    }


def render_json(report: Report) -> str:
    # NOTE: compact: a run of thousands of tensors with per-token errors makes megabytes
    # of JSON, and indenting it costs more than comparing (pipe it through jq to read it).
    return json.dumps(report_to_json(report), separators=(",", ":"), allow_nan=False, default=str) + "\n"
