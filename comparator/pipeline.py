"""``compare(baseline, target)``: the whole comparison, as a library call.

Pipeline, planned on metadata first, then executed one logical tensor at a time:

1. open both runs (index only) and group records into logical tensors;
2. pair them (name map, step offset, filters) into series across steps;
3. per series, let the aligner group steps into units, and plan each side's
   unsharding; planning errors become ``error`` results before any data is read;
4. per unit, in execution order: load the shards (memory-mapped), unshard, align,
   measure in float64 chunks, judge, hint; then release the tensors;
5. mark allowed failures, sources and propagated failures, the first divergence,
   and the exit code.

Peak memory is bounded by one unit's tensors (a few units with ``jobs > 1``), never
by the number of tensors in a run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

from aligners import AlignContext, Aligner, AlignUnit, AuxLoader, get_aligner
from comparator.errors import NothingUsableError, UnshardError
from dumper.loader import TensorLoader
from comparator.judge.hints import (
    graph_replay_hint,
    nonfinite_hint,
    padding_hint,
    replayed_steps,
    replica_hint,
    scale_hint,
    shape_hint,
)
from comparator.matching import LogicalTensor, Series, TensorKey, group_records, match_runs, tags_key
from comparator.judge.metrics import Metrics, compute_metrics, identical_metrics
from comparator.options import CompareOptions
from comparator.results import Report, SideInfo, TensorResult
from comparator.judge.routing import (RoutingJudge, RoutingSources, annotate_downstream, attach_routing, keep_agreeing_tokens,
                               topk_verdict)
from comparator.judge.stats_only import StatsThresholds, load_stats_thresholds
from comparator.judge.thresholds import Thresholds, load_thresholds
from comparator.unshard import UnshardPlan, execute_unshard, plan_unshard, reduction_groups
from comparator.judge.verdicts import describe_failure, finalize, judge
from dumper.errors import DumpcmpError, RunFormatError, RunNotFoundError
from dumper.format import IndexRecord
from dumper.reader import Run, open_run

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

Progress = Callable[[int, int, str], None]  # (done, total, label of the tensor just compared)


@dataclass(frozen=True, kw_only=True)
class WorkItem:
    """One comparison, planned from metadata: what to load, how to unshard it, where it sits."""

    name: str
    baseline_name: str
    step: int
    tags: dict[str, Any]
    order: tuple[float, ...]
    unit: AlignUnit
    baseline_plans: tuple[UnshardPlan, ...]
    target_plans: tuple[UnshardPlan, ...]
    baseline: SideInfo | None
    target: SideInfo | None
    keys: tuple[TensorKey, ...]
    predecessors: tuple[TensorKey, ...]
    axis_sizes: dict[str, int]
    skip: str | None = None
    error: str | None = None
    stats_only: bool = False  # a side has no tensor data (stats mode): judge from index stats
    routing: RoutingSources | None = None  # top-k ids / MoE output: judged with the layer's routing


def compare(baseline: str | os.PathLike[str], target: str | os.PathLike[str], *,
            options: CompareOptions | None = None, progress: Progress | None = None, **option_values: Any) -> Report:
    """Compare two runs; see :class:`CompareOptions` (or pass its CLI-style values as keywords).

    Raises a DumpcmpError for bad input (missing run, bad thresholds file, nothing usable).
    """
    if options is None:
        options = CompareOptions.from_values(**option_values)
    elif option_values:
        raise TypeError("pass either options= or option keywords, not both")
    aligner = get_aligner(options.aligner, metadata=options.aligner_metadata)
    thresholds = load_thresholds(options.thresholds)
    stats_thresholds = load_stats_thresholds(options.thresholds)
    with _single_threaded_torch(), open_run(baseline) as baseline_run, open_run(target) as target_run:
        for run in (baseline_run, target_run):
            if not any(rank.records for rank in run.ranks):
                found = f" ({run.problems[0]})" if run.problems else ""
                raise RunNotFoundError(f"{run.path}: the run holds no dumped tensors{found}")
        items = plan_comparison(baseline_run, target_run, options, aligner)
        if options.jobs > 1 and sum(1 for i in items if i.skip is None and i.error is None) > 1:
            produced = _run_parallel(items, baseline_run, target_run, options)
        else:
            executor = _Executor(baseline_run=baseline_run, target_run=target_run, options=options,
                                 thresholds=thresholds, aligner=aligner, stats_thresholds=stats_thresholds)
            produced = (executor.run(item) for item in items)
        results = []
        for done, result in enumerate(produced, start=1):
            results.append(result)
            if progress is not None:
                progress(done, len(items), result.label)
        problems = {"baseline": tuple(baseline_run.problems), "target": tuple(target_run.problems)}
        replayed = (replayed_steps(baseline_run), replayed_steps(target_run))
    if options.routing.enabled:
        results = annotate_downstream(results)
    if replayed != ({}, {}):
        results = [r if r.status != "fail" or r.hint else dataclasses.replace(
            r, hint=graph_replay_hint(r.name, r.step, *replayed)) for r in results]
    final, summary, first, code, reason = finalize(results, options)
    if summary.compared == 0 and summary.errored and all(r.load_error for r in final if r.status == "error"):
        first_error = next(r for r in final if r.status == "error")
        raise NothingUsableError(
            f"no tensor could be read ({summary.errored} failed to load); first: {first_error.reason}"
        )
    return Report(
        baseline=os.fspath(baseline), target=os.fspath(target), aligner=aligner.name, summary=summary,
        first_divergence=first, results=final, exit_code=code, exit_reason=reason, problems=problems,
        thresholds=options.thresholds,
    )


@contextlib.contextmanager
def _single_threaded_torch() -> Iterator[None]:
    """Run torch ops on one thread while comparing, then restore the setting.

    NOTE: the per-tensor reductions are memory-bound and a few megabytes each; intra-op
    threads only add synchronisation (7x slower on a busy 2-core machine). Use
    ``jobs`` for parallelism instead.
    """
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


# ---------------------------------------------------------------------------- planning
def plan_comparison(baseline_run: Run, target_run: Run, options: CompareOptions, aligner: Aligner) -> list[WorkItem]:
    """Every comparison to make, in execution order, from the runs' indexes only."""
    ignore = options.name_map.ignore_tags
    baseline = group_records(baseline_run.records, ignore_tags=ignore)
    target = group_records(target_run.records, ignore_tags=ignore)
    axis_sizes = _axis_sizes(baseline_run, target_run)
    baseline_aux = _aux_loader(baseline_run, baseline, options, "baseline")
    target_aux = _aux_loader(target_run, target, options, "target")
    items: list[WorkItem] = []
    for series in match_runs(baseline, target, options):
        # NOTE: token aligners read the runs' token metadata here, before any big tensor
        # is loaded; a missing metadata dump stops the comparison with one clear line.
        context = AlignContext(name=series.name, tags=series.tags, baseline_token_dim=None, target_token_dim=None,
                               baseline_aux=baseline_aux, target_aux=target_aux)
        for unit in aligner.plan(series.step_pairs, context):
            items.append(_plan_unit(series, unit, options, axis_sizes))
    items.sort(key=lambda item: item.order)
    return attach_routing(items, options.routing)


