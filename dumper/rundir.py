"""Claiming this process's directory in a run: run.json first, then a rank directory.

Several processes of one run (torchrun ranks, a launcher and its workers) race to
create the same files; creation is exclusive so that exactly one run.json wins and an
earlier run's files are never mixed with this run's.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import time
from typing import Any

from dumper import checksums
from dumper.config import DumpConfig
from dumper.errors import ConfigError, DumpcmpError, RunConflictError
from dumper.format import (
    PROC_DIR_PREFIX,
    RANK_INFO_FILE,
    RUN_INFO_FILE,
    SCHEMA_VERSION,
    TOOL_VERSION,
    RunInfo,
    rank_dir_name,
    write_json_atomic,
)
from dumper.parallel import ParallelInfo
from dumper.safeio import JSON_LIMIT, read_text


def claim_rank_dir(run_dir: str, info: ParallelInfo, config: DumpConfig, run_id: str) -> tuple[str, str]:
    """Create this process's directory, refusing to mix with an earlier run's files.

    Returns the directory and the run id this process belongs to. With an explicit
    run id (``DUMPCMP_RUN_ID``, set by ``dumpcmp run`` or inherited from a parent),
    a run.json of another id is an earlier run. Without one, the process joins the
    run.json it finds (its siblings may have written it) and only an existing
    directory for its own rank counts as an earlier run.
    """
    try:
        os.makedirs(run_dir, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create dump directory {run_dir}: {exc.strerror}") from None
    if not os.access(run_dir, os.W_OK):
        raise ConfigError(f"dump directory {run_dir} is not writable")
    run_info_path = os.path.join(run_dir, RUN_INFO_FILE)
    run_info = RunInfo(
        schema_version=SCHEMA_VERSION,
        tool_version=TOOL_VERSION,
        run_id=run_id,
        command=list(config.command) or list(sys.argv),
        mode=config.mode,
        start_time=time.time(),
        checksum=checksums.DEFAULT,
    )
    if not _create_exclusive_json(run_info_path, run_info.to_json()):
        existing_id = _read_json(run_info_path).get("run_id")
        if config.run_id is not None and existing_id != config.run_id:
            if not config.overwrite:
                raise RunConflictError(
                    f"{run_dir} already holds an earlier run (run id {existing_id}); "
                    "choose a new directory or set DUMPCMP_OVERWRITE=1 (dumpcmp run --overwrite)"
                )
            write_json_atomic(run_info_path, run_info.to_json())
        elif config.run_id is None and existing_id:
            run_id = existing_id
    rank_dir = os.path.join(run_dir, rank_dir_name(info.rank))
    try:
        os.mkdir(rank_dir)
        return rank_dir, run_id
    except FileExistsError:
        pass
    owner = _read_json(os.path.join(rank_dir, RANK_INFO_FILE))
    # NOTE: a process forked after its parent started writing inherits the parent's rank
    # and run id, but not an explicit DUMPCMP_RUN_ID; it is the same run all the same.
    forked_from_owner = owner.get("pid") == os.getppid() and owner.get("host") == socket.gethostname()
    same_run = owner.get("run_id") == run_id and (config.run_id is not None or forked_from_owner)
    if same_run:
        # A sibling process of this run already holds this rank (e.g. a launcher and
        # its worker, both rank 0, or a forked child): keep both, keyed by process id.
        proc_dir = os.path.join(run_dir, f"{PROC_DIR_PREFIX}{os.getpid()}")
        os.makedirs(proc_dir, exist_ok=True)
        return proc_dir, run_id
    if not config.overwrite:
        raise RunConflictError(
            f"{rank_dir} already holds an earlier run's files for rank {info.rank}; "
            "choose a new directory or set DUMPCMP_OVERWRITE=1 (dumpcmp run --overwrite)"
        )
    if owner.get("status") == "running" and owner.get("host") == socket.gethostname() and _alive(owner.get("pid")):
        raise RunConflictError(
            f"{rank_dir} belongs to process {owner.get('pid')}, which is still dumping into it; "
            "DUMPCMP_OVERWRITE never removes a live process's files: choose a new directory")
    shutil.rmtree(rank_dir)
    os.mkdir(rank_dir)
    return rank_dir, run_id


def _alive(pid: Any) -> bool:
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0 or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_json(path: str) -> dict[str, Any]:
    """A run file's JSON object, or ``{}``: never blocks on a FIFO, never reads a huge file (engine thread)."""
    try:
        data = json.loads(read_text(path, limit=JSON_LIMIT, what="run file"))
    except (OSError, ValueError, RecursionError, DumpcmpError):
        return {}
    return data if isinstance(data, dict) else {}


def _create_exclusive_json(path: str, data: dict[str, Any]) -> bool:
    """Create ``path`` with full content, or return False if it already exists."""
    tmp = f"{path}.new-{os.getpid()}"
    write_json_atomic(tmp, data)
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        os.unlink(tmp)
