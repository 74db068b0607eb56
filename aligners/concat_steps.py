"""The ``concat_steps`` aligner: each run's real token sequence, all steps in one comparison.

Per side, every step's tensor keeps only the rows that hold real tokens (the step's
token metadata says which: DP padding rows and an idle DP rank's padding token go, a
dummy pass goes whole), then the steps are concatenated along the token dim. Right
when both runs process the same tokens in the same order but batch or pad them
differently: DP-attention against TP only (seed 5), idle DP ranks, a prefill split
into chunks over more steps.

Tensors without a token dim ``t``: per-request rows (``r``, e.g. logits) are
concatenated along ``r`` (they carry no padding); anything else is flattened and
concatenated. The per-DP-rank token counts are compared as each step's total.

``auto`` makes it per step (``per_step``) when both runs hold the same tokens at every
step and only lay them out differently: each step is then its own comparison, so a
failure is reported at the step and tensor where it starts. Merged, a bug in the
prefill made every tensor of the run fail at once, and the first of them (the
``input_ids``, whose decode tokens the bug changed) was reported first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from aligners.base import AlignContext, Aligned, AlignUnit, SideAlignment, StepPair
from aligners.metadata import MetadataNames
from aligners.steps import (
    StepTablePlanner, check_unit, concat_plain, finish, is_layout_metadata, keep_real_rows, real_tokens_per_step,
    request_dim,
)

if TYPE_CHECKING:
    import torch


class ConcatStepsAligner(StepTablePlanner):
    name = "concat_steps"
    need_keys = False

    def __init__(self, names: MetadataNames | None = None, *, per_step: bool = False) -> None:
        super().__init__(names)
        self.per_step = per_step

    def plan(self, steps: Sequence[StepPair], context: AlignContext) -> list[AlignUnit]:
        if not self.per_step or is_layout_metadata(context.name, self.names):
            return super().plan(steps, context)
        units = []
        for pair in steps:
            b, t = pair.baseline_step, pair.target_step
            if b is None or t is None:
                units.append(AlignUnit(baseline_steps=() if b is None else (b,), target_steps=() if t is None else (t,)))
                continue
            b_table, t_table = self.table(context, "baseline", b), self.table(context, "target", t)
            if b_table.num_real == 0 and t_table.num_real == 0:
                continue  # a dummy pass on both sides: no token to compare
            units.append(AlignUnit(baseline_steps=(b,), target_steps=(t,), baseline_tokens=(b_table,),
                                   target_tokens=(t_table,)))
        return units

    def align(self, unit: AlignUnit, baseline: Sequence["torch.Tensor"], target: Sequence["torch.Tensor"],
              context: AlignContext) -> Aligned:
        check_unit(self.name, unit, baseline, target)
        if is_layout_metadata(context.name, self.names):
            b, b_note = real_tokens_per_step(baseline, unit.baseline_steps)
            t, t_note = real_tokens_per_step(target, unit.target_steps)
            return finish(self.name, context, b, t, b_note, t_note, tokens=None,
                          detail="per-DP-rank counts compared as each step's real tokens")
        joined: dict[str, tuple["torch.Tensor", SideAlignment]] = {}
        tokens: int | None = None
        for side, tensors, steps, tables in (("baseline", baseline, unit.baseline_steps, unit.baseline_tokens),
                                             ("target", target, unit.target_steps, unit.target_tokens)):
            token_dim = context.token_dim(side)  # type: ignore[arg-type]
            if token_dim is not None:
                kept = keep_real_rows(self.name, side, context.name, tensors, steps, tables, token_dim,  # type: ignore[arg-type]
                                      self.names)
                joined[side] = (kept.tensor, kept.note)
                tokens = kept.note.rows_kept if tokens is None else min(tokens, kept.note.rows_kept)
            else:
                joined[side] = concat_plain(tensors, steps, request_dim(context, side))  # type: ignore[arg-type]
        (b, b_note), (t, t_note) = joined["baseline"], joined["target"]
        return finish(self.name, context, b, t, b_note, t_note, tokens=tokens)
