"""Match the target's requests to the baseline's when the runs do not share request ids.

Another engine, another id scheme (SGLang's string ``rids``, vLLM's per-run counters)
or requests submitted in another order give the same request other ids in each run.
Each request's tokens, by position, are its identity: a target request is matched to
the unused baseline request with the same input ids (exactly), else the one sharing
the longest common prefix (generated tokens may differ when a run is broken; the
prompt does not). Requests with nothing in common stay unmatched: their tokens are
reported as present in one run only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aligners.auto import RunView

Sequences = dict[int, tuple[int, ...]]  # request id -> its input ids from position 0, as far as contiguous


@dataclass(frozen=True, kw_only=True)
class RequestMatch:
    request_map: tuple[tuple[int, int], ...] = ()  # target id -> baseline id; empty: the ids are shared
    exact: int = 0
    by_prefix: int = 0
    unmatched: int = 0

    def describe(self) -> str:
        if not self.request_map:
            return ""
        parts = [f"{self.exact} exactly"]
        if self.by_prefix:
            parts.append(f"{self.by_prefix} by longest common prefix")
        if self.unmatched:
            parts.append(f"{self.unmatched} unmatched")
        return "; the runs do not share request ids: requests matched by input ids (" + ", ".join(parts) + ")"


def sequences(run: "RunView") -> Sequences:
    """Each request's input ids by position (from 0, up to the first gap), over all steps of the run."""
    tokens: dict[int, dict[int, int]] = {}
    for _, view in sorted(run.steps.items()):
        if view.keys is None or view.input_ids is None:
            continue
        for (request, position), token in zip(view.keys, view.input_ids):
            tokens.setdefault(request, {}).setdefault(position, token)
    found: Sequences = {}
    for request, by_position in tokens.items():
        run_of: list[int] = []
        while len(run_of) in by_position:
            run_of.append(by_position[len(run_of)])
        found[request] = tuple(run_of)
    return found


def ids_are_shared(baseline: Sequences, target: Sequences) -> bool:
    """True when every target request id is a baseline id whose tokens agree on a common first token."""
    if not target or not set(target) <= set(baseline):
        return False
    return all(_common_prefix(baseline[r], seq) > 0 or not seq or not baseline[r] for r, seq in target.items())


def match_requests(baseline_run: "RunView", target_run: "RunView") -> RequestMatch:
    """How the target's request ids map to the baseline's (empty when they are shared or cannot be matched)."""
    baseline, target = sequences(baseline_run), sequences(target_run)
    if not baseline or not target or ids_are_shared(baseline, target):
        return RequestMatch()
    return match_sequences(baseline, target)


def match_sequences(baseline: Sequences, target: Sequences) -> RequestMatch:
    """Exact matches first, then the longest common prefix, each baseline request used once."""
    unused = dict(sorted(baseline.items()))
    mapping: dict[int, int] = {}
    exact = 0
    by_sequence: dict[tuple[int, ...], list[int]] = {}
    for request, seq in unused.items():
        by_sequence.setdefault(seq, []).append(request)
    for request, seq in sorted(target.items()):
        candidates = by_sequence.get(seq)
        if seq and candidates:
            mapping[request] = candidates.pop(0)
            del unused[mapping[request]]
            exact += 1
    by_prefix = 0
    for request, seq in sorted(target.items()):
        if request in mapping or not unused:
            continue
        best = max(unused, key=lambda b: (_common_prefix(unused[b], seq), -b))
        if _common_prefix(unused[best], seq) > 0:
            mapping[request] = best
            del unused[best]
            by_prefix += 1
    # Unmatched requests get ids no baseline request has: their tokens are "only here".
    fresh = max([*baseline, *target, 0]) + 1
    unmatched = 0
    for request in sorted(target):
        if request not in mapping:
            mapping[request] = fresh + unmatched
            unmatched += 1
    return RequestMatch(request_map=tuple(sorted(mapping.items())), exact=exact, by_prefix=by_prefix,
                        unmatched=unmatched)


def _common_prefix(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    length = 0
    for x, y in zip(a, b):
        if x != y:
            break
        length += 1
    return length


__all__ = ["RequestMatch", "Sequences", "ids_are_shared", "match_requests", "match_sequences", "sequences"]
