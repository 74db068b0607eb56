"""The gate's history: what each night measured, so slow drift shows before it fails.

``STORE/history.jsonl``: each gate run appends one ``night`` line and one compact
``tensor`` line per tensor, in one write::

    {"kind": "night", "night": "20261201T031700Z-1b40", "time": "2026-12-01T03:17:00Z", "run": "...",
     "run_id": "1b40...", "baseline": "20261130T031702Z-run", "exit_code": 0, "passed": 90, "failed": 0, ...}
    {"kind": "tensor", "night": "20261201T031700Z-1b40", "tensor": "moe_output[layer=1]@step0",
     "status": "pass", "metric": "rel_diff", "error": 3.1e-13}

``error`` is the tensor's rel_diff (tensor data) or |norm_ratio - 1| (stats only): one
number per night that grows as the target drifts away from the baseline.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any

from comparator.errors import GateError
from comparator.results import Report, TensorResult

HISTORY_KINDS = ("night", "tensor")


@dataclass(frozen=True, kw_only=True)
class TensorPoint:
    status: str
    metric: str | None
    error: float | None


@dataclass(frozen=True, kw_only=True)
class Night:
    night: str
    time: str
    exit_code: int
    baseline: str | None
    summary: dict[str, Any]
    tensors: dict[str, TensorPoint] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class History:
    """The last N nights, oldest first, and every tensor any of them measured."""

    path: str
    nights: tuple[Night, ...]

    @property
    def tensors(self) -> tuple[str, ...]:
        seen: dict[str, None] = {}
        for night in self.nights:
            seen.update(dict.fromkeys(night.tensors))
        return tuple(seen)

    def series(self, tensor: str) -> list[TensorPoint | None]:
        return [night.tensors.get(tensor) for night in self.nights]

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "nights": [{"night": n.night, "time": n.time, "exit_code": n.exit_code, "baseline": n.baseline,
                        "summary": n.summary} for n in self.nights],
            "tensors": {t: [None if p is None else {"status": p.status, "metric": p.metric, "error": p.error}
                            for p in self.series(t)] for t in self.tensors},
        }


def tensor_error(result: TensorResult) -> tuple[str | None, float | None]:
    """One number per tensor and night: rel_diff, or |norm_ratio - 1| when judged from stats."""
    if result.stats is not None:
        value = abs(result.stats.norm_ratio - 1.0)
        return "norm_ratio-1", value if math.isfinite(value) else None
    if result.metrics is not None:
        value = result.metrics.rel_diff
        return "rel_diff", value if math.isfinite(value) else None
    return None, None


def night_lines(report: Report, *, night: str, run: str, run_id: str | None, baseline: str,
                exit_code: int, extra: dict[str, Any]) -> list[dict[str, Any]]:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    summary = report.summary
    lines: list[dict[str, Any]] = [{
        "kind": "night", "night": night, "time": stamp, "run": run, "run_id": run_id, "baseline": baseline,
        "exit_code": exit_code, "total": summary.total, "passed": summary.passed, "failed": summary.failed,
        "skipped": summary.skipped, "errored": summary.errored, **extra,
    }]
    for result in report.results:
        metric, error = tensor_error(result)
        lines.append({"kind": "tensor", "night": night, "tensor": result.label, "status": result.status,
                      "metric": metric, "error": error})
    return lines


def append_history(path: str, lines: list[dict[str, Any]]) -> None:
    """One write of every line, appended: a reader sees the whole night or (after a kill) none of it."""
    data = "".join(json.dumps(line, separators=(",", ":"), allow_nan=False) + "\n" for line in lines).encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
    except OSError as exc:
        raise GateError(f"{path}: cannot append to the gate history ({exc.strerror})") from None


def read_history(path: str, *, last: int | None = None) -> History:
    """The history file's nights (the last ``last`` of them); a corrupt line is an error naming it."""
    from dumper.safeio import INDEX_LIMIT, read_text

    try:
        raw = read_text(path, limit=INDEX_LIMIT, what="gate history", error=GateError).splitlines()
    except FileNotFoundError:
        raise GateError(f"{path}: no gate history yet (the gate appends to it on every run)") from None
    nights: dict[str, Night] = {}
    for number, text in enumerate(raw, start=1):
        if not text.strip():
            continue
        try:
            line = json.loads(text)
            kind = line["kind"]
            if kind == "night":
                nights[str(line["night"])] = Night(
                    night=str(line["night"]), time=str(line["time"]), exit_code=int(line["exit_code"]),
                    baseline=line.get("baseline"),
                    summary={k: line.get(k) for k in ("total", "passed", "failed", "skipped", "errored")})
            elif kind == "tensor":
                error = line.get("error")
                nights[str(line["night"])].tensors[str(line["tensor"])] = TensorPoint(
                    status=str(line["status"]), metric=line.get("metric"),
                    error=float(error) if error is not None else None)
            else:
                raise ValueError(f"unknown kind {kind!r}")
        except (ValueError, KeyError, TypeError) as exc:
            raise GateError(f"{path}:{number}: corrupt history line ({type(exc).__name__}: {exc}); "
                            f"delete or repair line {number} (each line is one JSON object)") from None
    ordered = tuple(nights.values())
    return History(path=path, nights=ordered[-last:] if last else ordered)
