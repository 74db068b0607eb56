"""Plan a comparison from the runs' indexes only: every work item, in execution order.

Each work item is one comparison to make, as one of four small records (a union, not
flags): present on one side only, not unshardable, measurable on tensors, or
measurable from stats only. Planning errors (a bad dims annotation, a missing shard)
become items here, before any tensor data is read; token aligners read the runs'
small token metadata here too.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Literal, Sequence

from aligners import AlignContext, Aligner, AlignmentNote, AlignUnit, AuxLoader
from comparator.errors import UnshardError
from comparator.judge.downstream import DownstreamMask, DownstreamSources, RowKey, step_row_keys
from comparator.judge.routing import RoutingOptions, RoutingSources, layer_step
from dumper.loader import TensorLoader
from comparator.matching import LogicalTensor, Series, TensorKey, group_records, match_runs, tags_key
from comparator.options import CompareOptions
from comparator.results import (Coverage, Judgement, Measurement, NotMeasured, Pair, SideInfo, Status, TensorResult,
                                Unmeasured)
from comparator.unshard import UnshardPlan, execute_unshard, plan_unshard
from comparator.unshard_plans import UnshardPlanner
from dumper.format import IndexRecord
from dumper.run import Run

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    import torch

    from aligners.auto import AutoChoice

    from comparator.judge.routing import RoutingCheck


@dataclass(frozen=True, kw_only=True, slots=True)
class Placement:
    """Which tensor a work item compares and where it sits: what its result repeats."""

    name: str  # the target's name
    baseline_name: str
    step: int
    tags: dict[str, Any]
    order: tuple[float, ...]  # execution order
    keys: tuple[TensorKey, ...]  # the target tensors it covers
    predecessors: tuple[TensorKey, ...]  # what those tensors most likely consumed
    sides: Pair[SideInfo | None]

    def result(self, *, status: Status, measurement: Measurement, reason: str | None = None,
               judgement: Judgement | None = None, hint: str | None = None, notes: Sequence[str] = (),
               alignment: AlignmentNote | None = None, routing: "RoutingCheck | None" = None,
               downstream: "DownstreamMask | None" = None, coverage: Coverage | None = None) -> TensorResult:
        return TensorResult(
            name=self.name, step=self.step, tags=self.tags, order=self.order, keys=self.keys,
            predecessors=self.predecessors, sides=self.sides, status=status, measurement=measurement, reason=reason,
            judgement=judgement, hint=hint, notes=tuple(notes), alignment=alignment, routing=routing,
            downstream=downstream, coverage=coverage,
        )

    def unmeasured(self, status: Status, why: Unmeasured, reason: str, *, hint: str | None = None,
                   notes: Sequence[str] = (), alignment: AlignmentNote | None = None) -> TensorResult:
        return self.result(status=status, measurement=NotMeasured(why=why), reason=reason, hint=hint, notes=notes,
                           alignment=alignment)


@dataclass(frozen=True, kw_only=True, slots=True)
class OneSided:
    """Present in one run only: reported as ``skip`` with the reason."""

    place: Placement
    reason: str


@dataclass(frozen=True, kw_only=True, slots=True)
class Unplannable:
    """The shards cannot be put back together (from the index alone): reported as ``error``."""

    place: Placement
    reason: str


@dataclass(frozen=True, kw_only=True, slots=True)
class TensorWork:
    """Both sides hold tensor data: load, unshard, align, measure, judge."""

    place: Placement
    unit: AlignUnit
    plans: Pair[tuple[UnshardPlan, ...]]  # one plan per step of the unit, per side
    context: AlignContext  # what the aligner's executor needs (built once, here)
    routing: "RoutingSources | None" = None  # top-k ids / MoE output: judged with the layer's routing
    # The benign routing flips before it, and which token each row is: rows they reach are left out.
    downstream: "DownstreamSources | None" = None

    @property
    def name(self) -> str:
        return self.place.name

    @property
    def tags(self) -> dict[str, Any]:
        return self.place.tags

    @property
    def dtypes(self) -> Pair[str]:
        return self.plans.map(lambda plans: plans[0].dtype)

    @property
    def token_dim(self) -> int | None:
        """The token dim the metrics are reported along: the target's, else the baseline's."""
        target = self.plans.target[0].token_dim
        return target if target is not None else self.plans.baseline[0].token_dim


@dataclass(frozen=True, kw_only=True, slots=True)
class StatsWork:
    """A side has no tensor data (stats mode): judged from the index's stats and checksums."""

    place: Placement
    plans: Pair[tuple[UnshardPlan, ...]]

    @property
    def dtypes(self) -> Pair[str]:
        return self.plans.map(lambda plans: plans[0].dtype)


