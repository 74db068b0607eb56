"""Checks that need no baseline: what one run shows about itself (``dumpcmp check RUN``).

    from comparator.check import check_run
    report = check_run("runs/tp2")        # a CheckReport: coverage + findings
    report.exit_code                      # 0 clean, 1 a finding, 3 nothing checked

One module per check, each a function ``CheckContext -> (CheckCoverage, [Finding])``:
replicas (replicated tensors whose ranks disagree), partials (partial-sum shards whose
sum is implausible), nonfinite (the first NaN/Inf and the collective that spread it),
collectives (a rank that ran other collectives than its peers), gaps (ranks, steps or
shards missing; dims that do not fit the layout). Renderers: comparator/check/render.py.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable

from comparator.check.collectives import check_collectives
from comparator.check.context import CheckContext, PlannedTensor
from comparator.check.findings import CHECK_NAMES, CheckCoverage, CheckName, CheckReport, Finding, sort_findings
from comparator.check.gaps import check_gaps, check_layout
from comparator.check.nonfinite import check_nonfinite
from comparator.check.partials import check_partial_sums
from comparator.check.replicas import check_replicas
from comparator.errors import UnshardError
from comparator.judge.thresholds import Thresholds
from dumper.loader import TensorLoader
from comparator.matching import group_records
from comparator.unshard import UnshardPlan, plan_unshard
from dumper.reader import open_run

CHECKS: dict[CheckName, Callable[[CheckContext], tuple[CheckCoverage, list[Finding]]]] = {
    "replicas": check_replicas,
    "partial_sums": check_partial_sums,
    "nonfinite": check_nonfinite,
    "collectives": check_collectives,
    "gaps": check_gaps,
    "layout": check_layout,
}


@dataclass(frozen=True, kw_only=True)
class CheckOptions:
    """How ``check_run`` judges a run."""

    # Limits: replica_rel_diff judges replicas (the dtype's default unless a rule says otherwise).
    thresholds: Thresholds = field(default_factory=Thresholds)
    # Which checks run (all by default).
    checks: tuple[CheckName, ...] = CHECK_NAMES


def check_run(path: str | os.PathLike[str], *, options: CheckOptions | None = None) -> CheckReport:
    """Run the checks on one run directory. Raises DumpcmpError subclasses for unreadable input."""
    options = options if options is not None else CheckOptions()
    with open_run(path) as run:
        tensors = []
        for tensor in group_records(run.records):
            try:
                plan: UnshardPlan | UnshardError = plan_unshard(tensor.label, tensor.records)
            except UnshardError as exc:
                plan = exc
            tensors.append(PlannedTensor(tensor=tensor, plan=plan))
        context = CheckContext(run=run, tensors=tensors, loader=TensorLoader(run), thresholds=options.thresholds)
        coverage: list[CheckCoverage] = []
        findings: list[Finding] = []
        for name in options.checks:
            covered, found = CHECKS[name](context)
            coverage.append(covered)
            findings.extend(found)
        return CheckReport(
            run=os.fspath(path), mode="stats" if context.stats_only else "tensor", world_size=run.world_size,
            tensors=len(tensors), coverage=tuple(coverage), findings=sort_findings(findings),
        )


__all__ = ["CHECKS", "CheckOptions", "CheckReport", "CheckCoverage", "Finding", "check_run"]
