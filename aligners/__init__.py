"""Token aligners: make a baseline and a target tensor cover the same tokens.

Runs of different parallel layouts can hold the same tokens in different places:
DP-attention pads a rank's tokens, a scheduler splits prefill over steps, requests
arrive in another order. An aligner turns each side's *unsharded* per-step tensors
of one logical tensor into a pair of tensors that cover the same tokens.

Interface (every aligner has the same shape, planner then executor)::

    aligner = get_aligner("none")
    units = aligner.plan(steps, context)          # metadata only: which steps go together
    for unit in units:
        baseline, target = aligner.align(unit, baseline_tensors, target_tensors, context)

- ``steps`` is the tensor's list of :class:`StepPair` (a target step and the
  baseline step paired with it), in execution order.
- ``plan`` returns :class:`AlignUnit` s: each is one comparison, covering one or
  more step pairs (``none`` gives one unit per step; ``concat_steps`` one unit for
  all steps of a tensor).
- ``align`` receives the unit's tensors, one per step pair and side, in unit order,
  and returns the two tensors to compare. It may read token metadata
  (``seq_lens``, ``positions``, ``rids``...) of either run through
  ``context.baseline_aux`` / ``context.target_aux``.

The comparator calls ``align`` with one unit's tensors at a time, so memory stays
bounded by one unit. Aligners import torch lazily.
"""

from __future__ import annotations

from aligners.base import AlignContext, Aligner, AlignUnit, AuxLoader, StepPair
from dumper.errors import DumpcmpError


class AlignerError(DumpcmpError):
    """Unknown aligner, or an aligner that cannot align the tensors it was given."""


def _none() -> Aligner:
    from aligners.none import NoneAligner

    return NoneAligner()


def _not_yet(name: str):
    def factory() -> Aligner:
        raise AlignerError(f"aligner {name!r} is not implemented yet; use --aligner none for now")

    return factory


ALIGNERS = {
    "none": _none,
    "concat_steps": _not_yet("concat_steps"),
    "by_request": _not_yet("by_request"),
}


def aligner_names() -> list[str]:
    return list(ALIGNERS)


def get_aligner(name: str) -> Aligner:
    """The aligner called ``name``; raises AlignerError listing the valid names."""
    factory = ALIGNERS.get(name)
    if factory is None:
        raise AlignerError(f"unknown aligner {name!r}; valid aligners: {', '.join(ALIGNERS)}")
    return factory()


__all__ = [
    "ALIGNERS", "AlignContext", "AlignUnit", "Aligner", "AlignerError", "AuxLoader", "StepPair",
    "aligner_names", "get_aligner",
]
