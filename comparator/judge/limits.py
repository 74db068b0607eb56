"""Limits on metrics, the metrics of each kind of measurement, and the built-in defaults.

Two kinds of measurement are judged against limits (comparator/judge/verdicts.py):

- ``tensor``: metrics of both sides' tensors (comparator/judge/metrics.py);
- ``stats``: from the index's stats and checksums only, when a side was dumped in stats
  mode (comparator/judge/stats_only.py).

A metric is an upper bound, a lower bound or a range by its name, whatever the kind;
the one parser of limits (:func:`make_limit`) serves both, and so do the defaults.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

MeasurementKind = Literal["tensor", "stats"]

LOWER = ("cosine",)
RANGE = ("norm_ratio",)
TENSOR_METRICS = ("rel_diff", "rel_l2", "max_abs", "mean_abs", "max_token_rel_l2", "replica_rel_diff", "cosine",
                  "norm_ratio")
STATS_METRICS = ("norm_ratio", "mean_diff", "abs_mean_diff", "replica_stats_diff")
METRICS: dict[MeasurementKind, tuple[str, ...]] = {"tensor": TENSOR_METRICS, "stats": STATS_METRICS}


@dataclass(frozen=True, kw_only=True)
class Limit:
    metric: str
    low: float | None = None
    high: float | None = None

    def allows(self, value: float) -> bool:
        if math.isnan(value):
            return False
        return (self.low is None or value >= self.low) and (self.high is None or value <= self.high)

    def widened_to(self, value: float) -> "Limit":
        """The narrowest limit of this kind that ``value`` passes (the tolerance that would pass)."""
        if self.metric in RANGE:
            low = value if self.low is None else min(self.low, value)
            high = value if self.high is None else max(self.high, value)
            return Limit(metric=self.metric, low=low, high=high)
        if self.metric in LOWER:
            return Limit(metric=self.metric, low=value)
        return Limit(metric=self.metric, high=value)

    def to_json(self) -> float | list[float | None] | None:
        if self.metric in RANGE:
            return [self.low, self.high]
        return self.low if self.metric in LOWER else self.high

    def describe(self) -> str:
        if self.metric in RANGE:
            return f"{self.metric} in [{self.low:.6g}, {self.high:.6g}]"
        if self.metric in LOWER:
            return f"{self.metric} >= {self.low:.6g}"
        return f"{self.metric} <= {self.high:.6g}"


def _number(metric: str, value: Any) -> float:
    # NOTE: YAML reads `true` as a bool, and bool is an int to float(): refuse it by name.
    if isinstance(value, (bool, list, tuple, dict)) or value is None:
        raise ValueError(f"{metric} takes one number")
    number = float(value)
    if math.isnan(number):
        raise ValueError("NaN is not a limit")
    return number


def make_limit(metric: str, value: Any) -> Limit:
    """The limit a thresholds file writes as ``metric: value``; raises ValueError/TypeError when invalid.

    Ranges are ``[low, high]`` or a number ``x`` for ``[1 - x, 1 + x]``.
    """
    if metric in RANGE:
        if isinstance(value, (list, tuple)):
            if len(value) != 2:
                raise ValueError(f"a range has two bounds, got {len(value)}")
            low, high = _number(metric, value[0]), _number(metric, value[1])
        else:
            spread = _number(metric, value)
            low, high = 1.0 - spread, 1.0 + spread
        if low > high:
            raise ValueError(f"range [{low}, {high}] is empty")
        return Limit(metric=metric, low=low, high=high)
    number = _number(metric, value)
    return Limit(metric=metric, low=number) if metric in LOWER else Limit(metric=metric, high=number)


def _limits(**values: Any) -> dict[str, Limit | None]:
    return {metric: make_limit(metric, value) for metric, value in values.items()}


# NOTE: rel_diff ~ rel_l2^2 / 2 for small errors, so 1e-6 on float32 allows a relative
# L2 error of about 1.4e-3; a doubled tensor has rel_diff 0.2 and norm_ratio 2.
TENSOR_DEFAULTS: dict[str, dict[str, Limit | None]] = {
    "float64": _limits(rel_diff=1e-10, norm_ratio=1e-5, replica_rel_diff=1e-10),
    "float32": _limits(rel_diff=1e-6, norm_ratio=2e-3, replica_rel_diff=1e-6),
    "float16": _limits(rel_diff=1e-4, norm_ratio=1e-2, replica_rel_diff=1e-4),
    "bfloat16": _limits(rel_diff=1e-3, norm_ratio=2e-2, replica_rel_diff=1e-3),
    "float8": _limits(rel_diff=1e-2, norm_ratio=5e-2, replica_rel_diff=1e-2),
    "integer": _limits(max_abs=0, replica_rel_diff=0),
}
BUILTIN_DEFAULTS = TENSOR_DEFAULTS  # the name dumpcmp calibrate knows them by


def _stats_limits(level: float) -> dict[str, Limit | None]:
    return _limits(norm_ratio=level, mean_diff=level, abs_mean_diff=level, replica_stats_diff=level)


# NOTE: pooled shard stats (sqrt of a sum of squares) differ from a whole tensor's stats
# by float64 rounding only, so the limits are set by the dtype's own noise, as for
# tensors; a doubled reduction moves norm_ratio and abs_mean_diff by 100%.
STATS_DEFAULTS: dict[str, dict[str, Limit | None]] = {
    "float64": _stats_limits(1e-6), "float32": _stats_limits(2e-3), "float16": _stats_limits(1e-2),
    "bfloat16": _stats_limits(2e-2), "float8": _stats_limits(5e-2), "integer": _stats_limits(1e-9),
}
DEFAULTS: dict[MeasurementKind, dict[str, dict[str, Limit | None]]] = {"tensor": TENSOR_DEFAULTS,
                                                                      "stats": STATS_DEFAULTS}
# From most to least precise; a pair is judged by its less precise side.
DTYPE_CLASSES = ("float64", "float32", "float16", "bfloat16", "float8", "integer")


def dtype_class(dtype: str) -> str:
    if dtype.startswith("float8"):
        return "float8"
    if dtype in ("float64", "float32", "float16", "bfloat16"):
        return dtype
    return "integer"  # ints and bool are compared exactly


def judged_dtype(baseline_dtype: str, target_dtype: str) -> str:
    """The class whose defaults judge a pair: the less precise side (bf16 vs fp32 -> bf16)."""
    classes = [dtype_class(baseline_dtype), dtype_class(target_dtype)]
    # A float compared with an integer tensor (e.g. one side cast) is judged as the float.
    floats = [c for c in classes if c != "integer"]
    if floats:
        return max(floats, key=DTYPE_CLASSES.index)
    return "integer"
