"""What a run holds: ranks, steps, logical tensors, and what is missing (``dumpcmp ls``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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
    ranks = [
        RankSummary(
            directory=r.directory,
            rank=r.rank,
            status=r.status,
            records=len(r.records),
            steps=r.steps,
            parallel=(r.info.parallel if r.info is not None else {a: i.to_json() for a, i in r.records[0].parallel.items()} if r.records else {}),
            torn_lines=r.torn_lines,
            escalation=r.info.escalation if r.info is not None else None,
            against=(r.info.online or {}).get("against") if r.info is not None else None,
        )
        for r in run.ranks
    ]
    grouped: dict[tuple[str, str], dict[str, Any]] = {}
    for record in run.records:
        key = (record.name, repr(sorted(record.tags.items())))
        entry = grouped.get(key)
        if entry is None:
            entry = grouped[key] = {
                "name": record.name,
                "tags": record.tags,
                "dtype": record.dtype,
                "shapes": [],
                "dims": record.dims,
                "steps": set(),
                "ranks": set(),
                "records": 0,
                "bytes": 0,
            }
        if list(record.shape) not in entry["shapes"]:
            entry["shapes"].append(list(record.shape))
        entry["steps"].add(record.step)
        entry["ranks"].add(record.rank)
        entry["records"] += 1
        entry["bytes"] += record.nbytes
    tensors = [
        TensorSummary(**{**entry, "steps": sorted(entry["steps"]), "ranks": sorted(entry["ranks"])})
        for entry in grouped.values()
    ]
    return RunSummary(
        path=run.path,
        format=run.format,
        mode=run.mode,
        command=run.info.command if run.info is not None else [],
        world_size=run.world_size,
        ranks=ranks,
        tensors=tensors,
        problems=list(run.problems),
    )


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
