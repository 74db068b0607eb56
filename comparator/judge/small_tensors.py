"""Default limits widened for tensors too small for their noise to average out.

The per-dtype defaults (comparator/judge/limits.py) are set for tensors of many
elements, where ``rel_diff`` is a mean over thousands of squared errors and a rescaling
shows in ``norm_ratio`` far above the rounding noise, which mostly cancels there. On a
handful of elements neither holds: the router logits of one decode token (8 values)
in bf16 between two runs batched differently measured rel_diff 9.3e-4 and norm_ratio
0.974 with nothing wrong, while the same tensor's other steps had a median rel_diff of
3.6e-5. So below :data:`FULL_SIZE` elements the *default* limits on ``rel_diff`` and
the ``norm_ratio`` band widen by ``sqrt(FULL_SIZE / numel)`` (the spread of a mean of
``numel`` samples grows as ``1 / sqrt(numel)``): x2.83 at 8 elements, none at 64 and
above. A doubled tensor still fails by two orders of magnitude (rel_diff 0.2,
norm_ratio 2). Limits a rule writes are taken as written.
"""

from __future__ import annotations

import math

from comparator.judge.limits import RANGE, Limit

FULL_SIZE = 64
WIDENED = ("rel_diff", "norm_ratio")


def size_factor(numel: int) -> float:
    """How much the default limits widen for a tensor of ``numel`` elements (1.0: not at all)."""
    if numel <= 0 or numel >= FULL_SIZE:
        return 1.0
    return math.sqrt(FULL_SIZE / numel)


def widen(limits: dict[str, Limit], defaulted: frozenset[str], numel: int) -> tuple[dict[str, Limit], float]:
    """(the limits a tensor of ``numel`` elements is judged by, the factor applied to its defaults)."""
    factor = size_factor(numel)
    if factor == 1.0 or not defaulted.intersection(WIDENED):
        return limits, 1.0
    return {metric: _scaled(limit, factor) if metric in WIDENED and metric in defaulted else limit
            for metric, limit in limits.items()}, factor


def _scaled(limit: Limit, factor: float) -> Limit:
    if limit.metric in RANGE:
        # NOTE: the band around 1, not the bounds, is what noise sets.
        low = None if limit.low is None else max(0.0, 1.0 - (1.0 - limit.low) * factor)
        high = None if limit.high is None else 1.0 + (limit.high - 1.0) * factor
        return Limit(metric=limit.metric, low=low, high=high)
    high = None if limit.high is None else limit.high * factor
    return Limit(metric=limit.metric, low=limit.low, high=high)
