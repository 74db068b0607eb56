"""What a run holds: ranks, steps, logical tensors, and what is missing (``dumpcmp ls``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dumper.index_summary import IndexSummary
from dumper.reader import Run


@dataclass(frozen=True, kw_only=True)
class RankSummary:
    directory: str
    rank: int
    status: str
    records: int
    steps: list[int]
    parallel: dict[str, dict[str, int]]
    torn_lines: int
    escalation: dict[str, Any] | None = None  # dumpcmp run --against: where this rank diverged from the baseline
    against: str | None = None  # that baseline


@dataclass(frozen=True, kw_only=True)
class TensorSummary:
    name: str
    tags: dict[str, Any]
    dtype: str
    shapes: list[list[int]]  # distinct shapes across ranks and steps
    dims: str | None
    steps: list[int]
    ranks: list[int]
    records: int
    bytes: int


@dataclass(frozen=True, kw_only=True)
class RunSummary:
    path: str
    format: str
    mode: str
    command: list[str]
    world_size: int
    ranks: list[RankSummary]
    tensors: list[TensorSummary]
    problems: list[str]

    def to_json(self) -> dict[str, Any]:
        from dataclasses import asdict

        data = asdict(self)
        data["complete"] = not self.problems
        return data


def summarize_run(run: Run) -> RunSummary:
    """The run's ranks and tensors; a rank opened with its index summary is not decoded line by line."""
    summaries = [rank.index_summary() for rank in run.ranks]
    ranks = [
        RankSummary(
            directory=r.directory,
            rank=r.rank,
            status=r.status,
            records=summary.records,
            steps=list(summary.steps),
            parallel=r.info.parallel if r.info is not None else summary.parallel,
            torn_lines=r.torn_lines,
            escalation=r.info.escalation if r.info is not None else None,
            against=(r.info.online or {}).get("against") if r.info is not None else None,
        )
        for r, summary in zip(run.ranks, summaries)
    ]
    return RunSummary(
        path=run.path,
        format=run.format,
        mode=run.mode,
        command=run.info.command if run.info is not None else [],
        world_size=run.world_size,
        ranks=ranks,
        tensors=merge_tensors(summaries),
        problems=list(run.problems),
    )


def merge_tensors(summaries: list[IndexSummary]) -> list[TensorSummary]:
    """One row per name and tags across the rank directories, in the run's record order (step, rank, seq).

    Each row's dtype and dims are its first record's, its shapes in order of first appearance.
    """
    merged: dict[tuple[str, str], dict[str, Any]] = {}
    for summary in summaries:
        for group in summary.tensors:
            entry = merged.get(group.key)
            if entry is None:
                entry = merged[group.key] = {"group": group, "shapes": {}, "steps": set(), "ranks": set(), "records": 0,
                                             "bytes": 0}
            elif group.first < entry["group"].first:
                entry["group"] = group
            for shape, first in group.shapes:
                if shape not in entry["shapes"] or first < entry["shapes"][shape]:
                    entry["shapes"][shape] = first
            entry["steps"].update(group.steps)
            entry["ranks"].update(group.ranks)
            entry["records"] += group.records
            entry["bytes"] += group.bytes
    rows = sorted(merged.values(), key=lambda entry: entry["group"].first)
    return [
        TensorSummary(
            name=entry["group"].name, tags=entry["group"].tags, dtype=entry["group"].dtype,
            shapes=[list(shape) for shape, _ in sorted(entry["shapes"].items(), key=lambda item: item[1])],
            dims=entry["group"].dims, steps=sorted(entry["steps"]), ranks=sorted(entry["ranks"]),
            records=entry["records"], bytes=entry["bytes"],
        )
        for entry in rows
    ]


def divergence_lines(summary: RunSummary) -> list[str]:
    """Where each rank of a ``dumpcmp run --against`` run diverged from its baseline (empty when none did)."""
    lines = []
    for rank in summary.ranks:
        escalation = rank.escalation
        if escalation is None:
            continue
        tags = " ".join(f"{k}={v}" for k, v in sorted((escalation.get("tags") or {}).items()))
        lines.append(f"rank {rank.rank} diverged from {rank.against or 'the baseline'} at step {escalation.get('step')}, "
                     f"{escalation.get('name')}{f' [{tags}]' if tags else ''}: {escalation.get('reason')} "
                     f"(tensor data through step {escalation.get('until_step')})")
    return lines


def outcome_lines(summary: RunSummary) -> list[str]:
    """What a finished ``dumpcmp run`` left: records, ranks, steps, and divergences from --against."""
    records = sum(rank.records for rank in summary.ranks)
    steps = sorted({step for rank in summary.ranks for step in rank.steps})
    span = f", steps {steps[0]}-{steps[-1]}" if steps else ""
    lines = [f"{records} records from {len(summary.ranks)} rank(s){span} in {summary.path}"]
    lines += divergence_lines(summary)
    if any(rank.against for rank in summary.ranks) and not any(rank.escalation for rank in summary.ranks):
        lines.append("no rank diverged from the baseline (stats agreed everywhere they were compared)")
    return lines
