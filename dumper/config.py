"""Dumper configuration, from ``DUMPCMP_*`` environment variables or from code.

``DUMPCMP_DIR`` alone turns dumping on. The others (all optional):

==========================  ===========================================================
DUMPCMP_DIR                 run directory; dumping is on when it is set
DUMPCMP_MODE                ``tensor`` (default) or ``stats`` (index only, no data files)
DUMPCMP_FILTER              filter expression, see :mod:`dumper.filters`
DUMPCMP_QUEUE_MB            bytes waiting for the writer before dump() blocks (default 1024)
DUMPCMP_FILE_MB             target size of one data file (default 256)
DUMPCMP_FLUSH_MB            how far the writer runs ahead of the disk (default 1024; ``0``: no steady flush)
DUMPCMP_GRAPH_MB            device memory for dumps under CUDA graphs, all graphs together (default 1024)
DUMPCMP_OVERWRITE           ``1``: replace an earlier run's files for the same rank
DUMPCMP_RUN_ID              identifies one run across its processes (``dumpcmp run`` sets it)
DUMPCMP_ENABLE              ``0``: configured but off until ``dumper.enable()``
DUMPCMP_COLLECTIVES         ``0``: do not trace torch.distributed collectives (default on)
DUMPCMP_AGAINST             baseline run: write stats only until a record disagrees with it
DUMPCMP_ESCALATE_STEPS      with DUMPCMP_AGAINST: steps written with tensor data (default 2)
DUMPCMP_ONLINE_RTOL         with DUMPCMP_AGAINST: one tolerance for every dtype (default per dtype)
DUMPCMP_GRAFT               graft plan directory (``dumpcmp run --graft``): graft points return the baseline's value
DUMPCMP_PATCH               patch files to apply in every process (``os.pathsep``-separated)
DUMPCMP_REQUIRE_ENGINES     tests only: a missing engine fails instead of skipping
==========================  ===========================================================
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Any, Literal, Mapping

from dumper.errors import ConfigError
from dumper.filters import DumpFilter, parse_filter

Mode = Literal["tensor", "stats"]
MODES: tuple[str, ...] = ("tensor", "stats")

KNOWN_ENV = (
    "DUMPCMP_DIR",
    "DUMPCMP_MODE",
    "DUMPCMP_FILTER",
    "DUMPCMP_QUEUE_MB",
    "DUMPCMP_FILE_MB",
    "DUMPCMP_FLUSH_MB",
    "DUMPCMP_GRAPH_MB",
    "DUMPCMP_OVERWRITE",
    "DUMPCMP_RUN_ID",
    "DUMPCMP_ENABLE",
    "DUMPCMP_COLLECTIVES",
    "DUMPCMP_AGAINST",
    "DUMPCMP_ESCALATE_STEPS",
    "DUMPCMP_ONLINE_RTOL",
    "DUMPCMP_PATCH",
    "DUMPCMP_GRAFT",
    "DUMPCMP_REQUIRE_ENGINES",
    "DUMPCMP_COMMAND",
)


@dataclass(frozen=True, kw_only=True)
class DumpConfig:
    dir: str | None = None
    mode: Mode = "tensor"
    filter: DumpFilter = DumpFilter()
    queue_bytes: int = 1024 << 20
    file_bytes: int = 256 << 20
    # Data files are written back to disk as they are written; data further than this
    # behind the writer is waited for and dropped from the page cache (dumper/steady_flush.py). 0: off.
    flush_bytes: int = 1024 << 20
    # Static device buffers of dumps under CUDA-graph capture (dumper/cudagraph.py).
    graph_bytes: int = 1024 << 20
    overwrite: bool = False
    run_id: str | None = None
    enable: bool = True
    collectives: bool = True  # trace torch.distributed collectives (dumper/collectives.py)
    command: tuple[str, ...] = ()
    # Online divergence (dumper/online.py): compare stats with this baseline run as it goes.
    against: str | None = None
    escalate_steps: int = 2
    online_rtol: float | None = None
    # Grafting (dumper/graft.py): the plan directory graft points read the baseline's values from.
    graft: str | None = None

    def __post_init__(self) -> None:
        if self.against is not None and self.mode != "tensor":
            raise ConfigError("DUMPCMP_AGAINST needs DUMPCMP_MODE=tensor: it writes tensor data from the first divergence")
        if self.escalate_steps < 1:
            raise ConfigError(f"DUMPCMP_ESCALATE_STEPS={self.escalate_steps} must be at least 1")
        if self.mode not in MODES:
            raise ConfigError(f"unknown dump mode {self.mode!r}; valid modes: {', '.join(MODES)}")
        for name, size in (("queue_bytes", self.queue_bytes), ("file_bytes", self.file_bytes),
                           ("graph_bytes", self.graph_bytes)):
            if isinstance(size, bool) or not isinstance(size, int) or not 0 < size <= 1 << 40:
                raise ConfigError(f"{name}={size!r} must be a whole number of bytes between 1 and 2**40")
        if isinstance(self.flush_bytes, bool) or not isinstance(self.flush_bytes, int) or not 0 <= self.flush_bytes <= 1 << 40:
            raise ConfigError(f"flush_bytes={self.flush_bytes!r} must be a whole number of bytes between 0 (off) and 2**40")

    @property
    def active(self) -> bool:
        return self.dir is not None and self.enable

    def with_changes(self, **changes: Any) -> "DumpConfig":
        return replace(self, **changes)


def _parse_bool(name: str, text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"{name}={text!r} is not a boolean; use 1 or 0")


_MB_MAX = 1 << 20  # a size setting above a tebibyte is a typo (1e400 is inf)


def _parse_mb(name: str, text: str) -> int:
    # NOTE: nan and inf passed the old ``<= 0`` test, then raised OverflowError/ValueError
    # in int() at import, killing the engine; a ConfigError only turns dumping off.
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"{name}={text[:40]!r} is not a number of megabytes (e.g. {name}=512)") from None
    if not 0 < value <= _MB_MAX or int(value * (1 << 20)) < 1:  # false for nan
        raise ConfigError(f"{name}={text[:40]!r} must be a size in megabytes above 0 and at most {_MB_MAX} "
                          f"(e.g. {name}=512)")
    return int(value * (1 << 20))


def _parse_int(name: str, text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ConfigError(f"{name}={text[:40]!r} is not a whole number (e.g. {name}=2)") from None
    if not 0 < value <= 1 << 20:
        raise ConfigError(f"{name}={text[:40]!r} must be between 1 and {1 << 20} (e.g. {name}=2)")
    return value


def _parse_rtol(name: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise ConfigError(f"{name}={text!r} is not a tolerance; use a non-negative number, e.g. {name}=1e-3")
    return value


def unknown_env_names(environ: Mapping[str, str]) -> list[str]:
    return sorted(k for k in environ if k.startswith("DUMPCMP_") and k not in KNOWN_ENV)


def config_from_env(environ: Mapping[str, str] | None = None) -> DumpConfig:
    """Build a config from ``DUMPCMP_*`` variables; raises ConfigError on a bad value."""
    env = os.environ if environ is None else environ
    unknown = unknown_env_names(env)
    if unknown:
        raise ConfigError(
            f"unknown setting {unknown[0]}; valid DUMPCMP_* variables: {', '.join(KNOWN_ENV)}"
        )
    mode = env.get("DUMPCMP_MODE", "tensor").strip() or "tensor"
    if mode not in MODES:
        raise ConfigError(f"DUMPCMP_MODE={mode!r} is not a mode; valid modes: {', '.join(MODES)}")
    command = tuple(env["DUMPCMP_COMMAND"].split("\x1f")) if env.get("DUMPCMP_COMMAND") else ()
    return DumpConfig(
        dir=env.get("DUMPCMP_DIR") or None,
        mode=mode,  # type: ignore[arg-type]
        filter=parse_filter(env.get("DUMPCMP_FILTER", "")),
        queue_bytes=_parse_mb("DUMPCMP_QUEUE_MB", env["DUMPCMP_QUEUE_MB"]) if "DUMPCMP_QUEUE_MB" in env else 1024 << 20,
        file_bytes=_parse_mb("DUMPCMP_FILE_MB", env["DUMPCMP_FILE_MB"]) if "DUMPCMP_FILE_MB" in env else 256 << 20,
        flush_bytes=(0 if env.get("DUMPCMP_FLUSH_MB", "").strip() == "0"
                     else _parse_mb("DUMPCMP_FLUSH_MB", env["DUMPCMP_FLUSH_MB"]) if "DUMPCMP_FLUSH_MB" in env else 1024 << 20),
        graph_bytes=_parse_mb("DUMPCMP_GRAPH_MB", env["DUMPCMP_GRAPH_MB"]) if "DUMPCMP_GRAPH_MB" in env else 1024 << 20,
        overwrite=_parse_bool("DUMPCMP_OVERWRITE", env.get("DUMPCMP_OVERWRITE", "0")),
        run_id=env.get("DUMPCMP_RUN_ID") or launcher_run_id(env),
        enable=_parse_bool("DUMPCMP_ENABLE", env.get("DUMPCMP_ENABLE", "1")),
        command=command,
        collectives=_parse_bool("DUMPCMP_COLLECTIVES", env.get("DUMPCMP_COLLECTIVES", "1")),
        against=env.get("DUMPCMP_AGAINST") or None,
        escalate_steps=_parse_int("DUMPCMP_ESCALATE_STEPS", env["DUMPCMP_ESCALATE_STEPS"]) if env.get("DUMPCMP_ESCALATE_STEPS") else 2,
        online_rtol=_parse_rtol("DUMPCMP_ONLINE_RTOL", env["DUMPCMP_ONLINE_RTOL"]) if env.get("DUMPCMP_ONLINE_RTOL") else None,
        graft=env.get("DUMPCMP_GRAFT") or None,
    )


def check_user_settings(environ: Mapping[str, str]) -> None:
    """Raise ConfigError for a misspelled or invalid ``DUMPCMP_*`` setting (``dumpcmp run`` checks before starting)."""
    unknown = unknown_env_names(environ)
    if unknown:
        import difflib

        close = difflib.get_close_matches(unknown[0], KNOWN_ENV, n=1)
        suggestion = f"did you mean {close[0]}? " if close else ""
        raise ConfigError(f"unknown setting {unknown[0]} in the environment; {suggestion}"
                          f"valid DUMPCMP_* variables: {', '.join(KNOWN_ENV)}")
    config_from_env({k: v for k, v in environ.items() if k.startswith("DUMPCMP_")})


def launcher_run_id(environ: Mapping[str, str]) -> str | None:
    """A run id every rank of one launch shares, from the launcher's environment (None if there is none).

    NOTE: the ranks of a multi-node run write to their own node's disk, so they cannot
    agree on a run id through a shared run.json; the launcher already gave them one:
    torchrun's rendezvous id (TORCHELASTIC_RUN_ID, the same on every node) or Slurm's
    job and step ids. ``dumpcmp run --run-id ID`` (DUMPCMP_RUN_ID) always wins.
    """
    elastic = environ.get("TORCHELASTIC_RUN_ID", "").strip()
    if elastic and elastic.lower() != "none":
        return _safe_id(f"torchelastic-{elastic}")
    job = environ.get("SLURM_JOB_ID", "").strip()
    if job:
        step = environ.get("SLURM_STEP_ID", "").strip()
        return _safe_id(f"slurm-{job}" + (f".{step}" if step else ""))
    return None


def _safe_id(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)[:64]
