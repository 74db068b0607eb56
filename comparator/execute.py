"""Execute work items: load, unshard, align, measure, judge, hint; one result per item.

One factory, :func:`make_executor`, builds the executor from the options, in this
process (``jobs == 1``) and, through :class:`WorkerSetup`, in every worker process
(comparator/parallel.py) and Ray task (comparator/ray_executor.py), so the paths
cannot set up differently.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Literal, Sequence

from aligners import Aligner, AlignmentNote
from comparator.errors import UnshardError
from comparator.judge.hints import (batching_hint, layout_hint, nonfinite_hint, padding_hint, replica_hint, scale_hint, shape_hint,
                                    stats_replica_hint)
from comparator.judge.limits import MeasurementKind
from comparator.judge.metrics import Metrics, compute_metrics, identical_metrics
from comparator.judge.precision import judged_dtypes
from aligners.axes import dim_index
from comparator.judge.downstream import DownstreamMask, FlipTracker, drop_rows
from comparator.judge.routing import RoutingCheck, RoutingJudge, keep_agreeing_tokens, topk_verdict
from comparator.judge.stats_only import compare_stats
from comparator.judge.thresholds import Criteria
from comparator.judge.verdicts import describe_failure, judge
from dumper.loader import TensorLoader
from comparator.options import CompareOptions
from comparator.plan import OneSided, StatsWork, TensorWork, Unplannable, WorkItem
from comparator.results import (Coverage, Judgement, NotMeasured, Pair, StatsMeasurement, TensorMeasurement,
                                TensorResult)
from comparator.replicas import reduction_groups
from comparator.unshard import UnshardPlan, execute_unshard
from dumper.errors import DumpcmpError, RunFormatError
from dumper.reader import open_run
from dumper.run import Run

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


def make_executor(runs: Pair[Run], options: CompareOptions, axis_sizes: dict[str, int]) -> "Executor":
    """The executor of a comparison: the serial path and each worker process build theirs here."""
    return Executor(
        options=options, axis_sizes=axis_sizes, aligner=options.make_aligner(),
        loaders=runs.map(lambda run: TensorLoader(run, verify_checksums=options.verify_checksums)),
    )


@dataclass(frozen=True, kw_only=True)
class WorkerSetup:
    """What a worker (a local process or a Ray task) builds its executor from: where the runs are, not their indexes.

    NOTE: workers only load data; the comparing process already read and planned the
    indexes. Paths are absolute: a Ray worker's current directory is not the caller's.
    """

    paths: Pair[str]
    roots: Pair[str]
    formats: Pair[str]
    options: CompareOptions
    axis_sizes: dict[str, int]

    @classmethod
    def of(cls, runs: Pair[Run], options: CompareOptions, axis_sizes: dict[str, int]) -> "WorkerSetup":
        return cls(paths=runs.map(lambda run: os.path.abspath(run.path)),
                   roots=runs.map(lambda run: os.path.abspath(run.root)),
                   formats=runs.map(lambda run: run.format), options=options, axis_sizes=axis_sizes)

    def make_executor(self) -> "Executor":
        return make_executor(Pair(self._run("baseline"), self._run("target")), self.options, self.axis_sizes)

    def _run(self, side: str) -> Run:
        path, root = getattr(self.paths, side), getattr(self.roots, side)
        # Other formats (SGLang .pt dumps) load through their own reader.
        return Run(path=path, info=None, ranks=[], root=root) if getattr(self.formats, side) == "dumpcmp" else open_run(path)


class Executor:
    """Executes work items against open runs (in this process or a worker); see make_executor."""

    def __init__(self, *, options: CompareOptions, axis_sizes: dict[str, int], aligner: Aligner,
                 loaders: Pair[TensorLoader]) -> None:
        self.options = options
        self.thresholds = options.thresholds
        self.axis_sizes = axis_sizes
        self.aligner = aligner
        self.loaders = loaders
        self.routing = RoutingJudge(options.routing, self._load_aligned, self._passes_thresholds)
        self.flips = FlipTracker(self.routing.check)

    def run(self, item: WorkItem) -> TensorResult:
        place = item.place
        if isinstance(item, OneSided):
            return place.unmeasured("skip", "one_side", item.reason)
        if isinstance(item, Unplannable):
            return place.unmeasured("error", "unplannable", item.reason)
        try:
            if isinstance(item, StatsWork):
                return self._compare_stats(item)
            return self._compare(item)
        except RunFormatError as exc:
            log.warning("%s: %s", place.name, exc)
            return place.unmeasured("error", "unreadable", f"cannot read data: {exc}")
        except DumpcmpError as exc:
            return place.unmeasured("error", "error", str(exc))

    # ------------------------------------------------------------- one verdict
    def _criteria(self, item: TensorWork | StatsWork, kind: MeasurementKind) -> Criteria:
        dtypes = item.dtypes
        return self.thresholds.criteria_for(kind, item.place.name, item.place.tags, dtypes.baseline, dtypes.target)

    def _verdict(self, item: TensorWork | StatsWork, measurement: TensorMeasurement | StatsMeasurement,
                 criteria: Criteria, notes: Sequence[str], *, alignment: AlignmentNote | None = None,
                 routing: RoutingCheck | None = None, downstream: DownstreamMask | None = None,
                 specific_hint: Callable[[Judgement], str | None] = lambda judgement: None,
                 coverage: Coverage | None = None) -> TensorResult:
        """Judge a measurement of either kind; a failure gets its reason and the first hint that fits."""
        judgement = judge(measurement, criteria)
        if not judgement.failed:
            return item.place.result(status="pass", measurement=measurement, judgement=judgement, notes=notes,
                                     alignment=alignment, routing=routing, downstream=downstream, coverage=coverage)
        evidence = measurement.metrics if isinstance(measurement, TensorMeasurement) else measurement.stats
        # NOTE: a scale by a group size where the two sides' dims disagree is the annotations' doing.
        layout = (layout_hint(item.plans.baseline[0].dims, item.plans.target[0].dims, evidence.scale, self.axis_sizes)
                  if isinstance(evidence, Metrics) else None)
        hint = (specific_hint(judgement) or (nonfinite_hint(evidence) if isinstance(evidence, Metrics) else None)
                or layout or scale_hint(evidence, self.axis_sizes))
        return item.place.result(status="fail", measurement=measurement, judgement=judgement, notes=notes,
                                 alignment=alignment, routing=routing, hint=hint, downstream=downstream,
                                 coverage=coverage, reason=describe_failure(judgement, measurement))

    # -------------------------------------------------------------------- stats
    def _compare_stats(self, item: StatsWork) -> TensorResult:
        place = item.place
        try:
            comparison = compare_stats(item.plans.baseline, item.plans.target)
        except UnshardError as exc:
            return place.unmeasured("skip", "stats_cannot_judge", f"stats only: {exc}")
        measurement = StatsMeasurement(stats=comparison)
        shapes = item.plans.map(lambda plans: tuple(p.shape for p in plans))
        if shapes.baseline != shapes.target:
            text = " vs ".join(", ".join(str(list(s)) for s in side) for _, side in shapes.items())
            return place.result(status="fail", measurement=measurement,
                                reason=f"shape mismatch: baseline vs target {text} (stats only: rows cannot be "
                                       "aligned or trimmed without tensor data)")
        notes = ["compared from index stats and checksums only (a side was dumped in stats mode)"]
        if comparison.checksum_match:
            notes.append("checksums match: bitwise identical")
        return self._verdict(item, measurement, self._criteria(item, "stats"), notes,
                             specific_hint=lambda judgement: stats_replica_hint(comparison))

    # ------------------------------------------------------------------ tensors
    def _compare(self, item: TensorWork) -> TensorResult:
        notes: list[str] = [n for _, plans in item.plans.items() for plan in plans for n in plan.notes]
        dtypes = item.dtypes
        if dtypes.baseline != dtypes.target:
            notes.append(f"dtypes differ ({dtypes.baseline} vs {dtypes.target}): compared in float64 after upcasting")
        criteria = self._criteria(item, "tensor")
        token_dim = item.token_dim
        metrics = self._identical(item, token_dim)
        replicas: dict[str, float] = {}
        alignment: AlignmentNote | None = None
        routing: RoutingCheck | None = None
        baseline_tensor: "torch.Tensor | None" = None
        downstream: DownstreamMask | None = None
        coverage: Coverage | None = None  # None: every row compared (bitwise-identical shards)
        if metrics is None:
            outcomes = Pair([execute_unshard(p, self.loaders.baseline.load) for p in item.plans.baseline],
                            [execute_unshard(p, self.loaders.target.load) for p in item.plans.target])
            for outcome in outcomes.baseline:
                for axis, value in outcome.replica_disagreement.items():
                    if value > 0:
                        notes.append(f"baseline ranks disagree on replicated axis {axis} (rel_diff {value:.3g})")
            for outcome in outcomes.target:
                for axis, value in outcome.replica_disagreement.items():
                    replicas[axis] = max(replicas.get(axis, 0.0), value)
            aligned = self.aligner.align(item.unit, [o.tensor for o in outcomes.baseline],
                                         [o.tensor for o in outcomes.target], item.context)
            del outcomes
            baseline_tensor, target_tensor, alignment = aligned.baseline, aligned.target, aligned.note
            token_dim = aligned.token_dim if aligned.token_dim is not None else token_dim
            if tuple(baseline_tensor.shape) != tuple(target_tensor.shape):
                return self._shape_mismatch(item, notes, alignment, baseline_tensor, target_tensor, token_dim, criteria)
            narrowed = judged_dtypes(dtypes.baseline, dtypes.target, baseline_tensor, target_tensor)
            if narrowed is not None:
                criteria = self.thresholds.criteria_for("tensor", item.place.name, item.place.tags, *narrowed[:2])
                notes.append(narrowed[2])
            total_rows = self._rows(item, baseline_tensor, token_dim)
            if item.downstream is not None and (item.routing is not None or baseline_tensor.is_floating_point()):
                # NOTE: integer tensors (token ids) stay whole: a flip that changes a token still fails.
                baseline_tensor, target_tensor, left_out = self._leave_out_downstream(
                    item, baseline_tensor, target_tensor, token_dim)
                if left_out is not None:
                    notes.append(left_out if isinstance(left_out, str) else left_out.note())
                    downstream = left_out if isinstance(left_out, DownstreamMask) else None
            if item.routing is not None:
                # NOTE: routing flips at near-ties: comparator/judge/routing.py.
                routing = self.routing.check(item.routing)
                if item.routing.role == "topk_ids":
                    metrics = compute_metrics(baseline_tensor, target_tensor, token_dim=token_dim)
                    return self._judge_topk(item, notes, alignment, routing, metrics, criteria, replicas, downstream)
                baseline_tensor, target_tensor, note = keep_agreeing_tokens(routing, baseline_tensor, target_tensor,
                                                                            token_dim)
                if note or routing.flips or routing.problem:
                    notes.append(note or routing.describe())
            coverage = Coverage(compared=self._rows(item, baseline_tensor, token_dim)[0], total=total_rows[0],
                                unit=total_rows[1])
            if coverage.compared == 0 and coverage.total > 0:
                # NOTE: a judgement of no rows would pass vacuously; nothing was compared.
                return item.place.result(
                    status="skip", measurement=NotMeasured(why="nothing_compared"), notes=notes, alignment=alignment,
                    routing=routing, downstream=downstream, coverage=coverage,
                    reason=f"nothing compared: all {coverage.total} {coverage.unit} were left out (benign routing "
                           "flips and what they reach; see the notes)")
            metrics = compute_metrics(baseline_tensor, target_tensor, token_dim=token_dim)
        replicated = baseline_tensor

        def replica_evidence(judgement: Judgement) -> str | None:
            if "replica_rel_diff" not in judgement.failed:
                return None
            return self._replica_hint(item, replicas, replicated, criteria)

        return self._verdict(item, TensorMeasurement(metrics=metrics, replica_disagreement=replicas), criteria, notes,
                             alignment=alignment, routing=routing, downstream=downstream, specific_hint=replica_evidence,
                             coverage=coverage)

    def _judge_topk(self, item: TensorWork, notes: list[str], alignment: AlignmentNote | None, routing: RoutingCheck,
                    metrics: Metrics, criteria: Criteria, replicas: dict[str, float],
                    downstream: DownstreamMask | None = None) -> TensorResult:
        """Top-k ids pass when every flip is benign (a near-tie the router logits' error explains)."""
        passed, reason, hint = topk_verdict(routing)
        judgement = judge(TensorMeasurement(metrics=metrics), criteria)
        failed = () if passed else (*judgement.failed, "routing")
        return item.place.result(
            status="pass" if passed else "fail", reason=reason, hint=hint,
            measurement=TensorMeasurement(metrics=metrics, replica_disagreement=replicas),
            judgement=dataclasses.replace(judgement, failed=failed), notes=[*notes, routing.describe()],
            alignment=alignment, routing=routing, downstream=downstream,
        )

    @staticmethod
    def _rows(item: TensorWork, tensor: "torch.Tensor", token_dim: int | None) -> "tuple[int, Literal['tokens', 'requests', 'elements']]":
        """How many rows a tensor has along its token (or request) dim; else 1 (0 when empty) element-wise."""
        if token_dim is not None and tensor.dim() > token_dim:
            return tensor.shape[token_dim], "tokens"
        request_dim = dim_index(item.context.dims("baseline"), "r")
        if request_dim is not None and tensor.dim() > request_dim:
            return tensor.shape[request_dim], "requests"
        return (1 if tensor.numel() else 0), "elements"

    def _load_aligned(self, item: TensorWork) -> "tuple[torch.Tensor, torch.Tensor]":
        """Both sides of a work item, unsharded and aligned (routing tensors)."""
        tensors = Pair(self._unshard_all(item.plans.baseline, self.loaders.baseline),
                       self._unshard_all(item.plans.target, self.loaders.target))
        aligned = self.aligner.align(item.unit, tensors.baseline, tensors.target, item.context)
        token_dim = aligned.token_dim if aligned.token_dim is not None else item.token_dim
        baseline, target, _ = self._leave_out_downstream(item, aligned.baseline, aligned.target, token_dim)
        return baseline, target

    def _leave_out_downstream(self, item: TensorWork, baseline: "torch.Tensor", target: "torch.Tensor",
                              token_dim: int | None) -> "tuple[torch.Tensor, torch.Tensor, DownstreamMask | str | None]":
        """Both tensors without the rows benign routing flips before the item reach (judge/downstream.py)."""
        if item.downstream is None or tuple(baseline.shape) != tuple(target.shape):
            return baseline, target, None
        row_dim, per_request = token_dim, False
        if row_dim is None:
            # Per-request rows (dims 'r', e.g. each request's logits): the request's last token.
            row_dim, per_request = dim_index(item.context.dims("baseline"), "r"), True
        if row_dim is None:
            return baseline, target, None
        mask = self.flips.mask(item, baseline.shape[row_dim], per_request=per_request)
        if not isinstance(mask, DownstreamMask):
            return baseline, target, mask
        return drop_rows(baseline, row_dim, mask.rows), drop_rows(target, row_dim, mask.rows), mask

    @staticmethod
    def _unshard_all(plans: Sequence[UnshardPlan], loader: TensorLoader) -> "list[torch.Tensor]":
        return [execute_unshard(plan, loader.load, verify_replicas=False).tensor for plan in plans]

    def _passes_thresholds(self, item: TensorWork, baseline: "torch.Tensor", target: "torch.Tensor") -> bool:
        return _passes(TensorMeasurement(metrics=compute_metrics(baseline, target)), self._criteria(item, "tensor"))

    def _identical(self, item: TensorWork, token_dim: int | None) -> Metrics | None:
        """Metrics without reading data, when both sides hold bitwise-identical shards."""
        if len(item.plans.baseline) != 1 or len(item.plans.target) != 1 or self.options.verify_checksums:
            return None
        b, t = item.plans.baseline[0], item.plans.target[0]
        if any(op.kind != "concat" for op in b.ops + t.ops) or [(o.axis, o.size, o.dim) for o in b.ops] != [(o.axis, o.size, o.dim) for o in t.ops]:
            return None
        if len(b.shards) != len(t.shards) or b.shape != t.shape:
            return None
        for (coords_b, rb), (coords_t, rt) in zip(b.shards, t.shards):
            if coords_b != coords_t or rb.dtype != rt.dtype or rb.shape != rt.shape or not rb.checksum or rb.checksum != rt.checksum:
                return None
        if any(r.stats.l2 is None and r.stats.numel for r in b.records):
            return None
        # NOTE: equal checksums let the data go unread; the files' headers are still
        # checked, so a corrupt or missing file is reported either way.
        for record in b.records:
            self.loaders.baseline.check(record)
        for record in t.records:
            self.loaders.target.check(record)
        # hypot: the shards' norms can be near the float64 limit, their squares beyond it.
        norm = math.hypot(*(r.stats.l2 or 0.0 for r in b.records))
        return identical_metrics(
            numel=sum(r.stats.numel for r in b.records), norm=norm, shape=b.shape, token_dim=token_dim,
            nan=sum(r.stats.nan for r in b.records), inf=sum(r.stats.inf for r in b.records),
        )

    def _replica_hint(self, item: TensorWork, replicas: dict[str, float], baseline_tensor: "torch.Tensor | None",
                      criteria: Criteria) -> str | None:
        """Which replicated axis, summed over its all-reduce groups, gives the baseline back.

        Every axis whose copies disagree is a candidate, smallest first: with ep x moe_tp
        and a world-sized attn_tp, a missing EP all-reduce makes both ep and attn_tp
        copies disagree, and only the sum over ep matches. Axes over the same ranks
        (ep and attn_tp in an EP=2 world) cannot be told apart: the hint names both.
        """
        if baseline_tensor is None or len(item.plans.target) != 1:
            return None
        plan = item.plans.target[0]
        limit = criteria.limits.get("replica_rel_diff")
        disagreeing = [a for a, v in replicas.items() if math.isnan(v) or (v > 0 and (limit is None or not limit.allows(v)))]
        if not disagreeing:
            return None
        sizes = {op.axis: op.size for op in plan.ops}
        worst = max(disagreeing, key=lambda a: math.inf if math.isnan(replicas[a]) else replicas[a])
        worst_metrics = None
        for axis in sorted(disagreeing, key=lambda a: (sizes.get(a, 0), a)):
            try:
                summed = execute_unshard(plan, self.loaders.target.load, sum_axes=frozenset({axis}),
                                         verify_replicas=False).tensor
            except UnshardError:
                continue  # a rank of the sum is missing: no evidence either way
            if tuple(summed.shape) != tuple(baseline_tensor.shape):
                continue
            sum_metrics = compute_metrics(baseline_tensor, summed)
            if _passes(TensorMeasurement(metrics=sum_metrics), criteria):
                groups = reduction_groups(plan.records, axis)
                same_ranks = tuple(other for other in sorted(disagreeing)
                                   if other != axis and reduction_groups(plan.records, other) == groups)
                return replica_hint(axis, replicas[axis], sum_metrics, True, same_ranks=same_ranks)
            if axis == worst:
                worst_metrics = sum_metrics
        return replica_hint(worst, replicas[worst], worst_metrics, False)

    def _shape_mismatch(self, item: TensorWork, notes: list[str], alignment: AlignmentNote | None,
                        baseline_tensor: "torch.Tensor", target_tensor: "torch.Tensor", token_dim: int | None,
                        criteria: Criteria) -> TensorResult:
        b_shape, t_shape = tuple(baseline_tensor.shape), tuple(target_tensor.shape)

        def passes(metrics: Metrics) -> bool:
            return _passes(TensorMeasurement(metrics=metrics), criteria)

        hint = padding_hint(baseline_tensor, target_tensor, token_dim=token_dim, passes=passes)
        hint = hint or shape_hint(b_shape, t_shape, axis_sizes=self.axis_sizes)
        if self.aligner.name == "none":
            hint = hint or batching_hint(item.place.step, b_shape, t_shape, token_dim)
        return item.place.unmeasured("fail", "shape_mismatch",
                                     f"shape mismatch: baseline {list(b_shape)} vs target {list(t_shape)}",
                                     hint=hint, notes=notes, alignment=alignment)


def _passes(measurement: TensorMeasurement, criteria: Criteria) -> bool:
    return not judge(measurement, criteria).failed
