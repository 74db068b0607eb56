"""Open a run directory: lazily, and honest about what is missing.

    with open_run("RUN") as run:
        for record in run.records:
            tensor = run.load(record)

Opening reads only the JSON (run.json, rank.json, index.jsonl); tensors are read
one at a time when asked for (dumper/loader.py). Whatever is missing or
inconsistent lands in ``run.problems`` (and is logged as a warning) instead of
failing the whole run.
"""

from __future__ import annotations

import gc
import glob
import io
import json
import logging
import os
import time
from typing import Any, Callable, Literal

from dumper.errors import DumpcmpError, RunFormatError, RunNotFoundError
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
    SharedParts,
)
from dumper.index_summary import IndexSummary, load_summary
from dumper.run import RankContents, Run
from dumper.safeio import INDEX_LIMIT, INDEX_LINE_LIMIT, JSON_LIMIT, open_regular, read_text
from dumper.sglang_reader import open_sglang_run

__all__ = ["RankContents", "Run", "is_dumpcmp_run", "open_run", "read_index"]

log = logging.getLogger(__name__)


def _read_json(path: str, problems: list[str], root: str) -> dict[str, Any] | None:
    try:
        data = json.loads(read_text(path, limit=JSON_LIMIT, what="run file", root=root))
    except FileNotFoundError:
        return None
    except DumpcmpError as exc:
        problems.append(f"{exc}; ignored")
        return None
    except (OSError, ValueError, RecursionError) as exc:
        problems.append(f"{path}: unreadable ({exc})")
        return None
    if not isinstance(data, dict):
        problems.append(f"{path}: expected a JSON object")
        return None
    return data


def read_index(path: str, *, source: str, root: str | None = None) -> tuple[list[IndexRecord], int, list[str]]:
    """Parse one index.jsonl; returns records, torn trailing lines, and problems.

    Read line by line, each line bounded (INDEX_LINE_LIMIT): a crafted 2 GB line costs
    a problem, not gigabytes of memory. Complete lines are decoded a batch at a time
    (one JSON array per batch: a million records in one C call per batch instead of a
    Python call per line); a batch that does not decode as exactly its lines' values
    is decoded line by line, so a bad line is named as before.
    """
    records: list[IndexRecord] = []
    problems: list[str] = []
    torn = 0
    shared = SharedParts()
    batch: list[tuple[int, bytes]] = []

    def accept(number: int, raw: bytes | None, data: Any, complete: bool) -> None:
        """One line: its value already decoded (``raw`` None), or its bytes to decode."""
        nonlocal torn
        try:
            if raw is not None:
                data = json.loads(raw)
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            record = IndexRecord.from_json(data, source=source, shared=shared)
        except (ValueError, KeyError, TypeError, RecursionError) as exc:
            if not complete:
                torn += 1
                problems.append(f"{path}: line {number} is torn (the writer stopped mid-line); ignored")
            else:
                problems.append(f"{path}: line {number} is not a valid record ({str(exc)[:200]}); ignored")
            return
        if record.file is not None and (os.sep in record.file or record.file.startswith(".") or "/" in record.file
                                        or "\\" in record.file or "\x00" in record.file):
            problems.append(f"{path}: line {number} points at {record.file!r}, outside its rank directory; ignored")
            return
        records.append(record)

    def flush() -> None:
        if not batch:
            return
        try:
            values = json.loads(b"[" + b",".join(raw for _, raw in batch) + b"]")
        except (ValueError, RecursionError):
            values = None
        if isinstance(values, list) and len(values) == len(batch):
            for (number, _), data in zip(batch, values):
                accept(number, None, data, True)
        else:
            for number, raw in batch:
                accept(number, raw, None, True)
        batch.clear()

    # NOTE: records hold no reference cycles, and each full collection while they are
    # made visits every record read so far: a third or more of reading a million records.
    collecting = gc.isenabled()
    gc.disable()
    try:
        _read_lines(path, root, batch, accept, flush, problems)
    finally:
        if collecting:
            gc.enable()
    return records, torn, problems


