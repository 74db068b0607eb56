"""A run's fingerprint for reports: its command, mode, versions and parallel sizes.

Read from ``run.json`` and each rank's ``rank.json`` only (never the index), so a
report can show where its runs came from at no cost.
"""

from __future__ import annotations

import datetime
import json
import os
from dataclasses import dataclass, field
from typing import Any

from dumper.errors import DumpcmpError

from dumper.format import PROC_DIR_PREFIX, RANK_DIR_PREFIX, RANK_INFO_FILE, RUN_INFO_FILE
from dumper.safeio import JSON_LIMIT, read_text


@dataclass(frozen=True, kw_only=True)
class RunFingerprint:
    path: str
    format: str  # "dumpcmp", "sglang" or "unknown"
    mode: str | None = None
    command: tuple[str, ...] = ()
    tool_version: str | None = None
    run_id: str | None = None
    start_time: str | None = None  # ISO 8601, UTC
    engine: str | None = None
    world_size: int | None = None
    ranks: int = 0
    rank_status: dict[str, int] = field(default_factory=dict)  # status -> number of ranks
    parallel: dict[str, int] = field(default_factory=dict)  # axis -> size (every axis any rank recorded)
    hosts: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path, "format": self.format, "mode": self.mode, "command": list(self.command),
            "tool_version": self.tool_version, "run_id": self.run_id, "start_time": self.start_time,
            "engine": self.engine, "world_size": self.world_size, "ranks": self.ranks,
            "rank_status": dict(self.rank_status), "parallel": dict(self.parallel), "hosts": list(self.hosts),
        }


def _load(path: str) -> dict[str, Any] | None:
    try:
        data = json.loads(read_text(path, limit=JSON_LIMIT, what="run file"))
    except (OSError, ValueError, RecursionError, DumpcmpError):
        return None
    return data if isinstance(data, dict) else None


def read_fingerprint(path: str | os.PathLike[str]) -> RunFingerprint:
    """What run.json and the rank.json files say; best effort, never raises for a bad run."""
    path = os.fspath(path)
    info = _load(os.path.join(path, RUN_INFO_FILE))
    try:
        entries = sorted(os.listdir(path))
    except OSError:
        return RunFingerprint(path=path, format="unknown")
    rank_dirs = [e for e in entries if e.startswith((RANK_DIR_PREFIX, PROC_DIR_PREFIX))]
    if info is None and not rank_dirs:
        sglang = any(e.endswith(".pt") for e in entries) or any(os.path.isdir(os.path.join(path, e)) for e in entries)
        return RunFingerprint(path=path, format="sglang" if sglang else "unknown")
    statuses: dict[str, int] = {}
    parallel: dict[str, int] = {}
    hosts: set[str] = set()
    for entry in rank_dirs:
        rank = _load(os.path.join(path, entry, RANK_INFO_FILE)) or {}
        status = str(rank.get("status", "unknown"))
        statuses[status] = statuses.get(status, 0) + 1
        if rank.get("host"):
            hosts.add(str(rank["host"]))
        for axis, value in (rank.get("parallel") or {}).items():
            if isinstance(value, dict) and isinstance(value.get("size"), int):
                parallel[axis] = max(parallel.get(axis, 1), value["size"])
    info = info or {}
    started = _iso_time(info.get("start_time"))
    return RunFingerprint(
        path=path, format="dumpcmp", mode=info.get("mode"), command=tuple(str(c) for c in info.get("command") or ()),
        tool_version=info.get("tool_version"), run_id=info.get("run_id"), start_time=started,
        engine=info.get("engine"), world_size=info.get("world_size"), ranks=len(rank_dirs), rank_status=statuses,
        parallel=dict(sorted(parallel.items())), hosts=tuple(sorted(hosts)),
    )


def _iso_time(start: Any) -> str | None:
    """``run.json``'s start time (seconds since the epoch) as ISO 8601; None when it is not a time."""
    if not isinstance(start, (int, float)) or isinstance(start, bool):
        return None
    try:
        return datetime.datetime.fromtimestamp(float(start), tz=datetime.timezone.utc).isoformat(timespec="seconds")
    except (OverflowError, OSError, ValueError):  # beyond the platform's time_t, or before year 1
        return None
