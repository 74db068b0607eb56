"""``run_gate``: tonight's run against the store's current baseline, once, with everything CI needs.

One comparison; every report format written from it; reviewed waivers applied (an
expired one fails the gate, naming it); a line per tensor appended to the store's
history; and, only when the gate passed on a complete run, tonight's run promoted.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from comparator.comparability import RunsComparison, check_comparable
from comparator.fingerprint import read_fingerprint
from comparator.gate.history import append_history, night_lines
from comparator.gate.store import Store, open_store
from comparator.gate.waivers import Waiver, load_waivers
from comparator.results import Report, TensorResult

EXIT_PASS, EXIT_FAIL = 0, 1
GATE_FILE = "gate.json"


@dataclass(frozen=True, kw_only=True)
class GateConfig:
    store: str
    run: str  # tonight's run
    output_dir: str
    formats: tuple[str, ...] = ("json", "junit", "html")
    compare: dict[str, Any] = field(default_factory=dict)  # CompareOptions.from_values keywords
    waivers: str | None = None  # the engine repository's waivers file
    promote: bool = False
    keep: int = 7
    allow_different_model: bool = False
    today: datetime.date | None = None  # the date waivers expire against (default: today, UTC)


@dataclass(frozen=True, kw_only=True)
class WaivedTensor:
    """A failing tensor a waiver covers; ``exceeded``: the metrics outside the waiver's tolerance."""

    label: str
    waiver: Waiver
    exceeded: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"tensor": self.label, "waiver": self.waiver.source, "exceeded": list(self.exceeded)}


@dataclass(frozen=True, kw_only=True)
class GateOutcome:
    report: Report
    runs: RunsComparison
    baseline: str  # the store's baseline name
    waivers: tuple[Waiver, ...]
    waived: tuple[WaivedTensor, ...]
    expired: tuple[Waiver, ...]
    promoted: str | None
    not_promoted: str | None  # why --promote did not promote
    exit_code: int
    exit_reason: str
    files: dict[str, str]

    def __bool__(self) -> bool:
        return self.exit_code == EXIT_PASS

    @property
    def exceeded(self) -> tuple[WaivedTensor, ...]:
        return tuple(w for w in self.waived if w.exceeded)

    def to_json(self) -> dict[str, Any]:
        return {
            "exit_code": self.exit_code, "exit_reason": self.exit_reason, "baseline": self.baseline,
            "run": self.report.target, "compare_exit_code": self.report.exit_code,
            "waivers": [w.to_json() for w in self.waivers], "waived": [w.to_json() for w in self.waived],
            "expired": [w.to_json() for w in self.expired], "promoted": self.promoted,
            "not_promoted": self.not_promoted, "runs": self.runs.to_json(), "files": dict(self.files),
        }


def result_values(result: TensorResult) -> dict[str, float]:
    """Every metric a waiver's tolerance may name, as measured for this tensor."""
    values: dict[str, float] = {}
    if result.stats is not None:
        values.update(result.stats.values())
    if result.metrics is not None:
        from comparator.judge.verdicts import metric_values

        values.update({m: v for m, v in metric_values(result.metrics, result.replica_disagreement).items()
                       if v is not None})
    return values


def apply_waivers(report: Report, waivers: tuple[Waiver, ...]) -> tuple[WaivedTensor, ...]:
    """The failing tensors each (active) waiver covers, and where a tolerance is exceeded."""
    waived = []
    for result in report.results:
        if result.status not in ("fail", "error"):
            continue
        waiver = next((w for w in waivers if w.tensors.search(result.name)), None)
        if waiver is None:
            continue
        exceeded: tuple[str, ...] = ()
        if waiver.kind == "tolerance":
            values = result_values(result)
            exceeded = tuple(
                limit.describe() + (f" (measured {values[m]:.3g})" if m in values else " (not measured)")
                for m, limit in waiver.tolerance.items() if m not in values or not limit.allows(values[m]))
        waived.append(WaivedTensor(label=result.label, waiver=waiver, exceeded=exceeded))
    return tuple(waived)


def incomplete(report: Report, run: str) -> str | None:
    """Why a run is not fit to become a baseline (a rank that did not close, missing files), or None."""
    fingerprint = read_fingerprint(run)
    unclosed = {status: n for status, n in fingerprint.rank_status.items() if status != "closed"}
    if unclosed:
        return "ranks did not finish: " + ", ".join(f"{n} {status}" for status, n in sorted(unclosed.items()))
    if report.problems.get("target"):
        return f"the run has problems: {report.problems['target'][0]}"
    return None


