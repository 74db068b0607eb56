"""The first NaN/Inf in execution order across all ranks, and the collective that spread it.

Read from the index stats (NaN and Inf counts of every record), so stats-mode runs get
it too. A NaN born on one rank reaches its peers through the first collective that
mixes their values: on the origin ranks, the first collective after the first
non-finite tensor whose group holds a rank that was still finite there (from the
collective trace, dumper/collectives.py).
"""

from __future__ import annotations

from typing import Any

from comparator.check.context import CheckContext, PlannedTensor
from comparator.check.findings import CheckCoverage, Finding
from dumper.collectives import read_collectives
from dumper.format import IndexRecord


def check_nonfinite(context: CheckContext) -> tuple[CheckCoverage, list[Finding]]:
    checked = 0
    for planned in context.tensors:
        bad = [r for r in planned.tensor.records if r.stats.nan or r.stats.inf]
        checked += len(planned.tensor.records)
        if bad:
            return (CheckCoverage(check="nonfinite", checked=checked, unit="records"),
                    [_finding(context, planned, bad)])
    return CheckCoverage(check="nonfinite", checked=checked, unit="records"), []


def _finding(context: CheckContext, planned: PlannedTensor, bad: list[IndexRecord]) -> Finding:
    tensor = planned.tensor
    origin = tuple(sorted({r.rank for r in bad}))
    nan, inf = sum(r.stats.nan for r in bad), sum(r.stats.inf for r in bad)
    counts = " and ".join(part for part in (f"{nan} NaN" if nan else "", f"{inf} Inf" if inf else "") if part)
    others = sorted({r.rank for r in tensor.records} - set(origin))
    spread = _spreading_collective(context, bad, origin)
    hint = "the first non-finite value in the run: look at what produced it on " + (
        f"rank {origin[0]}" if len(origin) == 1 else f"ranks {', '.join(map(str, origin))}")
    if spread is not None:
        hint += f"; it reached other ranks through {spread}"
    elif others:
        hint += f"; ranks {', '.join(map(str, others))} were still finite here"
    return Finding(
        check="nonfinite", tensor=tensor.label, name=tensor.name, step=tensor.step, tags=dict(tensor.tags),
        ranks=origin, value=float(nan + inf), order=tensor.position, hint=hint,
        message=f"first NaN/Inf in execution order: {tensor.label} holds {counts} on rank(s) "
                f"{', '.join(map(str, origin))}",
    )


def _spreading_collective(context: CheckContext, bad: list[IndexRecord], origin: tuple[int, ...]) -> str | None:
    """``op(axis) from caller, step S`` of the first collective on an origin rank that mixes in a finite rank."""
    for record in sorted(bad, key=lambda r: r.rank):
        rank_dir = context.rank_dir(record.rank)
        if rank_dir is None:
            continue
        for call in read_collectives(rank_dir):
            if call["after_seq"] < record.seq:
                continue
            ranks = _group_ranks(call)
            if ranks is None or not set(ranks) - set(origin):
                continue
            group = (call.get("group") or {}).get("axis") or f"ranks {ranks}"
            caller = call.get("caller") or []
            where = f" called from {caller[0]}" if isinstance(caller, list) and caller else ""
            return f"{call['op']}({group}) on rank {record.rank} at step {call.get('step')}{where}"
    return None


def _group_ranks(call: dict[str, Any]) -> list[int] | None:
    group = call.get("group") or {}
    ranks = group.get("ranks")
    return [int(r) for r in ranks] if isinstance(ranks, list) else None
