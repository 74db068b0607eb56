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
