"""Online divergence: compare each record's stats with a baseline run while dumping.

A target run given a baseline (``DUMPCMP_AGAINST=RUN``, ``dumpcmp run --against RUN``)
writes only stats (index lines, no tensor data) while its records agree with the
baseline's, and full tensor data from the first record that does not, for
``DUMPCMP_ESCALATE_STEPS`` steps (that step included). The rank's ``rank.json`` says
where and why it escalated (``escalation``).

The decision runs on the writer thread, after the stats are computed: the engine
thread pays nothing beyond what a stats run pays. The baseline is read lazily, with
``json`` alone (this module runs inside the engine: no yaml, no comparator), and only
this rank's own index: a record is compared when the baseline has the same identity
(name, step, tags) on the same rank with the same shape; any other record stays
stats-only and counts as ``not_compared``. Only the first divergence escalates:
records after the window are stats-only again and no longer compared.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
from dataclasses import dataclass
from typing import Any

from dumper.errors import ConfigError, DumpcmpError
from dumper.format import INDEX_FILE, RUN_INFO_FILE, TensorStats, rank_dir_name
from dumper.safeio import INDEX_LIMIT, INDEX_LINE_LIMIT, JSON_LIMIT, open_regular, read_text

log = logging.getLogger(__name__)

# Relative tolerance on l2 and abs_mean (and on mean, scaled by abs_mean) per dtype:
# a few units in the last place of the dtype, since sharded and unsharded runs sum in
# different orders. The coarser dtype of the two records decides.
DEFAULT_RTOL: dict[str, float] = {
    "float64": 1e-9,
    "float32": 1e-4,
    "float16": 5e-3,
    "bfloat16": 2e-2,
    "float8_e4m3fn": 1.25e-1,
    "float8_e5m2": 2.5e-1,
}
# Integers and bools (token ids, expert ids, masks) must agree exactly.
EXACT_RTOL = 0.0
DEFAULT_ESCALATE_STEPS = 2

StatsKey = tuple[str, int, str]


def record_key(name: str, step: int, tags: dict[str, Any]) -> StatsKey:
    """Name, step and tags as one hashable key (tags in a canonical JSON form)."""
    return (name, step, json.dumps(tags, sort_keys=True, separators=(",", ":"), default=str))


def validate_baseline(path: str) -> str:
    """Check that ``path`` holds a run (``run.json`` and at least one rank index); returns it absolute."""
    run_dir = os.path.abspath(path)
    if not os.path.isdir(run_dir):
        raise ConfigError(f"--against {path}: no such directory; give the run directory of a baseline run")
    try:
        info = json.loads(read_text(os.path.join(run_dir, RUN_INFO_FILE), limit=JSON_LIMIT, what="run.json",
                                    root=run_dir, error=ConfigError))
    except (OSError, ValueError, RecursionError):
        raise ConfigError(
            f"--against {path} is not a dumpcmp run (no readable {RUN_INFO_FILE}); "
            "record a baseline first, e.g. dumpcmp run --mode stats --dir BASELINE -- CMD"
        ) from None
    if not isinstance(info, dict) or "schema_version" not in info:
        raise ConfigError(f"--against {path}: {RUN_INFO_FILE} is not a dumpcmp run.json")
    if not any(os.path.isfile(os.path.join(run_dir, name, INDEX_FILE))
               for name in os.listdir(run_dir) if name.startswith("rank-")):
        raise ConfigError(f"--against {path} holds no rank index ({rank_dir_name(0)}/{INDEX_FILE}); the baseline run dumped nothing")
    return run_dir


@dataclass(frozen=True, kw_only=True)
class OnlineConfig:
    against: str  # the baseline run directory
    escalate_steps: int = DEFAULT_ESCALATE_STEPS
    rtol: float | None = None  # None: per dtype (DEFAULT_RTOL)

    def __post_init__(self) -> None:
        if self.escalate_steps < 1:
            raise ConfigError(f"escalate steps must be at least 1, not {self.escalate_steps}")
        if self.rtol is not None and not (math.isfinite(self.rtol) and self.rtol >= 0):
            raise ConfigError(f"online rtol must be a non-negative number, not {self.rtol}")


@dataclass(frozen=True, kw_only=True)
class Escalation:
    """Where a rank started writing tensor data, and why."""

    seq: int
    step: int
    name: str
    tags: dict[str, Any]
    reason: str
    until_step: int  # last step written with tensor data

    def to_json(self) -> dict[str, Any]:
        return {"seq": self.seq, "step": self.step, "name": self.name, "tags": self.tags,
                "reason": self.reason, "until_step": self.until_step}


def rtol_for(dtype: str, other_dtype: str | None = None) -> float:
    """The default tolerance of the coarser of two dtypes."""
    def one(name: str) -> float:
        return DEFAULT_RTOL.get(name, EXACT_RTOL)

    return max(one(dtype), one(other_dtype)) if other_dtype is not None else one(dtype)


def stats_disagreement(target: TensorStats, baseline: dict[str, Any], *, rtol: float) -> str | None:
    """Why two records' stats disagree (l2, mean, abs_mean, NaN/Inf counts), or None."""
    for count in ("nan", "inf"):
        if (target.nan if count == "nan" else target.inf) != baseline.get(count, 0):
            return f"{count} count {getattr(target, count)} vs baseline {baseline.get(count, 0)}"
    base_abs = baseline.get("abs_mean")
    scale = max(abs(target.abs_mean or 0.0), abs(base_abs or 0.0))
    for stat in ("l2", "abs_mean", "mean"):
        ours, theirs = getattr(target, stat), baseline.get(stat)
        if ours is None or theirs is None:
            if ours is not theirs:
                return f"{stat} {ours} vs baseline {theirs}"
            continue
        # NOTE: the mean can be ~0 while the tensor is not: judge it on the abs_mean's scale.
        reference = scale if stat == "mean" else max(abs(ours), abs(theirs))
        difference = abs(float(ours) - float(theirs))
        if difference > rtol * reference and difference > 0.0:
            ratio = f", ratio {ours / theirs:.4g}" if theirs else ""
            return (f"{stat} {ours:.6g} vs baseline {theirs:.6g} (relative difference "
                    f"{difference / reference:.3g} > rtol {rtol:g}{ratio})")
    return None