WorkItem = OneSided | Unplannable | TensorWork | StatsWork


@dataclass(frozen=True, kw_only=True)
class ComparisonPlan:
    """Everything a comparison will do, planned from metadata."""

    items: tuple[WorkItem, ...]  # in execution order
    axis_sizes: dict[str, int]  # every parallel axis of size > 1 in either run (for the hints)
    aligner: str = "none"  # the token aligner the items were planned with (what --aligner auto chose)
    aligner_reason: str | None = None  # why (--aligner auto), for the report

    @property
    def measurable(self) -> int:
        return sum(isinstance(item, (TensorWork, StatsWork)) for item in self.items)


def plan_comparison(runs: Pair[Run], options: CompareOptions, aligner: Aligner | None = None) -> ComparisonPlan:
    """Every comparison to make, in execution order, from the runs' indexes only.

    ``aligner``: None for the options' own (``auto`` is chosen here from the runs' token metadata).
    """
    ignore = options.name_map.ignore_tags
    started = time.perf_counter()
    tensors = runs.map(lambda run: group_records(run.records, ignore_tags=ignore))
    for side, run, grouped in (("baseline", runs.baseline, tensors.baseline), ("target", runs.target, tensors.target)):
        log.debug("plan: %s: %d records of %d rank(s) -> %d logical tensors", side,
                  sum(len(rank.records) for rank in run.ranks), len(run.ranks), len(grouped))
    log.debug("plan: grouped records in %.2f s", time.perf_counter() - started)
    started = time.perf_counter()
    axis_sizes = _axis_sizes(runs)
    aux = Pair(_aux_loader(runs.baseline, tensors.baseline, options, "baseline"),
               _aux_loader(runs.target, tensors.target, options, "target"))
    reason: str | None = None
    if aligner is None and options.aligner == "auto":
        choice = choose_aligner(tensors, aux, options)
        aligner, reason = choice.make(options.aligner_metadata), choice.describe()
    elif aligner is None:
        aligner = options.make_aligner()
    items: list[WorkItem] = []
    planner = UnshardPlanner()  # each layout planned once, not each step's tensor
    for series in match_runs(tensors.baseline, tensors.target, options):
        # NOTE: token aligners read the runs' token metadata here, before any big tensor
        # is loaded; a missing metadata dump stops the comparison with one clear line.
        context = AlignContext(name=series.name, tags=series.tags, baseline_token_dim=None, target_token_dim=None,
                               baseline_aux=aux.baseline, target_aux=aux.target)
        for unit in aligner.plan(series.step_pairs, context):
            items.append(_plan_unit(series, unit, options, planner))
    items.sort(key=lambda item: item.place.order)
    items = attach_downstream(attach_routing(items, options.routing), aux.baseline, options,
                              row_keys=getattr(aligner, "row_keys", None))
    log.debug("plan: %d work items in %.2f s", len(items), time.perf_counter() - started)
    return ComparisonPlan(items=tuple(items), axis_sizes=axis_sizes, aligner=aligner.name, aligner_reason=reason)