def _read_lines(path: str, root: str | None, batch: list[tuple[int, bytes]],
                accept: Callable[[int, bytes | None, Any, bool], None], flush: Callable[[], None],
                problems: list[str]) -> None:
    with io.BufferedReader(open_regular(path, limit=INDEX_LIMIT, what="index", root=root)) as handle:
        number = 0
        while True:
            raw = handle.readline(INDEX_LINE_LIMIT + 1)
            if not raw:
                break
            number += 1
            if len(raw) > INDEX_LINE_LIMIT and not raw.endswith(b"\n"):
                while raw and not raw.endswith(b"\n"):  # skip the rest of the line, bounded reads
                    raw = handle.readline(INDEX_LINE_LIMIT)
                flush()
                problems.append(f"{path}: line {number} is longer than {INDEX_LINE_LIMIT} bytes, not a record; ignored")
                continue
            if raw.endswith(b"\n"):
                batch.append((number, raw))
                if len(batch) >= _BATCH_LINES:
                    flush()
            else:
                flush()
                accept(number, raw, None, False)
        flush()


_BATCH_LINES = 2048


def is_dumpcmp_run(path: str) -> bool:
    if os.path.isfile(os.path.join(path, RUN_INFO_FILE)):
        return True
    try:
        return any(_is_rank_dir(entry) for entry in os.listdir(path))
    except OSError:
        return False


def _is_rank_dir(name: str) -> bool:
    return name.startswith(RANK_DIR_PREFIX) or name.startswith(PROC_DIR_PREFIX)


IndexMode = Literal["records", "summary"]


def open_run(path: str | os.PathLike[str], *, index: IndexMode = "records") -> Run:
    """Open a run directory written by dumpcmp (or, where supported, another dumper).

    ``path`` may also be a glob (``'runs/tp8-node*'``) naming the directories that the
    nodes of one run wrote (each its own ranks): they are opened as one run
    (``open_spread_run``).

    ``index="summary"``: a rank whose index-summary.json matches its index is opened
    with that summary (``RankContents.summary``) and no records (``dumpcmp ls``); the
    other ranks are read as usual (dumper/index_summary.py).
    """
    path = os.fspath(path)
    if not os.path.exists(path) and is_glob(path):
        return open_spread_run(path, index=index)
    return open_run_directory(path, index=index)


def open_run_directory(path: str, *, root: str | None = None, index: IndexMode = "records") -> Run:
    """One run directory; with ``root``, its rank directories are named relative to it (multi-node runs)."""
    if not os.path.exists(path):
        raise RunNotFoundError(f"{path}: no such directory")
    if not os.path.isdir(path):
        raise RunNotFoundError(f"{path}: not a directory (give the run directory, the one holding run.json)")
    if not is_dumpcmp_run(path):
        opened = open_sglang_run(path)
        if opened is not None:
            check_coverage(opened)
            for problem in opened.problems:
                log.warning("%s", problem)
            return opened
        raise RunNotFoundError(f"{path}: no run here (no run.json, no rank-* directories, no SGLang .pt dumps)")
    problems: list[str] = []
    info_data = _read_json(os.path.join(path, RUN_INFO_FILE), problems, path)
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
    prefix = os.path.relpath(path, root) if root is not None else ""
    for entry in sorted(os.listdir(path)):
        directory = os.path.join(path, entry)
        if not (_is_rank_dir(entry) and os.path.isdir(directory)):
            continue
        entry = os.path.join(prefix, entry) if prefix else entry
        rank_data = _read_json(os.path.join(directory, RANK_INFO_FILE), problems, path)
        rank_info = None
        if rank_data is not None:
            try:
                rank_info = RankInfo.from_json(rank_data)
            except (TypeError, ValueError) as exc:
                problems.append(f"{directory}/{RANK_INFO_FILE}: invalid ({exc})")
        index_path = os.path.join(directory, INDEX_FILE)
        summary: IndexSummary | None = None
        records: list[IndexRecord] = []
        torn = 0
        if index == "summary" and os.path.exists(index_path):
            summary = load_summary(directory, source=entry, root=path)
        if summary is not None:
            pass  # records stay unread: the summary says what they hold
        elif not os.path.exists(index_path):
            problems.append(f"{entry}: no {INDEX_FILE} (the process never dumped, or died first)")
        else:
            started = time.perf_counter()
            try:
                records, torn, index_problems = read_index(index_path, source=entry, root=path)
            except DumpcmpError as exc:
                records, torn, index_problems = [], 0, [f"{exc}; ignored"]
            except OSError as exc:
                records, torn, index_problems = [], 0, [f"{index_path}: unreadable ({exc.strerror}); ignored"]
            problems.extend(index_problems)
            # Cost per rank, for ``--verbose`` (issue 23: the reader's cost must stay linear in records).
            log.debug("read %s: %d records in %.2f s", entry, len(records), time.perf_counter() - started)
        if info is not None and rank_info is not None and info.run_id and rank_info.run_id != info.run_id:
            problems.append(f"{entry}: left over from an earlier run (run id {rank_info.run_id}); ignored")
            continue
        if rank_info is not None:
            rank = rank_info.rank
        elif records:
            rank = records[0].rank
        elif summary is not None and summary.rank is not None:
            rank = summary.rank
        else:
            try:
                rank = int(entry.removeprefix(RANK_DIR_PREFIX))
            except ValueError:
                rank = -1
        ranks.append(RankContents(directory=entry, rank=rank, info=rank_info, records=records, torn_lines=torn,
                                  summary=summary))
        if rank_info is not None and rank_info.status == "running":
            problems.append(f"{entry}: did not close (still running, or killed); last step {_fmt_step(ranks[-1].last_step)}")
        if rank_info is not None and rank_info.lost:
            lost = ", ".join(f"{reason} x{count}" for reason, count in sorted(rank_info.lost.items()))
            problems.append(f"{entry}: {sum(rank_info.lost.values())} dump call(s) not recorded: {lost}")
        if rank_info is not None and rank_info.status == "failed":
            problems.append(f"{entry}: dumping stopped after an error: {rank_info.error}; last step {_fmt_step(ranks[-1].last_step)}")
    if not ranks:
        raise RunNotFoundError(f"{path}: the run holds no rank directories (nothing was dumped)")
    run = Run(path=path, info=info, ranks=ranks, problems=problems, root=root or path)
    if root is not None:
        return run  # the caller merges the node directories, then checks coverage
    check_coverage(run)
    for problem in run.problems:
        log.warning("%s", problem)
    return run


