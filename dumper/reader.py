"""Read a run directory: lazily, memory-mapped, and honest about what is missing.

    with open_run("RUN") as run:
        for record in run.records:
            tensor = run.load(record)

Opening reads only the JSON (run.json, rank.json, index.jsonl). Tensors are read
one at a time through safetensors' memory-mapped ``safe_open``. Whatever is
missing or inconsistent lands in ``run.problems`` (and is logged as a warning)
instead of failing the whole run.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator

from dumper.errors import RunFormatError, RunNotFoundError
from dumper.format import (
    INDEX_FILE,
    PROC_DIR_PREFIX,
    RANK_DIR_PREFIX,
    RANK_INFO_FILE,
    RUN_INFO_FILE,
    SCHEMA_VERSION,
    IndexRecord,
    RankInfo,
    RunInfo,
)

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

# Data files held open (memory-mapped) at once; a run can have thousands.
_MAX_OPEN_FILES = 16


@dataclass(frozen=True, kw_only=True)
class RankContents:
    directory: str  # e.g. "rank-00001" or "proc-4242"
    rank: int
    info: RankInfo | None
    records: list[IndexRecord]
    torn_lines: int = 0

    @property
    def steps(self) -> list[int]:
        return sorted({r.step for r in self.records})

    @property
    def last_step(self) -> int | None:
        return max((r.step for r in self.records), default=None)

    @property
    def status(self) -> str:
        return self.info.status if self.info is not None else "unknown"


@dataclass(kw_only=True)
class Run:
    path: str
    info: RunInfo | None
    ranks: list[RankContents]
    problems: list[str] = field(default_factory=list)
    format: str = "dumpcmp"
    _handles: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def records(self) -> list[IndexRecord]:
        """Every record, ordered by step, then rank, then execution order on the rank."""
        everything = [record for rank in self.ranks for record in rank.records]
        everything.sort(key=lambda r: (r.step, r.rank, r.source, r.seq))
        return everything

    @property
    def world_size(self) -> int:
        sizes = [r.info.world_size for r in self.ranks if r.info is not None]
        sizes += [rec.world_size for r in self.ranks for rec in r.records[:1]]
        return max(sizes, default=len(self.ranks))

    @property
    def complete(self) -> bool:
        return not self.problems

    @property
    def mode(self) -> str:
        if self.info is not None:
            return self.info.mode
        return "stats" if all(rec.file is None for rank in self.ranks for rec in rank.records) else "tensor"

    def load(self, record: IndexRecord, *, verify: bool = False) -> "torch.Tensor":
        """Load one record's tensor (a copy, safe to keep after ``close``)."""
        if record.file is None or record.key is None:
            raise RunFormatError(f"{record.name} (step {record.step}, rank {record.rank}) has no data: run dumped in stats mode")
        path = _inside(self.path, os.path.join(record.source, record.file))
        if self.format == "sglang":
            from dumper.sglang_reader import as_tensor, load_file

            tensor = as_tensor(load_file(path)["value"], path)
            return tensor
        handle = self._handle(path)
        try:
            tensor = handle.get_tensor(record.key)
        except Exception as exc:  # safetensors raises its own error types
            raise RunFormatError(f"{path}: cannot read key {record.key!r} ({exc})") from None
        if tuple(tensor.shape) != tuple(record.shape) or str(tensor.dtype).removeprefix("torch.") != record.dtype:
            raise RunFormatError(
                f"{path}: key {record.key!r} holds {tuple(tensor.shape)} {tensor.dtype}, "
                f"but the index says {tuple(record.shape)} {record.dtype}"
            )
        if verify:
            from dumper.stats import checksum

            found = checksum(tensor)
            if found != record.checksum:
                raise RunFormatError(f"{path}: checksum mismatch for {record.name} seq {record.seq} ({found} != {record.checksum})")
        return tensor

    def _handle(self, path: str) -> Any:
        handle = self._handles.get(path)
        if handle is None:
            from safetensors import safe_open

            if len(self._handles) >= _MAX_OPEN_FILES:
                self._handles.pop(next(iter(self._handles)))
            try:
                handle = safe_open(path, framework="pt")
            except FileNotFoundError:
                raise RunFormatError(f"{path}: data file is missing") from None
            except Exception as exc:
                raise RunFormatError(f"{path}: corrupt safetensors file ({exc})") from None
            self._handles[path] = handle
        return handle

    def close(self) -> None:
        self._handles.clear()

    def __enter__(self) -> "Run":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _inside(root: str, relative: str) -> str:
    """Resolve ``relative`` under ``root``; an index must never point outside its run."""
    root_real = os.path.realpath(root)
    path = os.path.realpath(os.path.join(root_real, relative))
    if os.path.commonpath([root_real, path]) != root_real:
        raise RunFormatError(f"index entry {relative!r} points outside the run directory {root}")
    return path


def _read_json(path: str, problems: list[str]) -> dict[str, Any] | None:
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        problems.append(f"{path}: unreadable ({exc})")
        return None
    if not isinstance(data, dict):
        problems.append(f"{path}: expected a JSON object")
        return None
    return data


def read_index(path: str, *, source: str) -> tuple[list[IndexRecord], int, list[str]]:
    """Parse one index.jsonl; returns records, torn trailing lines, and problems."""
    records: list[IndexRecord] = []
    problems: list[str] = []
    torn = 0
    with open(path, "rb") as handle:
        lines = handle.read().split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
        last_complete = True
    else:
        last_complete = False
    for number, raw in enumerate(lines, start=1):
        is_last = number == len(lines)
        try:
            data = json.loads(raw)
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            record = IndexRecord.from_json(data, source=source)
        except (ValueError, KeyError, TypeError) as exc:
            if is_last and not last_complete:
                torn += 1
                problems.append(f"{path}: line {number} is torn (the writer stopped mid-line); ignored")
            else:
                problems.append(f"{path}: line {number} is not a valid record ({exc}); ignored")
            continue
        if record.file is not None and (os.sep in record.file or record.file.startswith(".") or "/" in record.file
                                        or "\\" in record.file or "\x00" in record.file):
            problems.append(f"{path}: line {number} points at {record.file!r}, outside its rank directory; ignored")
            continue
        records.append(record)
    return records, torn, problems