def choose_aligner(tensors: Pair[list[LogicalTensor]], aux: Pair[AuxLoader], options: CompareOptions) -> "AutoChoice":
    """``--aligner auto``: the aligner the runs' token metadata calls for (aligners/auto.py)."""
    from aligners import MetadataNames
    from aligners.auto import choose, read_run

    names = options.aligner_metadata or MetadataNames()
    per_step = {names.input_ids, names.positions, names.position_ids, names.token_req_ids, names.num_tokens_per_dp_rank}
    views = []
    for side, side_tensors in tensors.items():
        chosen = options.steps if side == "target" else options.baseline_range
        steps = sorted({t.step for t in side_tensors if t.name in per_step and not t.tags and t.step in chosen})
        views.append(read_run(aux.side(side), steps, names, side))
    return choose(views[0], views[1], offset=options.step_offset)


def attach_routing(items: Sequence[WorkItem], options: RoutingOptions) -> list[WorkItem]:
    """The work items, with ``routing`` set on top-k ids and on MoE outputs that have routing beside them.

    Only tensor work takes part: stats alone cannot tell which tokens flipped.
    """
    if not options.enabled:
        return list(items)
    usable = [i for i in items if isinstance(i, TensorWork)]
    topk = {layer_step(i): i for i in usable if options.topk_ids.search(i.name)}
    if not topk:
        return list(items)
    logits = {layer_step(i): i for i in usable if options.router_logits.search(i.name)}
    attached: list[WorkItem] = []
    for item in items:
        if not isinstance(item, TensorWork):
            attached.append(item)
            continue
        found = topk.get(layer_step(item))
        role: Literal["topk_ids", "moe_output"] | None = (
            "topk_ids" if options.topk_ids.search(item.name)
            else "moe_output" if options.moe_outputs.search(item.name) else None)
        if found is None or role is None:
            attached.append(item)
            continue
        attached.append(dataclasses.replace(item, routing=RoutingSources(
            topk_ids=found, router_logits=logits.get(layer_step(item)), role=role)))
    return attached


def attach_downstream(items: Sequence[WorkItem], aux: AuxLoader, options: CompareOptions, *,
                      row_keys: Callable[[AlignUnit], Any] | None = None) -> list[WorkItem]:
    """Tensor work after a top-k ids tensor gets the routing sources before it and its row keys
    (comparator/judge/downstream.py): the executor leaves out the rows benign flips reach.

    ``row_keys``: the aligner's own names of its aligned rows (by_request keeps the tokens
    both runs hold, in request order); else the rows are the baseline steps' real tokens."""
    if not options.routing.enabled:
        return list(items)
    from aligners import MetadataNames

    names = options.aligner_metadata or MetadataNames()
    cache: dict[Any, tuple[tuple[RowKey, ...] | None, tuple[RowKey, ...] | None, str | None]] = {}
    upstream: list[RoutingSources] = []
    planned: dict[tuple[float, ...], TensorWork] = {}  # by order: the items as attached here
    attached: list[WorkItem] = []
    for item in items:
        if not isinstance(item, TensorWork):
            attached.append(item)
            continue
        is_topk = item.routing is not None and item.routing.role == "topk_ids"
        if (upstream or is_topk) and item.unit.baseline_steps:
            steps = item.unit.baseline_steps
            aligned = row_keys(item.unit) if row_keys is not None else None
            if aligned is not None:
                keys, request_keys, why_not = aligned[0], aligned[1], None
            else:
                if steps not in cache:
                    cache[steps] = step_row_keys(aux, steps, names)
                keys, request_keys, why_not = cache[steps]
            item = dataclasses.replace(item, downstream=DownstreamSources(
                upstream=tuple(upstream), keys=keys, request_keys=request_keys, why_not=why_not))
        planned[item.place.order] = item
        if item.routing is not None:
            # NOTE: every routing source points at the items as attached here, so that the
            # routing a MoE output is judged with left out the same rows as the output.
            logits = item.routing.router_logits
            sources = dataclasses.replace(
                item.routing, topk_ids=planned.get(item.routing.topk_ids.place.order, item.routing.topk_ids),
                router_logits=planned.get(logits.place.order, logits) if logits is not None else None)
            item = dataclasses.replace(item, routing=sources)
            if sources.role == "topk_ids":
                upstream.append(sources)
        attached.append(item)
    return attached


