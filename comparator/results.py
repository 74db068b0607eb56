"""The typed results of a comparison: one TensorResult per logical tensor, and the Report.

A result's *measurement* says what was measured, as a union of small records (never
flags): tensor metrics, a stats-only comparison, or why nothing could be measured. Its
*status* is the verdict on it (pass, fail, skip, error).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Generic, Iterator, Literal, TypeVar

from aligners import AlignmentNote
from comparator.judge.metrics import Metrics
from comparator.judge.stats_only import StatsComparison
from comparator.judge.limits import Limit
from comparator.matching import TensorKey

if TYPE_CHECKING:
    from comparator.judge.downstream import DownstreamMask
    from comparator.collectives import CollectiveTrace
    from comparator.fingerprint import RunFingerprint
    from comparator.judge.graft import GraftVerdict
    from comparator.judge.routing import RoutingCheck

if TYPE_CHECKING:
    from comparator.comparability import RunsComparison

Status = Literal["pass", "fail", "skip", "error"]
Origin = Literal["source", "propagated"]
Side = Literal["baseline", "target"]
STATUSES: tuple[Status, ...] = ("pass", "fail", "skip", "error")
SIDES: tuple[Side, Side] = ("baseline", "target")

T = TypeVar("T", covariant=True)
U = TypeVar("U")


@dataclass(frozen=True, slots=True)
class Pair(Generic[T]):
    """One value per run: the baseline's and the target's (code written once for both sides)."""

    baseline: T
    target: T

    def map(self, function: Callable[[T], U]) -> "Pair[U]":
        return Pair(function(self.baseline), function(self.target))

    def side(self, side: Side) -> T:
        return self.baseline if side == "baseline" else self.target

    def items(self) -> Iterator[tuple[Side, T]]:
        yield "baseline", self.baseline
        yield "target", self.target


@dataclass(frozen=True, kw_only=True, slots=True)
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


NO_SIDES: Pair[SideInfo | None] = Pair(None, None)


# ------------------------------------------------------------------- measurements
@dataclass(frozen=True, kw_only=True, slots=True)
class TensorMeasurement:
    """Metrics of both sides' tensors, unsharded and aligned, and how far replicas disagreed."""

    metrics: Metrics
    replica_disagreement: dict[str, float] = field(default_factory=dict)  # axis -> worst rel_diff between copies


@dataclass(frozen=True, kw_only=True, slots=True)
class StatsMeasurement:
    """Measured from the index's stats and checksums only (a side was dumped in stats mode)."""

    stats: StatsComparison


Unmeasured = Literal[
    "one_side",  # present in one run only (skip)
    "unplannable",  # the shards cannot be put back together from the index (error)
    "unreadable",  # the data files cannot be read: missing or corrupt (error)
    "error",  # another input problem found while comparing, e.g. token metadata (error)
    "shape_mismatch",  # both sides read, their shapes differ after aligning (fail)
    "stats_cannot_judge",  # stats alone cannot combine these shards, e.g. partial sums (skip)
    "nothing_compared",  # every row was left out (benign routing flips and what they reach) (skip)
]


@dataclass(frozen=True, kw_only=True, slots=True)
class NotMeasured:
    """Why nothing was measured; the result's ``reason`` says it in words."""

    why: Unmeasured


Measurement = TensorMeasurement | StatsMeasurement | NotMeasured


@dataclass(frozen=True, kw_only=True, slots=True)
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


