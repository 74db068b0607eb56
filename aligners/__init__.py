"""Token aligners: make a baseline and a target tensor cover the same tokens.

Runs of different parallel layouts can hold the same tokens in different places:
DP-attention pads a rank's tokens, a scheduler splits prefill over steps, requests
arrive in another order. An aligner turns each side's *unsharded* per-step tensors
of one logical tensor into a pair of tensors that cover the same tokens.

Interface (every aligner has the same shape, planner then executor)::

    aligner = get_aligner("none")
    units = aligner.plan(steps, context)          # metadata only: which steps go together
    for unit in units:
        aligned = aligner.align(unit, baseline_tensors, target_tensors, context)
        aligned.baseline, aligned.target, aligned.note   # the tensors to compare, and what was done

- ``steps`` is the tensor's list of :class:`StepPair` (a target step and the
  baseline step paired with it), in execution order.
- ``plan`` returns :class:`AlignUnit` s: each is one comparison, covering one or
  more step pairs (``none`` gives one unit per step; ``concat_steps`` one unit for
  all steps of a tensor).
- ``plan`` reads each run's token metadata (``num_tokens_per_dp_rank``,
  ``token_req_ids``, ``positions``, ``seq_lens``, ``rids``...; names in
  :class:`MetadataNames`) through ``context.baseline_aux`` / ``context.target_aux``
  into the units (:class:`StepTokens` per step), and raises MissingMetadataError
  naming a missing tensor and how to dump it before any big tensor is loaded.
- ``align`` receives the unit's tensors, one per step pair and side, in unit order,
  and returns :class:`Aligned`: the two tensors to compare (the target in the
  baseline's axis layout, see :mod:`aligners.axes`) and an :class:`AlignmentNote`
  (steps merged, padding rows trimmed, dummy steps dropped, tokens on one side
  only) that the comparator puts into each result.

The comparator calls ``align`` with one unit's tensors at a time, so memory stays
bounded by one unit. Aligners import torch lazily.
"""

from __future__ import annotations

from aligners.base import (
    AlignContext, Aligned, Aligner, AlignmentNote, AlignUnit, AuxLoader, SideAlignment, StepPair, TokenKey,
)
from aligners.errors import AlignerError, AxisAlignmentError, MissingMetadataError
from aligners.metadata import MetadataNames, StepTokens


def _none(names: MetadataNames | None) -> Aligner:
    from aligners.none import NoneAligner

    return NoneAligner()


def _concat_steps(names: MetadataNames | None) -> Aligner:
    from aligners.concat_steps import ConcatStepsAligner

    return ConcatStepsAligner(names)


def _by_request(names: MetadataNames | None) -> Aligner:
    from aligners.by_request import ByRequestAligner

    return ByRequestAligner(names)


ALIGNERS = {
    "none": _none,
    "concat_steps": _concat_steps,
    "by_request": _by_request,
}


def aligner_names() -> list[str]:
    return list(ALIGNERS)


def get_aligner(name: str, *, metadata: MetadataNames | str | None = None) -> Aligner:
    """A fresh aligner called ``name``; raises AlignerError listing the valid names.

    ``metadata``: the dump names of the token metadata (or ``"key=name,..."``); see MetadataNames.
    """
    factory = ALIGNERS.get(name)
    if factory is None:
        raise AlignerError(f"unknown aligner {name!r}; valid aligners: {', '.join(ALIGNERS)}")
    names = MetadataNames.parse(metadata) if isinstance(metadata, str) or metadata is None else metadata
    return factory(names)


__all__ = [
    "ALIGNERS", "AlignContext", "AlignUnit", "Aligned", "Aligner", "AlignerError", "AlignmentNote", "AuxLoader",
    "AxisAlignmentError", "MetadataNames", "MissingMetadataError", "SideAlignment", "StepPair", "StepTokens",
    "TokenKey", "aligner_names", "get_aligner",
]
