"""Claiming this process's directory in a run: run.json first, then a rank directory.

Several processes of one run (torchrun ranks, a launcher and its workers) race to
create the same files; creation is exclusive so that exactly one run.json wins and an
earlier run's files are never mixed with this run's.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from typing import Any

from dumper.config import DumpConfig
from dumper.errors import ConfigError, RunConflictError
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
    )
    if not _create_exclusive_json(run_info_path, run_info.to_json()):
        try:
            with open(run_info_path, encoding="utf-8") as handle:
                existing_id = json.load(handle).get("run_id")
        except (OSError, ValueError):
            existing_id = None
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
    try:
        with open(os.path.join(rank_dir, RANK_INFO_FILE), encoding="utf-8") as handle:
            owner = json.load(handle)
    except (OSError, ValueError):
        owner = {}
    same_run = config.run_id is not None and owner.get("run_id") == run_id
    if same_run:
        # A sibling process of this run already holds this rank (e.g. a launcher and
        # its worker, both rank 0): keep both, keyed by process id.
        proc_dir = os.path.join(run_dir, f"{PROC_DIR_PREFIX}{os.getpid()}")
        os.makedirs(proc_dir, exist_ok=True)
        return proc_dir, run_id
    if not config.overwrite:
        raise RunConflictError(
            f"{rank_dir} already holds an earlier run's files for rank {info.rank}; "
            "choose a new directory or set DUMPCMP_OVERWRITE=1 (dumpcmp run --overwrite)"
        )
    shutil.rmtree(rank_dir)
    os.mkdir(rank_dir)
    return rank_dir, run_id


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
