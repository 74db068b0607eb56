"""Group each run's records into logical tensors and pair baseline with target.

A *logical tensor* is one name + tags + step, across all the ranks that dumped it.
Its execution order is that of its first record in (step, rank, seq) order. The
*predecessors* of a logical tensor are, on each rank that dumped it, the tensor
dumped just before it: what it most likely consumed. For the first tensor of a step
that is the last tensor of the previous step on that rank (a decode step consumes
what the step before it produced).
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable

from aligners import StepPair
from dumper.format import IndexRecord

if TYPE_CHECKING:  # options import routing, which imports this module
    from comparator.options import CompareOptions

TagsKey = tuple[tuple[str, str], ...]
TensorKey = tuple[str, int, TagsKey]  # name, step, tags


def tags_key(tags: dict[str, Any]) -> TagsKey:
    return tuple(sorted((str(k), json.dumps(v, sort_keys=True, default=str)) for k, v in tags.items()))


@dataclass(frozen=True, kw_only=True, slots=True)
class LogicalTensor:
    name: str
    step: int
    tags: dict[str, Any]
    records: tuple[IndexRecord, ...]
    position: int  # execution order within its run
    # (name, step, tags key): computed once by group_records, where tags are keyed once per tags dict.
    key: TensorKey
    predecessors: tuple[TensorKey, ...] = ()

    @property
    def tags_key(self) -> TagsKey:
        return self.key[2]

    @property
    def label(self) -> str:
        return tensor_label(self.name, self.step, self.tags)


def tensor_label(name: str, step: int, tags: dict[str, Any]) -> str:
    shown = ",".join(f"{k}={v}" for k, v in sorted(tags.items()))
    return f"{name}[{shown}]@step{step}" if shown else f"{name}@step{step}"


def group_records(records: Iterable[IndexRecord], *, ignore_tags: frozenset[str] = frozenset()) -> list[LogicalTensor]:
    """Records (in (step, rank, seq) order, as ``Run.records`` gives them) -> logical tensors in execution order."""
    grouped: dict[TensorKey, list[IndexRecord]] = {}
    tags_of: dict[TensorKey, dict[str, Any]] = {}
    last_on_rank: dict[str, TensorKey] = {}
    predecessors: dict[TensorKey, list[TensorKey]] = defaultdict(list)
    # The reader shares one tags dict among the records that carry the same tags: their
    # filtered tags and key are computed once (a million records, a few thousand dicts).
    keyed: dict[int, tuple[dict[str, Any], TagsKey, dict[str, Any]]] = {}
    for record in records:
        seen = keyed.get(id(record.tags))
        if seen is None or seen[2] is not record.tags:
            tags = {k: v for k, v in record.tags.items() if k not in ignore_tags}
            seen = keyed[id(record.tags)] = (tags, tags_key(tags), record.tags)
        tags = seen[0]
        key = (record.name, record.step, seen[1])
        if key not in grouped:
            grouped[key] = []
            tags_of[key] = tags
        grouped[key].append(record)
        lane = record.source or str(record.rank)
        previous = last_on_rank.get(lane)
        if previous is not None and previous != key and previous not in predecessors[key]:
            predecessors[key].append(previous)
        last_on_rank[lane] = key
    tensors = []
    for position, (key, found) in enumerate(grouped.items()):
        tensors.append(LogicalTensor(name=key[0], step=key[1], tags=tags_of[key], records=tuple(found),
                                     position=position, key=key, predecessors=tuple(predecessors.get(key, ()))))
    return tensors


@dataclass(frozen=True, kw_only=True)
class Series:
    """One logical tensor across steps, as both runs hold it (named after the target)."""

    name: str
    baseline_name: str
    tags: dict[str, Any]
    baseline: dict[int, LogicalTensor]  # by baseline step
    target: dict[int, LogicalTensor]  # by target step
    step_pairs: tuple[StepPair, ...]
    order: tuple[float, ...]  # where the series' first tensor sits in execution order
    # Execution-order keys of baseline-only tensors (by baseline step), placed right
    # after the paired tensor that precedes them in the baseline.
    baseline_only_order: dict[int, tuple[float, ...]]

    def unit_order(self, target_steps: tuple[int, ...], baseline_steps: tuple[int, ...]) -> tuple[float, ...]:
        if target_steps:
            return (self.target[target_steps[0]].position, 0, 0)
        return self.baseline_only_order[baseline_steps[0]]


def match_runs(baseline: list[LogicalTensor], target: list[LogicalTensor], options: CompareOptions) -> list[Series]:
    """Pair two runs' logical tensors by (mapped) name, tags and step offset."""
    name_map = options.name_map
    offset = options.step_offset

    def keep(name: str, step: int, steps: Any) -> bool:
        if step not in steps:
            return False
        if options.names is not None and options.names.search(name) is None:
            return False
        return options.exclude is None or options.exclude.search(name) is None

    target = [t for t in target if keep(t.name, t.step, options.steps)]
    baseline = [b for b in baseline if keep(b.name, b.step, options.baseline_range)]

    # A target series is keyed by its own name and tags; it pairs with the baseline
    # series its mapped name and tags point at.
    series_target: dict[tuple[str, TagsKey], dict[int, LogicalTensor]] = defaultdict(dict)
    partner_of: dict[tuple[str, TagsKey], tuple[str, TagsKey]] = {}
    series_baseline: dict[tuple[str, TagsKey], dict[int, LogicalTensor]] = defaultdict(dict)
    for tensor in target:
        key = (tensor.name, tensor.tags_key)
        series_target[key][tensor.step] = tensor
        if key not in partner_of:  # one series, many steps: map its name and tags once
            partner_of[key] = (name_map.baseline_name(tensor.name, tensor.tags),
                               tags_key(name_map.baseline_tags(tensor.tags)))
    for tensor in baseline:
        series_baseline[(tensor.name, tensor.tags_key)][tensor.step] = tensor
    sharing: dict[tuple[str, TagsKey], int] = defaultdict(int)
    for partner in partner_of.values():
        sharing[partner] += 1

    # Where baseline-only tensors go: right after the paired tensor before them.
    paired_position: dict[TensorKey, int] = {}
    for key, by_step in series_target.items():
        for step, tensor in by_step.items():
            partner_tensor = series_baseline.get(partner_of[key], {}).get(step + offset)
            if partner_tensor is not None:
                paired_position[partner_tensor.key] = tensor.position
    anchor = -1
    baseline_order: dict[TensorKey, tuple[float, ...]] = {}
    for tensor in baseline:
        if tensor.key in paired_position:
            anchor = paired_position[tensor.key]
        else:
            baseline_order[tensor.key] = (anchor, 1, tensor.position)

    result: list[Series] = []
    claimed: set[TensorKey] = set()
    for key, by_target in series_target.items():
        partner = partner_of[key]
        by_baseline = series_baseline.get(partner, {})
        if sharing[partner] > 1:
            # Several target tensors map onto one baseline tensor: each is compared with
            # it, and the baseline's unpaired steps are reported once, on their own.
            by_baseline = {s + offset: by_baseline[s + offset] for s in by_target if s + offset in by_baseline}
        claimed.update(t.key for t in by_baseline.values())
        head = min(by_target.values(), key=lambda t: t.position)
        result.append(_series(head.name, partner[0], head.tags, by_baseline, by_target, offset,
                              (head.position, 0, 0), baseline_order))
    for by_baseline in series_baseline.values():
        left = {s: t for s, t in by_baseline.items() if t.key not in claimed}
        if not left:
            continue
        head = min(left.values(), key=lambda t: t.position)
        result.append(_series(head.name, head.name, head.tags, left, {}, offset, baseline_order[head.key], baseline_order))
    result.sort(key=lambda s: s.order)
    return result


def _series(name: str, baseline_name: str, tags: dict[str, Any], by_baseline: dict[int, LogicalTensor],
            by_target: dict[int, LogicalTensor], offset: int, order: tuple[float, ...],
            baseline_order: dict[TensorKey, tuple[float, ...]]) -> Series:
    steps = sorted(set(by_target) | {s - offset for s in by_baseline})
    pairs = tuple(
        StepPair(
            baseline_step=(s + offset) if (s + offset) in by_baseline else None,
            target_step=s if s in by_target else None,
        )
        for s in steps
    )
    return Series(
        name=name, baseline_name=baseline_name, tags=tags, baseline=by_baseline, target=by_target,
        step_pairs=pairs, order=order,
        baseline_only_order={step: baseline_order[t.key] for step, t in by_baseline.items() if t.key in baseline_order},
    )