def is_dumpcmp_run(path: str) -> bool:
    if os.path.isfile(os.path.join(path, RUN_INFO_FILE)):
        return True
    try:
        return any(_is_rank_dir(entry) for entry in os.listdir(path))
    except OSError:
        return False


def _is_rank_dir(name: str) -> bool:
    return name.startswith(RANK_DIR_PREFIX) or name.startswith(PROC_DIR_PREFIX)


def open_run(path: str | os.PathLike[str]) -> Run:
    """Open a run directory written by dumpcmp (or, where supported, another dumper)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise RunNotFoundError(f"{path}: no such directory")
    if not os.path.isdir(path):
        raise RunNotFoundError(f"{path}: not a directory (give the run directory, the one holding run.json)")
    if not is_dumpcmp_run(path):
        from dumper.sglang_reader import open_sglang_run

        opened = open_sglang_run(path)
        if opened is not None:
            _check_coverage(opened)
            for problem in opened.problems:
                log.warning("%s", problem)
            return opened
        raise RunNotFoundError(f"{path}: no run here (no run.json, no rank-* directories, no SGLang .pt dumps)")
    problems: list[str] = []
    info_data = _read_json(os.path.join(path, RUN_INFO_FILE), problems)
    info = None
    if info_data is None:
        problems.append(f"{path}: run.json is missing (the run's first process never finished starting?)")
    else:
        try:
            info = RunInfo.from_json(info_data)
        except (KeyError, ValueError, TypeError) as exc:
            raise RunFormatError(f"{os.path.join(path, RUN_INFO_FILE)}: invalid ({exc})") from None
        if info.schema_version > SCHEMA_VERSION:
            raise RunFormatError(
                f"{path}: written with run schema version {info.schema_version}, this dumpcmp reads up to "
                f"{SCHEMA_VERSION}; upgrade dumpcmp"
            )
    ranks: list[RankContents] = []
    for entry in sorted(os.listdir(path)):
        directory = os.path.join(path, entry)
        if not (_is_rank_dir(entry) and os.path.isdir(directory)):
            continue
        rank_data = _read_json(os.path.join(directory, RANK_INFO_FILE), problems)
        rank_info = None
        if rank_data is not None:
            try:
                rank_info = RankInfo.from_json(rank_data)
            except TypeError as exc:
                problems.append(f"{directory}/{RANK_INFO_FILE}: invalid ({exc})")
        index_path = os.path.join(directory, INDEX_FILE)
        if not os.path.exists(index_path):
            problems.append(f"{entry}: no {INDEX_FILE} (the process never dumped, or died first)")
            records, torn = [], 0
        else:
            records, torn, index_problems = read_index(index_path, source=entry)
            problems.extend(index_problems)
        if info is not None and rank_info is not None and info.run_id and rank_info.run_id != info.run_id:
            problems.append(f"{entry}: left over from an earlier run (run id {rank_info.run_id}); ignored")
            continue
        if rank_info is not None:
            rank = rank_info.rank
        elif records:
            rank = records[0].rank
        else:
            try:
                rank = int(entry.removeprefix(RANK_DIR_PREFIX))
            except ValueError:
                rank = -1
        ranks.append(RankContents(directory=entry, rank=rank, info=rank_info, records=records, torn_lines=torn))
        if rank_info is not None and rank_info.status == "running":
            problems.append(f"{entry}: did not close (still running, or killed); last step {_fmt_step(ranks[-1].last_step)}")
        if rank_info is not None and rank_info.lost:
            lost = ", ".join(f"{reason} x{count}" for reason, count in sorted(rank_info.lost.items()))
            problems.append(f"{entry}: {sum(rank_info.lost.values())} dump call(s) not recorded: {lost}")
        if rank_info is not None and rank_info.status == "failed":
            problems.append(f"{entry}: dumping stopped after an error: {rank_info.error}; last step {_fmt_step(ranks[-1].last_step)}")
    if not ranks:
        raise RunNotFoundError(f"{path}: the run holds no rank directories (nothing was dumped)")
    run = Run(path=path, info=info, ranks=ranks, problems=problems)
    _check_coverage(run)
    for problem in run.problems:
        log.warning("%s", problem)
    return run


def _fmt_step(step: int | None) -> str:
    return "none" if step is None else str(step)


def _check_coverage(run: Run) -> None:
    present = {r.rank for r in run.ranks if not r.directory.startswith(PROC_DIR_PREFIX)}
    expected = set(range(run.world_size))
    missing = sorted(expected - present)
    if missing:
        run.problems.append(f"rank(s) {', '.join(map(str, missing))} of {run.world_size} are absent")
    last_steps = {r.directory: r.last_step for r in run.ranks if r.last_step is not None}
    if last_steps:
        final = max(last_steps.values())
        for directory, last in sorted(last_steps.items()):
            if last < final:
                run.problems.append(f"{directory}: stops at step {last}, other ranks reach step {final}")


def iter_records(run: Run, *, name: str | None = None, step: int | None = None) -> Iterator[IndexRecord]:
    for record in run.records:
        if (name is None or record.name == name) and (step is None or record.step == step):
            yield record