def _aux_loader(run: Run, tensors: list[LogicalTensor], options: CompareOptions, side: str) -> AuxLoader:
    """(name, step, tags) -> that unsharded tensor of ``run`` (small token metadata), or None if not dumped."""
    by_key = {(t.name, t.step, tags_key(t.tags)): t for t in tensors}
    cache: dict[tuple[Any, ...], "torch.Tensor | None"] = {}
    loader = TensorLoader(run, verify_checksums=options.verify_checksums)

    def load(name: str, step: int, tags: dict[str, Any]) -> "torch.Tensor | None":
        key = (name, step, tags_key(tags))
        if key not in cache:
            tensor = by_key.get(key)
            if tensor is None:
                cache[key] = None
            else:
                plan = plan_unshard(f"{side} {tensor.label}", tensor.records, dims=options.dims_for(name, side))
                cache[key] = execute_unshard(plan, loader.load, verify_replicas=False).tensor
        return cache[key]

    return load


def _axis_sizes(*runs: Run) -> dict[str, int]:
    sizes: dict[str, int] = {}
    for run in runs:
        for rank in run.ranks:
            for record in rank.records[:1]:
                for axis, info in record.parallel.items():
                    if info.size > 1:
                        sizes[axis] = max(sizes.get(axis, 1), info.size)
    return sizes