@dataclass(frozen=True, kw_only=True, slots=True)
class TensorResult:
    """The verdict on one logical tensor. Truthy when it passed."""

    name: str
    step: int
    tags: dict[str, Any]
    status: Status
    measurement: Measurement
    order: tuple[float, ...] = ()
    reason: str | None = None  # why it failed, errored or was skipped
    judgement: Judgement | None = None
    hint: str | None = None
    notes: tuple[str, ...] = ()
    sides: Pair[SideInfo | None] = NO_SIDES
    origin: Origin | None = None  # for failures: the source of a divergence, or inherited
    origin_detail: str | None = None
    allowed: bool = False  # matched --allow-fail / --allow-skip
    predecessors: tuple[TensorKey, ...] = ()
    keys: tuple[TensorKey, ...] = ()  # the target tensors it covers
    alignment: AlignmentNote | None = None  # what the token aligner did (steps merged, rows trimmed, ...)
    routing: "RoutingCheck | None" = None  # of a top-k ids or MoE output tensor (comparator/judge/routing.py)
    # The target engine went on with the baseline's value here (dumpcmp run --graft): it agrees
    # by construction, so it is shown as grafted and not counted as a pass (comparator/judge/graft.py).
    grafted: bool = False
    # The rows benign routing flips before it reach, left out of its judgement (comparator/judge/downstream.py).
    downstream: "DownstreamMask | None" = None
    coverage: Coverage | None = None  # how much of it was compared (tensor measurements)

    def __bool__(self) -> bool:
        return self.status == "pass"

    # What the measurement holds, for readers that want one kind of it.
    @property
    def metrics(self) -> Metrics | None:
        return self.measurement.metrics if isinstance(self.measurement, TensorMeasurement) else None

    @property
    def stats(self) -> StatsComparison | None:
        return self.measurement.stats if isinstance(self.measurement, StatsMeasurement) else None

    @property
    def stats_only(self) -> bool:
        """Judged (or found unjudgeable) from index stats and checksums: a side was dumped in stats mode."""
        measurement = self.measurement
        return isinstance(measurement, StatsMeasurement) or (
            isinstance(measurement, NotMeasured) and measurement.why == "stats_cannot_judge")

    @property
    def load_error(self) -> bool:
        """The data could not be read (a corrupt or missing file)."""
        return isinstance(self.measurement, NotMeasured) and self.measurement.why == "unreadable"

    @property
    def replica_disagreement(self) -> dict[str, float]:
        measurement = self.measurement
        return measurement.replica_disagreement if isinstance(measurement, TensorMeasurement) else {}

    @property
    def baseline(self) -> SideInfo | None:
        return self.sides.baseline

    @property
    def target(self) -> SideInfo | None:
        return self.sides.target

    @property
    def floor_ratio(self) -> float | None:
        """How many times its calibrated noise this tensor's metric is (None: not calibrated)."""
        return self.judgement.floor_ratio if self.judgement is not None else None

    @property
    def label(self) -> str:
        from comparator.matching import tensor_label

        return tensor_label(self.name, self.step, self.tags)


@dataclass(frozen=True, kw_only=True, slots=True)
class Coverage:
    """How much of a tensor was compared: rows of its token (or request) dim, else its elements.

    Rows are left out by the routing analysis (benign flips) and downstream of benign flips.
    """

    compared: int
    total: int
    unit: Literal["tokens", "requests", "elements"]

    @property
    def fraction(self) -> float:
        return self.compared / self.total if self.total else 1.0

    def to_json(self) -> dict[str, Any]:
        return {"compared": self.compared, "total": self.total, "unit": self.unit}


@dataclass(frozen=True, kw_only=True)
class Summary:
    total: int
    passed: int
    failed: int
    skipped: int
    errored: int
    allowed_failures: int = 0
    allowed_skips: int = 0
    grafted: int = 0  # results the target took from a baseline (dumpcmp run --graft); not in passed
    # Results that compared nothing (every row left out): skipped, and gated by --min-compared instead.
    nothing_compared: int = 0
    partially_compared: int = 0  # results judged on only part of their rows
    # Rows compared / rows there were, over every measured tensor (a tensor without a row dim counts as one).
    compared_fraction: float = 1.0
    min_compared: float = 0.0  # the gate it was held to (--min-compared)

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
    """The whole result of a comparison: renderers need nothing else (they never read the runs)."""

    baseline: str
    target: str
    aligner: str  # the token aligner used (what --aligner auto chose)
    summary: Summary
    first_divergence: FirstDivergence | None
    results: tuple[TensorResult, ...]
    exit_code: int
    exit_reason: str
    problems: dict[str, tuple[str, ...]] = field(default_factory=dict)  # per run: what its reader found missing
    thresholds: str | None = None
    # The collectives each rank ran around the first divergence (None: none traced, or no divergence).
    collectives: "CollectiveTrace | None" = None
    fingerprints: "Pair[RunFingerprint] | None" = None  # where each run came from (run.json, rank.json)
    graft: "GraftVerdict | None" = None  # what a graft in the target did downstream (None: nothing grafted)
    # What differs between the runs' fingerprints (comparator/comparability.py); None: not checked.
    runs: RunsComparison | None = None
    aligner_reason: str | None = None  # why that aligner (--aligner auto); None: named on the command line

    def __bool__(self) -> bool:
        return self.exit_code == 0
