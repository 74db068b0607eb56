"""The collectives next to the first divergence: what each rank ran between the last
passing tensor and the first failing one, beside the baseline's.

Plan from metadata only: the runs' index records give, per rank, the ``seq`` of the
failing tensor and of the last tensor before it that passed; the collective trace
(``collectives.jsonl``, see dumper/collectives.py) gives every collective with the
``seq`` of the dump record before it. Nothing here loads tensor data.

``compare()`` computes the trace once and stores it in the Report; renderers only read it.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

from dumper.collectives import COLLECTIVES_FILE, read_collectives
from dumper.run import Run

if TYPE_CHECKING:
    from comparator.results import FirstDivergence, Pair, TensorResult

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class CollectiveCount:
    """Identical collectives (op, group, shape, dtype) of one rank between two tensors."""

    op: str
    axis: str | None
    ranks: tuple[int, ...] | None
    shape: tuple[int, ...] | None
    dtype: str | None
    count: int
    caller: tuple[str, ...]

    @property
    def group_label(self) -> str:
        if self.axis:
            return self.axis
        return f"ranks {list(self.ranks)}" if self.ranks is not None else "?"

    def describe(self) -> str:
        shape = list(self.shape) if self.shape is not None else "?"
        return f"{self.op}({self.group_label}, {shape}) x{self.count}"

    def to_json(self) -> dict[str, Any]:
        return {"op": self.op, "axis": self.axis, "ranks": list(self.ranks) if self.ranks is not None else None,
                "shape": list(self.shape) if self.shape is not None else None, "dtype": self.dtype,
                "count": self.count, "caller": list(self.caller)}


@dataclass(frozen=True, kw_only=True)
class RankCollectives:
    side: str  # "baseline" | "target"
    rank: int
    after: str | None  # the last passing tensor on this rank (None: the start of the run)
    before: str  # the failing tensor
    calls: tuple[CollectiveCount, ...]

    def describe(self) -> str:
        calls = ", ".join(c.describe() for c in self.calls) or "none"
        return f"{self.side} rank {self.rank}: {calls}"

    def to_json(self) -> dict[str, Any]:
        return {"side": self.side, "rank": self.rank, "after": self.after, "before": self.before,
                "calls": [c.to_json() for c in self.calls]}


@dataclass(frozen=True, kw_only=True)
class CollectiveTrace:
    """Per rank and side, the collectives between the last passing and the first failing tensor."""

    target: tuple[RankCollectives, ...]
    baseline: tuple[RankCollectives, ...]
    differences: tuple[str, ...]  # e.g. "target rank 0: all_reduce(world, [7, 64]) x1 here; baseline: x0"
    traced: dict[str, bool]  # whether each side's run holds a collective trace

    def lines(self) -> list[str]:
        out = [r.describe() for r in self.target] + [r.describe() for r in self.baseline]
        for side, traced in self.traced.items():
            if not traced:
                out.append(f"{side}: no collective trace in this run (dumped without one)")
        return out

    def to_json(self) -> dict[str, Any]:
        return {"target": [r.to_json() for r in self.target], "baseline": [r.to_json() for r in self.baseline],
                "differences": list(self.differences), "traced": dict(self.traced)}


def _label(name: str, step: int, tags: dict[str, Any]) -> str:
    from comparator.matching import tensor_label

    return tensor_label(name, step, tags)


def _matches(record: Any, name: str, step: int, tags: dict[str, Any]) -> bool:
    return (record.name == name and record.step == step
            and all(str(record.tags.get(k)) == str(v) for k, v in tags.items()))


def _side(run: Run, side: str, failing: tuple[str, int, dict[str, Any]],
          passing: set[tuple[str, int]], passing_tags: dict[tuple[str, int], list[dict[str, Any]]]
          ) -> tuple[list[RankCollectives], bool]:
    name, step, tags = failing
    found: list[RankCollectives] = []
    # A one-process run without a process group makes no collectives: nothing to trace.
    traced = run.world_size == 1
    for rank in run.ranks:
        rank_dir = os.path.join(run.root, rank.directory)
        traced = traced or os.path.exists(os.path.join(rank_dir, COLLECTIVES_FILE))
        failing_seqs = [r.seq for r in rank.records if _matches(r, name, step, tags)]
        if not failing_seqs:
            continue
        fail_seq = min(failing_seqs)
        after_seq, after_label = -1, None
        for record in sorted((r for r in rank.records if r.seq < fail_seq), key=lambda r: -r.seq):
            key = (record.name, record.step)
            if key in passing and any(all(str(record.tags.get(k)) == str(v) for k, v in t.items())
                                      for t in passing_tags[key]):
                after_seq, after_label = record.seq, _label(record.name, record.step, record.tags)
                break
        try:
            recorded = read_collectives(rank_dir)
        except OSError as exc:
            # NOTE: the trace is an aid: an unreadable one is lost with a warning, the verdicts stand.
            log.warning("dumpcmp: %s: cannot read the collective trace (%s)", rank_dir, exc.strerror or exc)
            recorded = []
        calls = [c for c in recorded if after_seq <= c["after_seq"] < fail_seq]
        found.append(RankCollectives(side=side, rank=rank.rank, after=after_label,
                                     before=_label(name, step, tags), calls=_count(calls)))
    found.sort(key=lambda r: r.rank)
    return found, traced


def _count(calls: list[dict[str, Any]]) -> tuple[CollectiveCount, ...]:
    counts: Counter = Counter()
    first: dict[tuple, dict[str, Any]] = {}
    for call in calls:
        group = call.get("group") or {}
        ranks = tuple(group["ranks"]) if isinstance(group.get("ranks"), list) else None
        shape = tuple(call["shape"]) if isinstance(call.get("shape"), list) else None
        key = (call["op"], group.get("axis"), ranks, shape, call.get("dtype"))
        counts[key] += 1
        first.setdefault(key, call)
    out = []
    for key, count in counts.items():  # Counter keeps first-seen order
        op, axis, ranks, shape, dtype = key
        caller = first[key].get("caller") or ()
        out.append(CollectiveCount(op=op, axis=axis, ranks=ranks, shape=shape, dtype=dtype, count=count,
                                   caller=tuple(caller) if isinstance(caller, list) else (str(caller),)))
    return tuple(out)


def _differences(target: list[RankCollectives], baseline: list[RankCollectives]) -> list[str]:
    """Where a target rank ran a collective (op over a group) more or fewer times than the baseline's."""
    if not baseline:
        return []
    by_rank = {r.rank: r for r in baseline}
    lines = []
    for mine in target:
        theirs = by_rank.get(mine.rank, baseline[0])
        here: Counter = Counter()
        there: Counter = Counter()
        shapes: dict[tuple[str, str], tuple[int, ...] | None] = {}
        for call in mine.calls:
            here[(call.op, call.group_label)] += call.count
            shapes.setdefault((call.op, call.group_label), call.shape)
        for call in theirs.calls:
            there[(call.op, call.group_label)] += call.count
            shapes.setdefault((call.op, call.group_label), call.shape)
        for key in list(here) + [k for k in there if k not in here]:
            if here[key] != there[key]:
                op, group = key
                known = shapes[key]
                shape = list(known) if known is not None else "?"
                word = "extra" if here[key] > there[key] else "missing"
                lines.append(f"target rank {mine.rank}: {op}({group}, {shape}) x{here[key]} here; "
                             f"baseline rank {theirs.rank}: x{there[key]} ({word} in the target)")
    return lines


def trace_first_divergence(runs: "Pair[Run]", results: "Sequence[TensorResult]",
                           first: "FirstDivergence | None") -> CollectiveTrace | None:
    """The collectives around ``first``, or None where there is none or neither run traced any."""
    if first is None:
        return None
    failing = (first.name, first.step, dict(first.tags))
    passing: set[tuple[str, int]] = set()
    passing_tags: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for result in results[: first.index]:
        if result.status == "pass":
            passing.add((result.name, result.step))
            passing_tags.setdefault((result.name, result.step), []).append(dict(result.tags))
    target_side, target_traced = _side(runs.target, "target", failing, passing, passing_tags)
    baseline_side, baseline_traced = _side(runs.baseline, "baseline", failing, passing, passing_tags)
    if not target_traced and not baseline_traced:
        return None
    # NOTE: counts are only comparable rank by rank when both runs have the same layout.
    comparable = len(target_side) == len(baseline_side) and target_traced and baseline_traced
    return CollectiveTrace(
        target=tuple(target_side), baseline=tuple(baseline_side),
        differences=tuple(_differences(target_side, baseline_side)) if comparable else (),
        traced={"baseline": baseline_traced, "target": target_traced},
    )
