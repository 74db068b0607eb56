"""The typed results of a comparison: one TensorResult per logical tensor, and the Report."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from aligners import AlignmentNote
from comparator.judge.metrics import Metrics
from comparator.judge.stats_only import StatsComparison
from comparator.judge.thresholds import Limit

Status = Literal["pass", "fail", "skip", "error"]
Origin = Literal["source", "propagated"]
STATUSES: tuple[Status, ...] = ("pass", "fail", "skip", "error")


@dataclass(frozen=True, kw_only=True)
class SideInfo:
    """What one run holds for a logical tensor."""

    name: str
    steps: tuple[int, ...]
    shape: tuple[int, ...] | None  # after unsharding
    dtype: str | None
    ranks: tuple[int, ...]
    dims: str | None
    plan: str | None  # how the shards were combined

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "steps": list(self.steps), "shape": list(self.shape) if self.shape is not None else None,
            "dtype": self.dtype, "ranks": list(self.ranks), "dims": self.dims, "unshard": self.plan,
        }


@dataclass(frozen=True, kw_only=True)
class Judgement:
    """Which rule judged a tensor, its limits, which failed, and the limits that would pass."""

    rule: str
    limits: dict[str, Limit]
    failed: tuple[str, ...]
    required: dict[str, Limit]  # the narrowest limits this tensor passes (the tolerance that would pass)
    calibrated: dict[str, float] = field(default_factory=dict)  # the rule's measured noise (dumpcmp calibrate)
    floor_ratio: float | None = None  # this tensor's metric / the calibrated noise (largest over the metrics)

    def to_json(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "limits": {m: limit.to_json() for m, limit in self.limits.items()},
            "failed": list(self.failed),
            "required": {m: limit.to_json() for m, limit in self.required.items()},
            "calibrated": dict(self.calibrated),
        }


@dataclass(frozen=True, kw_only=True)
class TensorResult:
    """The verdict on one logical tensor. Truthy when it passed."""

    name: str
    step: int
    tags: dict[str, Any]
    status: Status
    order: tuple[float, ...] = ()
    reason: str | None = None  # why it failed, errored or was skipped
    metrics: Metrics | None = None
    judgement: Judgement | None = None
    hint: str | None = None
    notes: tuple[str, ...] = ()
    baseline: SideInfo | None = None
    target: SideInfo | None = None
    replica_disagreement: dict[str, float] = field(default_factory=dict)
    origin: Origin | None = None  # for failures: the source of a divergence, or inherited
    origin_detail: str | None = None
    allowed: bool = False  # matched --allow-fail / --allow-skip
    load_error: bool = False  # the data could not be read (corrupt or missing file)
    predecessors: tuple[tuple[str, int, tuple[tuple[str, str], ...]], ...] = ()
    keys: tuple[tuple[str, int, tuple[tuple[str, str], ...]], ...] = ()  # the target tensors it covers
    alignment: AlignmentNote | None = None  # what the token aligner did (steps merged, rows trimmed, ...)
    stats_only: bool = False  # judged from index stats and checksums (a side was dumped in stats mode)
    stats: StatsComparison | None = None  # the stats-only metrics
    routing: Any = None  # comparator.judge.routing.RoutingCheck of a top-k ids or MoE output tensor

    def __bool__(self) -> bool:
        return self.status == "pass"

    @property
    def floor_ratio(self) -> float | None:
        """How many times its calibrated noise this tensor's metric is (None: not calibrated)."""
        return self.judgement.floor_ratio if self.judgement is not None else None

    @property
    def label(self) -> str:
        from comparator.matching import tensor_label

        return tensor_label(self.name, self.step, self.tags)


@dataclass(frozen=True, kw_only=True)
class Summary:
    total: int
    passed: int
    failed: int
    skipped: int
    errored: int
    allowed_failures: int = 0
    allowed_skips: int = 0

    @property
    def compared(self) -> int:
        return self.passed + self.failed


@dataclass(frozen=True, kw_only=True)
class FirstDivergence:
    name: str
    step: int
    tags: dict[str, Any]
    hint: str | None
    origin: Origin
    origin_detail: str | None
    reason: str | None
    index: int  # position in Report.results


@dataclass(frozen=True, kw_only=True)
class Report:
    baseline: str
    target: str
    aligner: str
    summary: Summary
    first_divergence: FirstDivergence | None
    results: tuple[TensorResult, ...]
    exit_code: int
    exit_reason: str
    problems: dict[str, tuple[str, ...]] = field(default_factory=dict)  # per run: what its reader found missing
    thresholds: str | None = None

    def __bool__(self) -> bool:
        return self.exit_code == 0