def _plan_unit(series: Series, unit: AlignUnit, options: CompareOptions, axis_sizes: dict[str, int]) -> WorkItem:
    target_tensors = [series.target[s] for s in unit.target_steps]
    baseline_tensors = [series.baseline[s] for s in unit.baseline_steps]
    common = dict(
        name=series.name, baseline_name=series.baseline_name, step=unit.step, tags=series.tags,
        order=series.unit_order(unit.target_steps, unit.baseline_steps), unit=unit,
        keys=tuple(t.key for t in target_tensors),
        predecessors=tuple(p for t in target_tensors for p in t.predecessors),
        axis_sizes=axis_sizes,
    )
    baseline_plans: list[UnshardPlan] = []
    target_plans: list[UnshardPlan] = []
    errors: list[str] = []
    for side, tensors, plans in (("baseline", baseline_tensors, baseline_plans), ("target", target_tensors, target_plans)):
        for tensor in tensors:
            try:
                plans.append(plan_unshard(f"{side} {tensor.label}", tensor.records, dims=options.dims_for(tensor.name, side)))
            except UnshardError as exc:
                errors.append(str(exc))
    baseline_info = _side_info(series.baseline_name, unit.baseline_steps, baseline_tensors, baseline_plans)
    target_info = _side_info(series.name, unit.target_steps, target_tensors, target_plans)
    if not target_tensors or not baseline_tensors:
        where = "baseline" if baseline_tensors else "target"
        other = "target" if baseline_tensors else "baseline"
        return WorkItem(**common, baseline_plans=(), target_plans=(), baseline=baseline_info, target=target_info,
                        skip=f"only in {where}: the {other} run has no {series.baseline_name if other == 'baseline' else series.name} at this step")
    if errors:
        return WorkItem(**common, baseline_plans=(), target_plans=(), baseline=baseline_info, target=target_info,
                        error="; ".join(errors))
    no_data = [side for side, plans in (("baseline", baseline_plans), ("target", target_plans))
               if any(record.file is None for plan in plans for record in plan.records)]
    if no_data:
        # NOTE: a stats-mode run still has every tensor's stats and checksum in its index:
        # judge from those (comparator/judge/stats_only.py) rather than skip.
        return WorkItem(**common, baseline_plans=tuple(baseline_plans), target_plans=tuple(target_plans),
                        baseline=baseline_info, target=target_info, stats_only=True)
    return WorkItem(**common, baseline_plans=tuple(baseline_plans), target_plans=tuple(target_plans),
                    baseline=baseline_info, target=target_info)


def _side_info(name: str, steps: tuple[int, ...], tensors: Sequence[Any], plans: Sequence[UnshardPlan]) -> SideInfo | None:
    if not tensors:
        return None
    records: list[IndexRecord] = [r for t in tensors for r in t.records]
    plan = plans[0] if len(plans) == len(tensors) and plans else None
    return SideInfo(
        name=name, steps=steps,
        shape=plan.shape if plan is not None else None,
        dtype=records[0].dtype,
        ranks=tuple(sorted({r.rank for r in records})),
        dims=records[0].dims if plan is None or plan.dims is None else plan.dims.text,
        plan=plan.describe() if plan is not None else None,
    )