class OnlineMonitor:
    """One rank's comparison against the baseline; used by the writer thread only."""

    def __init__(self, config: OnlineConfig, *, rank: int) -> None:
        self.config = config
        self.rank = rank
        self.escalation: Escalation | None = None
        self.compared = 0
        self.not_compared = 0
        self.data_records = 0
        self._baseline: dict[StatsKey, tuple[list[int], str, dict[str, Any]]] | None = None
        self.problem: str | None = None

    def _load(self) -> dict[StatsKey, tuple[list[int], str, dict[str, Any]]]:
        if self._baseline is not None:
            return self._baseline
        baseline: dict[StatsKey, tuple[list[int], str, dict[str, Any]]] = {}
        path = os.path.join(self.config.against, rank_dir_name(self.rank), INDEX_FILE)
        try:
            # NOTE: this runs on the engine's writer thread and at exit: a FIFO or a device
            # here used to hang the engine; bounded lines keep a crafted index from eating memory.
            with io.TextIOWrapper(io.BufferedReader(open_regular(path, limit=INDEX_LIMIT, what="baseline index",
                                                                 root=self.config.against)),
                                  encoding="utf-8", errors="replace") as handle:
                while line := handle.readline(INDEX_LINE_LIMIT):
                    try:
                        data = json.loads(line)
                        key = record_key(data["name"], int(data["step"]), data.get("tags") or {})
                        baseline[key] = (list(data["shape"]), str(data.get("dtype", "")), data.get("stats") or {})
                    except (ValueError, KeyError, TypeError, RecursionError):
                        continue  # a torn last line, or a foreign one: not comparable
        except OSError as exc:
            self.problem = f"baseline index {path} not readable ({exc.strerror}): nothing compared on rank {self.rank}"
            log.warning("dumpcmp: %s", self.problem)
        except DumpcmpError as exc:
            self.problem = f"baseline index not usable ({exc}): nothing compared on rank {self.rank}"
            log.warning("dumpcmp: %s", self.problem)
        self._baseline = baseline
        return baseline

    def in_window(self, step: int) -> bool:
        return self.escalation is not None and self.escalation.step <= step <= self.escalation.until_step

    def keep_data(self, *, seq: int, step: int, name: str, tags: dict[str, Any], shape: tuple[int, ...],
                  dtype: str, stats: TensorStats) -> bool:
        """Whether this record's tensor data should be written; escalates at the first disagreement."""
        if self.escalation is None:
            reason = self._compare(step=step, name=name, tags=tags, shape=shape, dtype=dtype, stats=stats)
            if reason is not None:
                self.escalation = Escalation(seq=seq, step=step, name=name, tags=dict(tags), reason=reason,
                                             until_step=step + self.config.escalate_steps - 1)
                log.warning("dumpcmp: rank %d diverges from %s at step %d, %s %s: %s; writing tensor data "
                            "through step %d", self.rank, self.config.against, step, name, tags, reason,
                            self.escalation.until_step)
        keep = self.in_window(step)
        self.data_records += keep
        return keep

    def _compare(self, *, step: int, name: str, tags: dict[str, Any], shape: tuple[int, ...], dtype: str,
                 stats: TensorStats) -> str | None:
        found = self._load().get(record_key(name, step, tags))
        if found is None or tuple(found[0]) != tuple(shape):
            self.not_compared += 1
            return None
        self.compared += 1
        base_shape, base_dtype, base_stats = found
        rtol = self.config.rtol if self.config.rtol is not None else rtol_for(dtype, base_dtype)
        return stats_disagreement(stats, base_stats, rtol=rtol)

    def to_json(self) -> dict[str, Any]:
        """The ``online`` object of rank.json."""
        return {
            "against": self.config.against,
            "escalate_steps": self.config.escalate_steps,
            "rtol": self.config.rtol,
            "compared": self.compared,
            "not_compared": self.not_compared,
            "data_records": self.data_records,
            "problem": self.problem,
        }
