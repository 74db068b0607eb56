"""Partial-sum shards whose sum is implausible.

``ep:partial`` says each EP rank holds its own experts' share and the tensor is their
sum. Without a baseline the sum's value is unknown, but three patterns are not what
partial sums of independent contributions look like:

- **identical shards**: every rank of the axis holds the same (non-zero) bytes. The
  tensor was already reduced before the dump point; summing the "shards" gives k x the
  value (vLLM's fused MoE path that reduces inside the kernel, a dims annotation that
  does not follow the engine's state). In tensor mode "the same" also covers copies
  within the dtype's replica limit.
- **cancelling shards** (tensor data only): the sum's norm is under
  ``CANCELLING`` x the largest shard's norm. Independent contributions add up in
  quadrature; shards that cancel each other out point at a sign or a stale buffer.
- **one shard wildly larger** than the others: its norm over ``OUTLIER`` x the next
  largest (non-zero) one, e.g. uninitialised memory. A zero shard is fine: an EP rank
  whose experts got no token holds zeros.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import TYPE_CHECKING

from comparator.check.context import CheckContext, PlannedTensor
from comparator.check.findings import CheckCoverage, Finding
from dumper.format import IndexRecord

if TYPE_CHECKING:
    import torch

# NOTE: deliberately loose: healthy partial sums of MoE experts can differ in norm by a
# few hundred times (one token routed to a rank with a small top-k weight against
# sixteen elsewhere); the patterns looked for are off by orders of magnitude more.
CANCELLING = 1e-3
OUTLIER = 1e4


def check_partial_sums(context: CheckContext) -> tuple[CheckCoverage, list[Finding]]:
    checked = 0
    findings: list[Finding] = []
    for planned in context.tensors:
        plan = planned.plan
        if isinstance(plan, Exception):
            continue
        for level, op in enumerate(plan.ops):
            if op.kind != "sum":
                continue
            groups: dict[tuple[int, ...], list[IndexRecord]] = defaultdict(list)
            # NOTE: the copies of a replicated axis are one shard: only the other sum and
            # concat coordinates tell groups apart.
            keep = [i for i, other in enumerate(plan.ops) if i != level and other.kind != "pick"]
            for coords, record in plan.shards:
                groups[tuple(coords[i] for i in keep)].append(record)
            for shards in groups.values():
                if len(shards) < 2 or any(r.stats.nan or r.stats.inf for r in shards):
                    continue
                checked += 1
                found = _judge(context, planned, op.axis, shards)
                if found is not None:
                    findings.append(found)
                    break  # one finding per tensor and axis
    return CheckCoverage(check="partial_sums", checked=checked, unit="partial-sum groups"), findings


def _judge(context: CheckContext, planned: PlannedTensor, axis: str, shards: list[IndexRecord]) -> Finding | None:
    norms = [r.stats.l2 or 0.0 for r in shards]
    ranks = tuple(r.rank for r in shards)
    tensor = planned.tensor
    if max(norms) == 0.0:
        return None

    def finding(message: str, value: float, limit: float | None, hint: str) -> Finding:
        return Finding(check="partial_sums", tensor=tensor.label, name=tensor.name, step=tensor.step,
                       tags=dict(tensor.tags), axis=axis, ranks=ranks, value=value, limit=limit, hint=hint,
                       order=tensor.position, message=message)

    if _identical(context, planned, shards):
        return finding(
            f"{tensor.label} is declared a partial sum over {axis}, but its {len(shards)} shards (ranks "
            f"{', '.join(map(str, ranks))}) hold the same values: summing them gives {len(shards)}x the tensor",
            float(len(shards)), None,
            f"already reduced over {axis} before the dump point: fix the dims (replicated over {axis}, or "
            f"dims that follow the engine's state) or look for a reduction that ran twice")
    ordered = sorted(norms, reverse=True)
    nonzero = [n for n in ordered if n > 0]
    if len(nonzero) >= 2 and nonzero[0] > OUTLIER * nonzero[1]:
        big = ranks[norms.index(nonzero[0])]
        return finding(
            f"{tensor.label}: the partial sum of rank {big} over {axis} has norm {nonzero[0]:.3g}, "
            f"{nonzero[0] / nonzero[1]:.3g}x the next largest shard ({nonzero[1]:.3g})",
            nonzero[0] / nonzero[1], OUTLIER,
            f"rank {big} holds values no partial sum of the others' size explains (uninitialised or stale memory?)")
    if context.stats_only or any(r.file is None for r in shards):
        return None
    total = _sum(context, shards)
    ratio = _norm(total) / ordered[0]
    if ratio < CANCELLING:
        return finding(
            f"{tensor.label}: its partial sums over {axis} cancel out (norm of the sum {ratio:.3g}x the "
            f"largest shard's)", ratio, CANCELLING,
            "independent partial sums add up in quadrature: a shard with a flipped sign, or a stale buffer?")
    return None


def _identical(context: CheckContext, planned: PlannedTensor, shards: list[IndexRecord]) -> bool:
    if all(r.checksum and r.checksum == shards[0].checksum for r in shards):
        return True
    if context.stats_only or any(r.file is None for r in shards):
        return False
    from comparator.judge.metrics import rel_diff

    dtype = shards[0].dtype
    _, limits = context.thresholds.limits_for(planned.tensor.name, planned.tensor.tags, dtype, dtype)
    limit = limits.get("replica_rel_diff")
    bound = limit.high if limit is not None and limit.high is not None else 0.0
    first = context.load(shards[0])
    return all(rel_diff(first, context.load(other)) <= bound for other in shards[1:])


def _sum(context: CheckContext, shards: list[IndexRecord]) -> "torch.Tensor":
    import torch

    total = context.load(shards[0]).to(torch.float64)
    for record in shards[1:]:
        total += context.load(record).to(torch.float64)
    return total


def _norm(tensor: "torch.Tensor") -> float:
    value = float(tensor.norm())
    return value if math.isfinite(value) else math.inf
