"""A run's fingerprint: its command, mode, versions, parallel sizes, and what model it ran.

Read from ``run.json`` and each rank's ``rank.json`` and ``fingerprint.json`` only (never
the index), so a report can show where its runs came from at no cost. The model part
(architecture, config hash, weights digest, dtype, quantisation) is what an engine preset
recorded (``dumper.record_model``, dumper/fingerprint.py); comparator/comparability.py
decides from two fingerprints whether comparing the runs means anything.
"""

from __future__ import annotations

import datetime
import json
import os
from dataclasses import dataclass, field
from typing import Any

from dumper.errors import DumpcmpError
from dumper.fingerprint import FINGERPRINT_FILE

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
    # From the ranks' fingerprint.json (None/empty: not recorded, e.g. an older run or SGLang's dumps).
    model: dict[str, Any] | None = None  # the model identity every rank agreed on (see model_conflicts)
    model_conflicts: tuple[str, ...] = ()  # model fields on which this run's ranks disagree
    dumper_version: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    patches: dict[str, str] = field(default_factory=dict)  # patch file -> content hash

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path, "format": self.format, "mode": self.mode, "command": list(self.command),
            "tool_version": self.tool_version, "run_id": self.run_id, "start_time": self.start_time,
            "engine": self.engine, "world_size": self.world_size, "ranks": self.ranks,
            "rank_status": dict(self.rank_status), "parallel": dict(self.parallel), "hosts": list(self.hosts),
            "model": self.model, "model_conflicts": list(self.model_conflicts), "dumper_version": self.dumper_version,
            "env": dict(self.env), "patches": dict(self.patches),
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
    recorded = [fp for fp in (_load(os.path.join(path, e, FINGERPRINT_FILE)) for e in rank_dirs) if fp is not None]
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
        parallel=dict(sorted(parallel.items())), hosts=tuple(sorted(hosts)), **_merge_recorded(recorded),
    )


def _iso_time(start: Any) -> str | None:
    """``run.json``'s start time (seconds since the epoch) as ISO 8601; None when it is not a time."""
    if not isinstance(start, (int, float)) or isinstance(start, bool):
        return None
    try:
        return datetime.datetime.fromtimestamp(float(start), tz=datetime.timezone.utc).isoformat(timespec="seconds")
    except (OverflowError, OSError, ValueError):  # beyond the platform's time_t, or before year 1
        return None


def _merge_recorded(recorded: list[dict[str, Any]]) -> dict[str, Any]:
    """One run's fingerprint from its ranks' fingerprint.json files: the first rank's, and where they disagree."""
    if not recorded:
        return {}
    first = recorded[0]
    models: list[dict[str, Any]] = [fp["model"] for fp in recorded if isinstance(fp.get("model"), dict)]
    model = dict(models[0]) if models else None
    conflicts = sorted({key for other in models[1:] for key in set(model or {}) | set(other)
                        if key != "settings" and (model or {}).get(key) != other.get(key)})
    env: dict[str, Any] = first["env"] if isinstance(first.get("env"), dict) else {}
    patches: dict[str, Any] = first["patches"] if isinstance(first.get("patches"), dict) else {}
    return {
        "model": model, "model_conflicts": tuple(conflicts),
        "dumper_version": first.get("dumper_version") if isinstance(first.get("dumper_version"), str) else None,
        "env": {str(k): str(v) for k, v in env.items()}, "patches": {str(k): str(v) for k, v in patches.items()},
    }
