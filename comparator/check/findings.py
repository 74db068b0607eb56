"""What the checks that need no baseline report: typed findings, and the report holding them.

A :class:`Finding` is one thing wrong inside one run (ranks that disagree on a
replicated tensor, a NaN, a rank that ran other collectives than its peers, a gap).
A :class:`CheckReport` is the whole result of ``dumpcmp check``: what each check looked
at (so "clean" and "nothing checked" can be told apart) and every finding, in
execution order. Renderers (comparator/check/render.py) are pure functions of it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

CheckName = Literal["replicas", "partial_sums", "nonfinite", "collectives", "gaps", "layout"]
CHECK_NAMES: tuple[CheckName, ...] = ("replicas", "partial_sums", "nonfinite", "collectives", "gaps", "layout")
CHECK_TITLES: dict[CheckName, str] = {
    "replicas": "replicated tensors whose ranks disagree",
    "partial_sums": "partial-sum shards whose sum is implausible",
    "nonfinite": "the first NaN/Inf in execution order, and the collective that spread it",
    "collectives": "ranks that ran other collectives than their group's peers",
    "gaps": "ranks, steps or shards missing",
    "layout": "tensors whose shards cannot be put back together from their dims",
}

# NOTE: findings without a tensor (a missing rank, a collective out of step) sort by
# the tensor they precede where known, else after every tensor finding.
_NO_ORDER = 1 << 62


@dataclass(frozen=True, kw_only=True)
class Finding:
    """One thing wrong inside a run."""

    check: CheckName
    message: str  # one line: what is wrong and where
    tensor: str | None = None  # the logical tensor's label, e.g. moe_output[layer=0]@step0
    name: str | None = None
    step: int | None = None
    tags: dict[str, Any] = field(default_factory=dict)
    axis: str | None = None  # the parallel axis it concerns
    ranks: tuple[int, ...] = ()  # the ranks involved
    value: float | None = None  # the measured figure (rel_diff, a norm ratio, a NaN count, ...)
    limit: float | None = None  # the limit the figure broke, where there is one
    hint: str | None = None  # what it likely means, and where to look
    order: int = _NO_ORDER  # execution order (position of the tensor in the run)

    def to_json(self) -> dict[str, Any]:
        return {
            "check": self.check, "message": self.message, "tensor": self.tensor, "name": self.name,
            "step": self.step, "tags": dict(self.tags), "axis": self.axis, "ranks": list(self.ranks),
            "value": _finite(self.value), "limit": _finite(self.limit), "hint": self.hint,
        }


@dataclass(frozen=True, kw_only=True)
class CheckCoverage:
    """What one check looked at: ``checked`` things of kind ``unit``, or why it could not run."""

    check: CheckName
    checked: int
    unit: str  # "replica pairs", "tensors", "collective groups", ...
    not_run: str | None = None  # why the check could not run on this run (e.g. no collective trace)

    def describe(self) -> str:
        if self.not_run is not None:
            return f"not run: {self.not_run}"
        return f"{self.checked} {self.unit}"

    def to_json(self) -> dict[str, Any]:
        return {"check": self.check, "checked": self.checked, "unit": self.unit, "not_run": self.not_run}


@dataclass(frozen=True, kw_only=True)
class CheckReport:
    """The result of every check on one run."""

    run: str
    mode: str  # "tensor" or "stats": stats-mode runs get the checks stats allow
    world_size: int
    tensors: int  # logical tensors in the run
    coverage: tuple[CheckCoverage, ...]
    findings: tuple[Finding, ...]  # in execution order

    def __bool__(self) -> bool:
        return self.exit_code == 0

    @property
    def checked(self) -> int:
        return sum(c.checked for c in self.coverage)

    @property
    def first(self) -> Finding | None:
        """The earliest finding in execution order (a tensor finding before any gap)."""
        return self.findings[0] if self.findings else None

    def count(self, check: CheckName) -> int:
        return sum(1 for f in self.findings if f.check == check)

    @property
    def exit_code(self) -> int:
        """0 clean; 1 a finding; 3 nothing checked: no tensor (2, bad input, never gets this far)."""
        if self.findings:
            return 1
        return 0 if self.tensors and self.checked else 3

    @property
    def verdict(self) -> str:
        if self.findings:
            return f"{len(self.findings)} finding(s)"
        return "clean" if self.exit_code == 0 else "nothing checked"


def sort_findings(findings: list[Finding]) -> tuple[Finding, ...]:
    ranked = {name: index for index, name in enumerate(CHECK_NAMES)}
    return tuple(sorted(findings, key=lambda f: (f.order, ranked[f.check])))


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None
