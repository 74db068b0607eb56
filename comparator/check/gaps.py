"""Ranks, steps or shards missing, and tensors whose shards cannot be put back together.

Three sources, all metadata: what the run reader found (absent ranks, ranks that stop
early or did not close, torn index lines: the same list ``dumpcmp ls`` prints), steps a
rank skipped between its first and last, and the unsharder's planner, whose errors say
which shard of which tensor is missing (``gaps``) or why the dims do not fit the run's
layout (``layout``).
"""

from __future__ import annotations

from comparator.check.context import CheckContext
from comparator.check.findings import CheckCoverage, CheckName, Finding
from comparator.matching import LogicalTensor

# The planner's messages for a missing shard (comparator/unshard.py).
_MISSING_SHARD = ("no shard from", "the run is incomplete")


def check_gaps(context: CheckContext) -> tuple[CheckCoverage, list[Finding]]:
    findings = [Finding(check="gaps", message=problem) for problem in context.run.problems]
    for contents in context.run.ranks:
        steps = contents.steps
        if steps:
            holes = sorted(set(range(steps[0], steps[-1] + 1)) - set(steps))
            if holes:
                findings.append(Finding(
                    check="gaps", ranks=(contents.rank,), step=holes[0],
                    message=f"{contents.directory}: no record at step(s) {_ranges(holes)} between steps "
                            f"{steps[0]} and {steps[-1]}"))
    for planned in context.tensors:
        if isinstance(planned.plan, Exception) and any(m in str(planned.plan) for m in _MISSING_SHARD):
            findings.append(_tensor_finding("gaps", planned.tensor, str(planned.plan)))
    checked = len(context.run.ranks) + len(context.tensors)
    return CheckCoverage(check="gaps", checked=checked, unit="ranks and tensors"), findings


def check_layout(context: CheckContext) -> tuple[CheckCoverage, list[Finding]]:
    findings = [
        _tensor_finding("layout", planned.tensor, str(planned.plan))
        for planned in context.tensors
        if isinstance(planned.plan, Exception) and not any(m in str(planned.plan) for m in _MISSING_SHARD)
    ]
    return CheckCoverage(check="layout", checked=len(context.tensors), unit="tensors"), findings


def _tensor_finding(check: CheckName, tensor: LogicalTensor, message: str) -> Finding:
    return Finding(check=check, tensor=tensor.label, name=tensor.name, step=tensor.step, tags=dict(tensor.tags),
                   ranks=tuple(sorted({r.rank for r in tensor.records})), order=tensor.position, message=message)


def _ranges(steps: list[int]) -> str:
    parts: list[str] = []
    start = previous = steps[0]
    for step in [*steps[1:], None]:
        if step is not None and step == previous + 1:
            previous = step
            continue
        parts.append(str(start) if start == previous else f"{start}-{previous}")
        if step is not None:
            start = previous = step
    return ", ".join(parts)
