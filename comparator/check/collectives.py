"""Ranks that ran a different sequence of collectives than their group's peers.

Every member of a process group must call the same collectives on it, in the same
order: a rank that skips an all-reduce the others run (a condition evaluated
differently on one rank) would hang a real engine, or, where the engine uses another
group for it, reduce something else. From the collective trace (collectives.jsonl,
dumper/collectives.py): per group (its global ranks), each member's sequence of
``(step, op)`` is compared with the first member's, and the first difference is
reported with the tensor it precedes.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from comparator.check.context import CheckContext
from comparator.check.findings import CheckCoverage, Finding
from dumper.collectives import COLLECTIVES_FILE, read_collectives

Call = dict[str, Any]


def check_collectives(context: CheckContext) -> tuple[CheckCoverage, list[Finding]]:
    import os

    traced: dict[int, list[Call]] = {}
    for contents in context.run.ranks:
        rank_dir = os.path.join(context.run.root, contents.directory)
        if os.path.exists(os.path.join(rank_dir, COLLECTIVES_FILE)):
            traced[contents.rank] = read_collectives(rank_dir)
    if not traced:
        why = ("one process: no collectives" if context.run.world_size <= 1
               else "the run holds no collective trace (collectives.jsonl)")
        return CheckCoverage(check="collectives", checked=0, unit="collective groups", not_run=why), []
    groups: dict[tuple[int, ...], dict[int, list[Call]]] = {}
    for rank, calls in traced.items():
        for call in calls:
            ranks = (call.get("group") or {}).get("ranks")
            if not isinstance(ranks, list):
                continue  # a group whose ranks the tracer could not tell
            groups.setdefault(tuple(int(r) for r in ranks), {}).setdefault(rank, []).append(call)
    findings = []
    for members, by_rank in sorted(groups.items()):
        for rank in members:  # a member that never called it
            if rank in traced:
                by_rank.setdefault(rank, [])
        found = _compare_members(context, members, by_rank)
        if found is not None:
            findings.append(found)
    return CheckCoverage(check="collectives", checked=len(groups), unit="collective groups"), findings


def _compare_members(context: CheckContext, members: tuple[int, ...], by_rank: dict[int, list[Call]]) -> Finding | None:
    """The first member whose sequence differs from its peers' (from the majority's, when there is one)."""
    sequences: dict[tuple[Any, ...], list[int]] = {}
    for rank in sorted(by_rank):
        sequences.setdefault(tuple(_key(call) for call in by_rank[rank]), []).append(rank)
    if len(sequences) == 1:
        return None
    classes = sorted(sequences.values(), key=lambda ranks: (-len(ranks), ranks[0]))
    majority = len(classes[0]) * 2 > len(by_rank)
    reference, odd = classes[0][0], classes[1][0]
    expected, calls = by_rank[reference], by_rank[odd]
    index = next(i for i in range(max(len(expected), len(calls)))
                 if i >= len(expected) or i >= len(calls) or _key(expected[i]) != _key(calls[i]))
    theirs = expected[index] if index < len(expected) else None
    mine = calls[index] if index < len(calls) else None
    return _finding(context, members, reference, odd, index, theirs, mine, len(expected), len(calls), majority)


def _key(call: Call) -> tuple[Any, ...]:
    return (call.get("step"), call["op"])


def _describe(call: Call | None) -> str:
    if call is None:
        return "nothing"
    caller = call.get("caller") or []
    where = f" from {caller[0]}" if isinstance(caller, list) and caller else ""
    shape = call.get("shape")
    return f"{call['op']}{list(shape) if isinstance(shape, list) else ''} at step {call.get('step')}{where}"


def _finding(context: CheckContext, members: tuple[int, ...], reference: int, rank: int, index: int,
             theirs: Call | None, mine: Call | None, expected: int, got: int, majority: bool) -> Finding:
    axis = ((mine or theirs or {}).get("group") or {}).get("axis")
    group = f"{axis} (ranks {list(members)})" if axis else f"ranks {list(members)}"
    # Placed before the tensor the diverging call precedes on the rank that made it.
    anchor = mine if mine is not None else theirs
    anchor_rank = rank if mine is not None else reference
    order = context.position_after(anchor_rank, anchor["after_seq"]) if anchor is not None else None
    step = anchor.get("step") if anchor is not None else None
    finding = Finding(
        check="collectives", axis=axis, ranks=(reference, rank), step=step if isinstance(step, int) else None,
        value=float(index),
        message=(f"group {group}: ranks {reference} and {rank} ran different collectives on it: call #{index} is "
                 f"{_describe(theirs)} on rank {reference}, {_describe(mine)} on rank {rank} "
                 f"({expected} vs {got} calls in all)"),
        hint=(f"rank {rank} took another path than the rest of its group here" if majority else
              f"one of ranks {reference} and {rank} took another path here (with no majority, the trace cannot "
              f"tell which)") + " (a condition that differs between ranks? a skipped or an extra reduction?)",
    )
    return dataclasses.replace(finding, order=order) if order is not None else finding