def _aux_loader(run: Run, tensors: list[LogicalTensor], options: CompareOptions, side: str) -> AuxLoader:
    """(name, step, tags) -> that unsharded tensor of ``run`` (small token metadata), or None if not dumped."""
    by_key = {t.key: t for t in tensors}
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


def _axis_sizes(runs: Pair[Run]) -> dict[str, int]:
    sizes: dict[str, int] = {}
    for _, run in runs.items():
        for rank in run.ranks:
            for record in rank.records[:1]:
                for axis, info in record.parallel.items():
                    if info.size > 1:
                        sizes[axis] = max(sizes.get(axis, 1), info.size)
    return sizes


def _plan_unit(series: Series, unit: AlignUnit, options: CompareOptions, planner: UnshardPlanner) -> WorkItem:
    tensors = Pair([series.baseline[s] for s in unit.baseline_steps], [series.target[s] for s in unit.target_steps])
    plans: Pair[list[UnshardPlan]] = Pair([], [])
    errors: list[str] = []
    for side, side_tensors in tensors.items():
        for tensor in side_tensors:
            try:
                plans.side(side).append(
                    planner.plan(f"{side} {tensor.label}", tensor.records, dims=options.dims_for(tensor.name, side)))
            except UnshardError as exc:
                errors.append(str(exc))
    place = Placement(
        name=series.name, baseline_name=series.baseline_name, step=unit.step, tags=series.tags,
        order=series.unit_order(unit.target_steps, unit.baseline_steps),
        keys=tuple(t.key for t in tensors.target),
        predecessors=tuple(p for t in tensors.target for p in t.predecessors),
        sides=Pair(_side_info(series.baseline_name, unit.baseline_steps, tensors.baseline, plans.baseline, planner),
                   _side_info(series.name, unit.target_steps, tensors.target, plans.target, planner)),
    )
    if not tensors.target or not tensors.baseline:
        where, other, missing = (("baseline", "target", series.name) if tensors.baseline
                                 else ("target", "baseline", series.baseline_name))
        return OneSided(place=place, reason=f"only in {where}: the {other} run has no {missing} at this step")
    if errors:
        return Unplannable(place=place, reason="; ".join(errors))
    frozen = plans.map(tuple)
    if any(record.file is None for _, side_plans in frozen.items() for plan in side_plans for record in plan.records):
        # NOTE: a stats-mode run still has every tensor's stats and checksum in its index:
        # judge from those (comparator/judge/stats_only.py) rather than skip.
        return StatsWork(place=place, plans=frozen)
    return TensorWork(place=place, unit=unit, plans=frozen, context=_execution_context(series, frozen))


def _execution_context(series: Series, plans: Pair[tuple[UnshardPlan, ...]]) -> AlignContext:
    """The aligner's context for executing a unit: token dims and dims after unsharding (no loaders)."""
    dims = plans.map(lambda side: side[0].dims)
    return AlignContext(
        name=series.name, tags=series.tags,
        baseline_token_dim=plans.baseline[0].token_dim, target_token_dim=plans.target[0].token_dim,
        baseline_dims=dims.baseline,
        target_dims=dims.target,
    )


def _side_info(name: str, steps: tuple[int, ...], tensors: Sequence[LogicalTensor],
               plans: Sequence[UnshardPlan], planner: UnshardPlanner) -> SideInfo | None:
    if not tensors:
        return None
    records: list[IndexRecord] = [r for t in tensors for r in t.records]
    plan = plans[0] if len(plans) == len(tensors) and plans else None
    # NOTE: 120k work items describe a few hundred layouts: one copy of each description.
    return SideInfo(
        name=name, steps=planner.shared(steps),
        shape=plan.shape if plan is not None else None,
        dtype=records[0].dtype,
        ranks=planner.shared(tuple(sorted({r.rank for r in records}))),
        dims=records[0].dims if plan is None or plan.dims is None else plan.dims.text,
        plan=planner.shared(plan.describe()) if plan is not None else None,
    )
