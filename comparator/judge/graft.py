"""Reading a grafted run: which results were grafted, and what the graft did downstream.

A target run made with ``dumpcmp run --graft-from`` flags the records whose value the
engine took from the baseline (index field ``graft``). Compared with that baseline:

- a grafted tensor is marked as such: it agrees by construction, so it is no evidence;
- the divergence after the graft point is **gone** (nothing fails after it: the grafted
  sites explain everything downstream), **moved** (the first failure after it is at
  another site: an independent divergence, named), or **unchanged** (the first failure
  comes before the graft point, or is a grafted site at a step that was not grafted:
  the problem is elsewhere, or was not grafted where it arises).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Sequence

if TYPE_CHECKING:
    from comparator.results import TensorResult

Outcome = Literal["gone", "moved", "unchanged"]
TensorKey = tuple[str, int, tuple[tuple[str, str], ...]]


@dataclass(frozen=True, kw_only=True)
class NextDivergence:
    name: str
    step: int
    tags: dict[str, Any]
    hint: str | None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "step": self.step, "tags": dict(self.tags), "hint": self.hint}


@dataclass(frozen=True, kw_only=True)
class GraftVerdict:
    """What a graft did to the comparison after its first grafted tensor."""

    outcome: Outcome
    graft_point: str  # the first grafted tensor, in execution order
    grafted: int  # how many results were grafted
    detail: str
    next_divergence: NextDivergence | None = None  # the first failure after the graft point (moved, unchanged)

    def to_json(self) -> dict[str, Any]:
        return {"outcome": self.outcome, "graft_point": self.graft_point, "grafted": self.grafted,
                "detail": self.detail,
                "next_divergence": self.next_divergence.to_json() if self.next_divergence is not None else None}


def grafted_keys(records: Sequence[Any]) -> frozenset[TensorKey]:
    """The (name, step, tags) of every record the target engine took from a baseline."""
    from comparator.matching import tags_key

    return frozenset((r.name, r.step, tags_key(r.tags)) for r in records if getattr(r, "graft", None) is not None)


def mark_grafted(results: Sequence[TensorResult], keys: frozenset[TensorKey]) -> list[TensorResult]:
    """The results with ``grafted`` set where the target took the baseline's value."""
    import dataclasses

    return [dataclasses.replace(r, grafted=True) if is_grafted(r, keys) else r for r in results]


def is_grafted(result: TensorResult, keys: frozenset[TensorKey]) -> bool:
    return bool(keys) and any(key in keys for key in result.keys)


def graft_verdict(results: Sequence[TensorResult], keys: frozenset[TensorKey], *,
                  previous: str | None = None) -> GraftVerdict | None:
    """None when nothing compared was grafted; ``results`` in execution order.

    ``previous``: the label of the first divergence without the graft, when known
    (``dumpcmp bisect`` knows it): the same divergence again is ``unchanged``.
    """
    grafted = [index for index, result in enumerate(results) if is_grafted(result, keys)]
    if not grafted:
        return None
    point = results[grafted[0]]
    sites = {(results[i].name, _tags_text(results[i].tags)) for i in grafted}
    failing = next((i for i, r in enumerate(results) if r.status == "fail" and i not in grafted), None)

    def verdict(outcome: Outcome, detail: str, found: NextDivergence | None = None) -> GraftVerdict:
        return GraftVerdict(outcome=outcome, graft_point=point.label, grafted=len(grafted), detail=detail,
                            next_divergence=found)

    if failing is None:
        return verdict("gone", f"every tensor after the graft at {point.label} agrees: "
                       "the grafted value explains what follows")
    first = results[failing]
    found = NextDivergence(name=first.name, step=first.step, tags=dict(first.tags), hint=first.hint)
    if failing < grafted[0]:
        return verdict("unchanged", f"{first.label} diverges before the graft point {point.label}: "
                       "the problem is upstream of it", found)
    if previous is not None and first.label == previous:
        return verdict("unchanged", f"{first.label} diverges as it did without the graft: "
                       f"the problem is not at {point.label}", found)
    if (first.name, _tags_text(first.tags)) in sites:
        return verdict("unchanged", f"{first.label} still diverges at a step that was not grafted: "
                       "graft every step of it (drop step= from --graft)", found)
    return verdict("moved", f"the graft at {point.label} removes that divergence; the next independent one is "
                   f"{first.label}" + (f" ({first.hint})" if first.hint else ""), found)


def _tags_text(tags: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(tags.items()))


__all__ = ["GraftVerdict", "NextDivergence", "graft_verdict", "grafted_keys", "is_grafted", "mark_grafted"]