def _allow_fail(user: str | None, waivers: tuple[Waiver, ...]) -> str | None:
    patterns = ([user] if user else []) + [w.tensors.pattern for w in waivers]
    if not patterns:
        return None
    return patterns[0] if len(patterns) == 1 else "|".join(f"(?:{p})" for p in patterns)


def run_gate(config: GateConfig) -> GateOutcome:
    """Raises a DumpcmpError (exit 2) for an unusable store, waivers file, or runs that cannot be compared."""
    from comparator.judge.thresholds import load_thresholds
    from comparator.options import CompareOptions
    from comparator.pipeline import compare
    from comparator.report.files import write_reports

    store: Store = open_store(config.store)
    store.check_writable()
    baseline_name = store.current_name()
    baseline = store.current()
    today = config.today or datetime.datetime.now(datetime.timezone.utc).date()
    waivers = load_waivers(config.waivers) if config.waivers else ()
    expired = tuple(w for w in waivers if w.expired(today))
    active = tuple(w for w in waivers if not w.expired(today))
    thresholds = load_thresholds(config.compare.get("thresholds"))
    runs = check_comparable(baseline, config.run, allow_different_model=config.allow_different_model,
                            allow_dtype_change=thresholds.allow_dtype_change)
    values = dict(config.compare)
    values["allow_fail"] = _allow_fail(values.get("allow_fail"), active)
    report = compare(baseline, config.run, options=CompareOptions.from_values(**values))
    report = dataclasses.replace(report, runs=runs)
    waived = apply_waivers(report, active)
    code, reason = report.exit_code, report.exit_reason
    problems = []
    if expired:
        problems.append("expired: " + "; ".join(w.describe() for w in expired) +
                        " (renew it with dumpcmp gate accept, or remove it)")
    exceeded = [w for w in waived if w.exceeded]
    if exceeded:
        first = exceeded[0]
        problems.append(f"{len(exceeded)} waived tensor(s) exceed their waiver's tolerance, first {first.label}: "
                        f"{first.exceeded[0]} ({first.waiver.source})")
    if problems and code in (EXIT_PASS, EXIT_FAIL):
        code, reason = EXIT_FAIL, "; ".join(problems) if code == EXIT_PASS else f"{reason}; {'; '.join(problems)}"
    files = write_reports(report, config.output_dir, config.formats)
    promoted, not_promoted = None, None
    if config.promote:
        why = incomplete(report, config.run)
        if code != EXIT_PASS:
            not_promoted = f"the gate did not pass (exit code {code}): the baseline stays {baseline_name}"
        elif why is not None:
            not_promoted = f"tonight's run is incomplete ({why}): the baseline stays {baseline_name}"
        else:
            promoted = store.promote(config.run, keep=config.keep)
    night = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + f"-{uuid.uuid4().hex[:8]}"  # unique per gate run
    append_history(store.history_path, night_lines(
        report, night=night, run=os.path.abspath(config.run), run_id=runs.target.run_id, baseline=baseline_name,
        exit_code=code, extra={"waived": len(waived), "expired": [w.source for w in expired], "promoted": promoted}))
    files = {**files, "gate": os.path.join(config.output_dir, GATE_FILE)}
    outcome = GateOutcome(
        report=report, runs=runs, baseline=baseline_name, waivers=waivers, waived=waived, expired=expired,
        promoted=promoted, not_promoted=not_promoted, exit_code=code, exit_reason=reason, files=files)
    from dumper.format import write_json_atomic

    write_json_atomic(files["gate"], outcome.to_json())
    return outcome


def init_store(store_path: str, run: str) -> str:
    """Seed a store with its first baseline (a complete run); returns the baseline's name."""
    from dumper.reader import open_run

    from comparator.errors import GateError

    os.makedirs(store_path, exist_ok=True)
    store = open_store(store_path)
    store.check_writable()
    with open_run(run) as opened:
        problems = list(opened.problems)
    fingerprint = read_fingerprint(run)
    unclosed = {s: n for s, n in fingerprint.rank_status.items() if s != "closed"}
    if unclosed or problems:
        why = problems[0] if problems else ", ".join(f"{n} ranks {s}" for s, n in unclosed.items())
        raise GateError(f"{run}: an incomplete run cannot be a baseline ({why}); dump it again")
    return store.promote(run, keep=max(1, len(store.baselines()) + 1))
