"""The run directory ``dumpcmp run`` writes into, and what ``--overwrite`` may remove.

``--overwrite`` replaces an earlier run, and only that: every entry of the directory
must be a file or folder a dumpcmp run writes (run.json with dumpcmp's fields, rank
and process folders holding only index, rank info, data and trace files, their
temporary names, the observer check). One entry anything else (a README, a
``src/`` folder, a symlink, a ``run.json`` of another tool) and nothing is removed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat

from dumper.errors import ConfigError
from dumper.format import PROC_DIR_PREFIX, RANK_DIR_PREFIX, RUN_INFO_FILE

# Names the writer, the collective trace, the fingerprint, the index summary and the atomic JSON writes
# create in a rank folder.
_RANK_FILE = re.compile(
    r"((rank|fingerprint|index-summary)\.json(\.tmp-\d+)?|index\.jsonl|collectives\.jsonl|data-\d{6}\.safetensors(\.tmp)?)\Z")
_RANK_DIR = re.compile(rf"({re.escape(RANK_DIR_PREFIX)}\d{{5,}}|{re.escape(PROC_DIR_PREFIX)}\d+)\Z")
_TOP_TEMP = re.compile(r"run\.json\.(tmp|new)-\d+\Z")
_OBSERVER_DIR = "observer"  # comparator/cli/observer.py: --verify-observer's outputs
_OBSERVER_FILE = re.compile(r"(check\.json(\.tmp)?|dumping-(on|off)\..+)\Z")
_RUN_JSON_LIMIT = 1 << 20  # a run.json is a few hundred bytes; a bigger one is not ours


def foreign_entry(run_dir: str) -> str | None:
    """The first entry under ``run_dir`` that no dumpcmp run wrote (a relative path), or None."""
    for entry in sorted(os.listdir(run_dir)):
        path = os.path.join(run_dir, entry)
        mode = os.lstat(path).st_mode
        if entry == RUN_INFO_FILE:
            if not (stat.S_ISREG(mode) and _is_run_json(path)):
                return entry
        elif _TOP_TEMP.match(entry):
            if not stat.S_ISREG(mode):
                return entry
        elif _RANK_DIR.match(entry) and stat.S_ISDIR(mode):
            found = _foreign_in(path, lambda name, m: stat.S_ISREG(m) and _RANK_FILE.match(name) is not None)
            if found is not None:
                return f"{entry}/{found}"
        elif entry == _OBSERVER_DIR and stat.S_ISDIR(mode):
            found = _foreign_observer(path)
            if found is not None:
                return f"{entry}/{found}"
        else:
            return entry
    return None


def _foreign_in(directory: str, allowed) -> str | None:
    for name in sorted(os.listdir(directory)):
        if not allowed(name, os.lstat(os.path.join(directory, name)).st_mode):
            return name
    return None


def _foreign_observer(directory: str) -> str | None:
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        mode = os.lstat(path).st_mode
        if name == "minimal-run" and stat.S_ISDIR(mode):
            found = foreign_entry(path)
            if found is not None:
                return f"{name}/{found}"
        elif not (stat.S_ISREG(mode) and _OBSERVER_FILE.match(name)):
            return name
    return None


def _is_run_json(path: str) -> bool:
    if os.path.getsize(path) > _RUN_JSON_LIMIT:
        return False
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        return False
    return (isinstance(data, dict) and isinstance(data.get("schema_version"), int)
            and isinstance(data.get("run_id"), str) and "tool_version" in data)


def prepare_directory(run_dir: str, *, overwrite: bool) -> None:
    """Create ``run_dir``, or empty it of an earlier run's files when ``overwrite`` (only those)."""
    if os.path.lexists(run_dir) and not os.path.isdir(run_dir):
        raise ConfigError(f"--dir {run_dir} exists and is not a directory")
    if os.path.isdir(run_dir):
        entries = os.listdir(run_dir)
        if entries:
            if not overwrite:
                raise ConfigError(f"{run_dir} is not empty; choose a new directory or pass --overwrite to replace the run in it")
            foreign = foreign_entry(run_dir)
            if foreign is not None:
                raise ConfigError(
                    f"--overwrite removes only what a dumpcmp run wrote, and {run_dir} holds {foreign!r}; "
                    "refusing to clear it (choose a new --dir, or move that file away)")
            for entry in entries:
                path = os.path.join(run_dir, entry)
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path)
                else:
                    os.unlink(path)
    try:
        os.makedirs(run_dir, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create --dir {run_dir}: {exc.strerror}") from None
    if not os.access(run_dir, os.W_OK):
        raise ConfigError(f"--dir {run_dir} is not writable")