# --------------------------------------------------------------------------- execution
class _Executor:
    """Executes work items against open runs (in this process or a worker)."""

    def __init__(self, *, baseline_run: Run, target_run: Run, options: CompareOptions, thresholds: Thresholds,
                 aligner: Aligner, stats_thresholds: StatsThresholds | None = None) -> None:
        self.baseline_run = baseline_run
        self.target_run = target_run
        self.options = options
        self.thresholds = thresholds
        self.aligner = aligner
        self.stats_thresholds = stats_thresholds if stats_thresholds is not None else load_stats_thresholds(options.thresholds)
        self.baseline_loader = TensorLoader(baseline_run, verify_checksums=options.verify_checksums)
        self.target_loader = TensorLoader(target_run, verify_checksums=options.verify_checksums)
        self.routing = RoutingJudge(options.routing, self._load_aligned, self._passes_thresholds)

    def run(self, item: WorkItem) -> TensorResult:
        base = dict(
            name=item.name, step=item.step, tags=item.tags, order=item.order, baseline=item.baseline,
            target=item.target, keys=item.keys, predecessors=item.predecessors,
        )
        if item.skip is not None:
            return TensorResult(**base, status="skip", reason=item.skip)
        if item.error is not None:
            return TensorResult(**base, status="error", reason=item.error)
        if item.stats_only:
            return self._compare_stats(item, base)
        try:
            return self._compare(item, base)
        except RunFormatError as exc:
            log.warning("%s: %s", item.name, exc)
            return TensorResult(**base, status="error", reason=f"cannot read data: {exc}", load_error=True)
        except DumpcmpError as exc:
            return TensorResult(**base, status="error", reason=str(exc))

    def _compare(self, item: WorkItem, base: dict[str, Any]) -> TensorResult:
        notes: list[str] = [n for plan in item.baseline_plans + item.target_plans for n in plan.notes]
        baseline_dtype = item.baseline_plans[0].dtype
        target_dtype = item.target_plans[0].dtype
        if baseline_dtype != target_dtype:
            notes.append(f"dtypes differ ({baseline_dtype} vs {target_dtype}): compared in float64 after upcasting")
        rule, limits = self.thresholds.limits_for(item.name, item.tags, baseline_dtype, target_dtype)
        calibrated = self.thresholds.calibration_for(item.name, item.tags, baseline_dtype, target_dtype)
        token_dim = _token_dim(item)
        metrics = self._identical(item, token_dim)
        replicas: dict[str, float] = {}
        if metrics is None:
            baseline_outcomes = [execute_unshard(p, self.baseline_loader.load) for p in item.baseline_plans]
            target_outcomes = [execute_unshard(p, self.target_loader.load) for p in item.target_plans]
            for outcome in baseline_outcomes:
                for axis, value in outcome.replica_disagreement.items():
                    if value > 0:
                        notes.append(f"baseline ranks disagree on replicated axis {axis} (rel_diff {value:.3g})")
            for outcome in target_outcomes:
                for axis, value in outcome.replica_disagreement.items():
                    replicas[axis] = max(replicas.get(axis, 0.0), value)
            baseline_spec, target_spec = item.baseline_plans[0].dims, item.target_plans[0].dims
            context = AlignContext(
                name=item.name, tags=item.tags,
                baseline_token_dim=item.baseline_plans[0].token_dim, target_token_dim=item.target_plans[0].token_dim,
                baseline_dims=baseline_spec.text if baseline_spec is not None else None,
                target_dims=target_spec.text if target_spec is not None else None,
            )
            aligned = self.aligner.align(
                item.unit, [o.tensor for o in baseline_outcomes], [o.tensor for o in target_outcomes], context
            )
            del baseline_outcomes, target_outcomes
            baseline_tensor, target_tensor, alignment = aligned.baseline, aligned.target, aligned.note
            base = dict(base, alignment=alignment)
            token_dim = aligned.token_dim if aligned.token_dim is not None else token_dim
            if tuple(baseline_tensor.shape) != tuple(target_tensor.shape):
                return self._shape_mismatch(item, base, notes, baseline_tensor, target_tensor, token_dim, rule, limits)
            if item.routing is not None:
                # NOTE: routing flips at near-ties: comparator/judge/routing.py.
                routing = self.routing.check(item.routing)
                base = dict(base, routing=routing)
                if item.routing.role == "topk_ids":
                    metrics = compute_metrics(baseline_tensor, target_tensor, token_dim=token_dim)
                    return self._judge_topk(base, notes, routing, metrics, rule, limits, replicas)
                baseline_tensor, target_tensor, note = keep_agreeing_tokens(routing, baseline_tensor, target_tensor, token_dim)
                if note or routing.flips or routing.problem:
                    notes.append(note or routing.describe())
            metrics = compute_metrics(baseline_tensor, target_tensor, token_dim=token_dim)
        else:
            baseline_tensor = target_tensor = None
        judgement = judge(metrics, rule, limits, replicas, calibrated=calibrated)
        if not judgement.failed:
            return TensorResult(**base, status="pass", metrics=metrics, judgement=judgement, notes=tuple(notes),
                                replica_disagreement=replicas)
        reason = describe_failure(judgement, metrics, replicas)
        hint = None
        if "replica_rel_diff" in judgement.failed:
            hint = self._replica_hint(item, replicas, baseline_tensor, rule, limits)
        hint = hint or nonfinite_hint(metrics) or scale_hint(metrics, item.axis_sizes)
        return TensorResult(**base, status="fail", reason=reason, metrics=metrics, judgement=judgement, hint=hint,
                            notes=tuple(notes), replica_disagreement=replicas)

    def _judge_topk(self, base: dict[str, Any], notes: list[str], routing: Any, metrics: Metrics, rule: str,
                    limits: dict[str, Any], replicas: dict[str, float]) -> TensorResult:
        """Top-k ids pass when every flip is benign (a near-tie the router logits' error explains)."""
        passed, reason, hint = topk_verdict(routing)
        judgement = judge(metrics, rule, limits, {})
        notes = [*notes, routing.describe()]
        if passed:
            return TensorResult(**base, status="pass", metrics=metrics, judgement=dataclasses.replace(judgement, failed=()),
                                notes=tuple(notes), replica_disagreement=replicas)
        return TensorResult(**base, status="fail", reason=reason, hint=hint, metrics=metrics,
                            judgement=dataclasses.replace(judgement, failed=(*judgement.failed, "routing")),
                            notes=tuple(notes), replica_disagreement=replicas)

    def _load_aligned(self, item: WorkItem) -> "tuple[torch.Tensor, torch.Tensor]":
        """Both sides of a work item, unsharded and aligned (routing tensors)."""
        baseline = [execute_unshard(p, self.baseline_loader.load, verify_replicas=False).tensor for p in item.baseline_plans]
        target = [execute_unshard(p, self.target_loader.load, verify_replicas=False).tensor for p in item.target_plans]
        b_spec, t_spec = item.baseline_plans[0].dims, item.target_plans[0].dims
        context = AlignContext(
            name=item.name, tags=item.tags,
            baseline_token_dim=item.baseline_plans[0].token_dim, target_token_dim=item.target_plans[0].token_dim,
            baseline_dims=b_spec.text if b_spec is not None else None,
            target_dims=t_spec.text if t_spec is not None else None,
        )
        aligned = self.aligner.align(item.unit, baseline, target, context)
        return aligned.baseline, aligned.target

    def _passes_thresholds(self, item: WorkItem, baseline: "torch.Tensor", target: "torch.Tensor") -> bool:
        rule, limits = self.thresholds.limits_for(item.name, item.tags, item.baseline_plans[0].dtype,
                                                  item.target_plans[0].dtype)
        return not judge(compute_metrics(baseline, target), rule, limits, {}).failed

    def _compare_stats(self, item: WorkItem, base: dict[str, Any]) -> TensorResult:
        from comparator.results import Judgement
        from comparator.judge.stats_only import compare_stats, describe_stats_failure, judge_stats, stats_hint

        base = dict(base, stats_only=True)
        try:
            comparison = compare_stats(item.baseline_plans, item.target_plans)
        except UnshardError as exc:
            return TensorResult(**base, status="skip", reason=f"stats only: {exc}")
        b_shape = tuple(p.shape for p in item.baseline_plans)
        t_shape = tuple(p.shape for p in item.target_plans)
        if b_shape != t_shape:
            shapes = " vs ".join(", ".join(str(list(s)) for s in side) for side in (b_shape, t_shape))
            return TensorResult(**base, status="fail", stats=comparison,
                                reason=f"shape mismatch: baseline vs target {shapes} (stats only: rows cannot be "
                                       "aligned or trimmed without tensor data)")
        rule, limits, require_checksum = self.stats_thresholds.limits_for(
            item.name, item.tags, item.baseline_plans[0].dtype, item.target_plans[0].dtype)
        failed = judge_stats(comparison, limits, require_checksum)
        values = comparison.values()
        required = {m: limit.widened_to(values[m]) for m, limit in limits.items() if not math.isnan(values[m])}
        judgement = Judgement(rule=rule, limits=limits, failed=failed, required=required)
        notes = ["compared from index stats and checksums only (a side was dumped in stats mode)"]
        if comparison.checksum_match:
            notes.append("checksums match: bitwise identical")
        if not failed:
            return TensorResult(**base, status="pass", stats=comparison, judgement=judgement, notes=tuple(notes))
        return TensorResult(**base, status="fail", stats=comparison, judgement=judgement, notes=tuple(notes),
                            reason=describe_stats_failure(comparison, limits, failed),
                            hint=stats_hint(comparison, item.axis_sizes))

    def _identical(self, item: WorkItem, token_dim: int | None) -> Metrics | None:
        """Metrics without reading data, when both sides hold bitwise-identical shards."""
        if len(item.baseline_plans) != 1 or len(item.target_plans) != 1 or self.options.verify_checksums:
            return None
        b, t = item.baseline_plans[0], item.target_plans[0]
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
            self.baseline_loader.check(record)
        for record in t.records:
            self.target_loader.check(record)
        # hypot: the shards' norms can be near the float64 limit, their squares beyond it.
        norm = math.hypot(*(r.stats.l2 or 0.0 for r in b.records))
        return identical_metrics(
            numel=sum(r.stats.numel for r in b.records), norm=norm, shape=b.shape, token_dim=token_dim,
            nan=sum(r.stats.nan for r in b.records), inf=sum(r.stats.inf for r in b.records),
        )

    def _replica_hint(self, item: WorkItem, replicas: dict[str, float], baseline_tensor: "torch.Tensor | None",
                      rule: str, limits: dict[str, Any]) -> str | None:
        """Which replicated axis, summed over its all-reduce groups, gives the baseline back.

        Every axis whose copies disagree is a candidate, smallest first: with ep x moe_tp
        and a world-sized attn_tp, a missing EP all-reduce makes both ep and attn_tp
        copies disagree, and only the sum over ep matches. Axes over the same ranks
        (ep and attn_tp in an EP=2 world) cannot be told apart: the hint names both.
        """
        if baseline_tensor is None or len(item.target_plans) != 1:
            return None
        plan = item.target_plans[0]
        limit = limits.get("replica_rel_diff")
        disagreeing = [a for a, v in replicas.items() if math.isnan(v) or (v > 0 and (limit is None or not limit.allows(v)))]
        if not disagreeing:
            return None
        sizes = {op.axis: op.size for op in plan.ops}
        worst = max(disagreeing, key=lambda a: math.inf if math.isnan(replicas[a]) else replicas[a])
        worst_metrics = None
        for axis in sorted(disagreeing, key=lambda a: (sizes.get(a, 0), a)):
            try:
                summed = execute_unshard(plan, self.target_loader.load, sum_axes=frozenset({axis}),
                                         verify_replicas=False).tensor
            except UnshardError:
                continue  # a rank of the sum is missing: no evidence either way
            if tuple(summed.shape) != tuple(baseline_tensor.shape):
                continue
            sum_metrics = compute_metrics(baseline_tensor, summed)
            if not judge(sum_metrics, rule, limits, {}).failed:
                groups = reduction_groups(plan.records, axis)
                same_ranks = tuple(other for other in sorted(disagreeing)
                                   if other != axis and reduction_groups(plan.records, other) == groups)
                return replica_hint(axis, replicas[axis], sum_metrics, True, same_ranks=same_ranks)
            if axis == worst:
                worst_metrics = sum_metrics
        return replica_hint(worst, replicas[worst], worst_metrics, False)

    def _shape_mismatch(self, item: WorkItem, base: dict[str, Any], notes: list[str], baseline_tensor: "torch.Tensor",
                        target_tensor: "torch.Tensor", token_dim: int | None, rule: str, limits: dict[str, Any]) -> TensorResult:
        b_shape, t_shape = tuple(baseline_tensor.shape), tuple(target_tensor.shape)

        def passes(metrics: Metrics) -> bool:
            return not judge(metrics, rule, limits, {}).failed

        hint = padding_hint(baseline_tensor, target_tensor, token_dim=token_dim, passes=passes)
        hint = hint or shape_hint(b_shape, t_shape, axis_sizes=item.axis_sizes)
        return TensorResult(
            **base, status="fail", reason=f"shape mismatch: baseline {list(b_shape)} vs target {list(t_shape)}",
            hint=hint, notes=tuple(notes),
        )