def _fmt_step(step: int | None) -> str:
    return "none" if step is None else str(step)


def check_coverage(run: Run) -> None:
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


# ------------------------------------------------------------ a run spread over several directories
def is_glob(path: str) -> bool:
    return glob.has_magic(path)


def open_spread_run(pattern: str, *, index: IndexMode = "records") -> Run:
    """The directories a glob names, opened as the one run their nodes wrote.

    Each node writes its own ranks under its own directory (node-local disks); every
    directory must hold ranks of the same run (run id), no rank twice; ranks that no
    directory holds are reported like the absent ranks of one directory.
    """
    directories = sorted(d for d in glob.glob(pattern) if os.path.isdir(d))
    if not directories:
        raise RunNotFoundError(f"{pattern}: no directory matches this pattern")
    if len(directories) == 1:
        return open_run_directory(directories[0], index=index)
    root = os.path.commonpath([os.path.abspath(d) for d in directories])
    parts = [open_run_directory(os.path.abspath(d), root=root, index=index) for d in directories]
    for part in parts:
        if part.format != "dumpcmp":
            raise RunFormatError(f"{part.path}: only dumpcmp runs can be spread over several directories")
    run_ids: dict[str, str] = {}
    for part in parts:
        ids = [part.info.run_id] if part.info is not None else [r.info.run_id for r in part.ranks if r.info is not None]
        for run_id in filter(None, ids):
            run_ids.setdefault(run_id, part.path)
    if len(run_ids) > 1:
        shown = "; ".join(f"{run_id} in {where}" for run_id, where in sorted(run_ids.items())[:3])
        raise RunFormatError(f"{pattern}: the directories hold different runs ({shown}); give the directories of one "
                             "run (its nodes share one run id: dumpcmp run --run-id ID on every node)")
    owners: dict[int, str] = {}
    problems = [problem for part in parts for problem in part.problems]
    for part in parts:
        for rank in part.ranks:
            if rank.directory.split(os.sep)[-1].startswith(PROC_DIR_PREFIX):
                continue
            if rank.rank in owners:
                raise RunFormatError(f"{pattern}: rank {rank.rank} is in both {owners[rank.rank]} and {part.path}; "
                                     "a node directory may hold each rank once")
            owners[rank.rank] = part.path
    info = next((part.info for part in parts if part.info is not None), None)
    ranks = sorted((rank for part in parts for rank in part.ranks), key=lambda r: (r.rank, r.directory))
    run = Run(path=pattern, info=info, ranks=ranks, problems=problems, root=root,
              directories=tuple(part.path for part in parts))
    check_coverage(run)
    for problem in run.problems:
        log.warning("%s", problem)
    return run