def _token_dim(item: WorkItem) -> int | None:
    target_dim = item.target_plans[0].token_dim
    return target_dim if target_dim is not None else item.baseline_plans[0].token_dim


# ------------------------------------------------------------------ worker processes
_worker: _Executor | None = None


def _init_worker(baseline_path: str, target_path: str, formats: tuple[str, str], options: CompareOptions) -> None:
    global _worker

    def worker_run(path: str, run_format: str) -> Run:
        # NOTE: workers only load data; the parent already read and planned the indexes.
        # Other formats (SGLang .pt dumps) load through their own reader.
        return Run(path=path, info=None, ranks=[]) if run_format == "dumpcmp" else open_run(path)

    _worker = _Executor(
        baseline_run=worker_run(baseline_path, formats[0]),
        target_run=worker_run(target_path, formats[1]),
        options=options, thresholds=load_thresholds(options.thresholds), aligner=get_aligner(options.aligner),
    )
    import torch

    torch.set_num_threads(1)


def _work(item: WorkItem) -> TensorResult:
    if _worker is None:
        raise RuntimeError("_work called outside a worker started by _init_worker")
    return _worker.run(item)


def _run_parallel(items: list[WorkItem], baseline_run: Run, target_run: Run, options: CompareOptions) -> Iterator[TensorResult]:
    """Results in order, from ``options.jobs`` worker processes, a bounded window in flight."""
    import multiprocessing
    from collections import deque
    from concurrent.futures import ProcessPoolExecutor

    window = 2 * options.jobs
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=options.jobs, mp_context=context, initializer=_init_worker,
                             initargs=(baseline_run.path, target_run.path, (baseline_run.format, target_run.format),
                                       options)) as pool:
        pending: deque[Future[TensorResult]] = deque()
        queue = iter(items)
        for item in queue:
            pending.append(pool.submit(_work, item))
            if len(pending) >= window:
                break
        while pending:
            result = pending.popleft().result()
            next_item = next(queue, None)
            if next_item is not None:
                pending.append(pool.submit(_work, next_item))
            yield result
