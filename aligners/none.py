"""The ``none`` aligner: step N of the target is compared with its paired baseline step, as is.

Only the axes are aligned (``t (h d)`` meets ``t h d``, a transposed layout meets its
original), from the dims names.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from aligners.base import AlignContext, Aligned, AlignUnit, SideAlignment, StepPair
from aligners.steps import check_unit, finish

if TYPE_CHECKING:
    import torch


class NoneAligner:
    name = "none"

    def plan(self, steps: Sequence[StepPair], context: AlignContext) -> list[AlignUnit]:
        return [
            AlignUnit(
                baseline_steps=() if pair.baseline_step is None else (pair.baseline_step,),
                target_steps=() if pair.target_step is None else (pair.target_step,),
            )
            for pair in steps
        ]

    def align(self, unit: AlignUnit, baseline: Sequence["torch.Tensor"], target: Sequence["torch.Tensor"],
              context: AlignContext) -> Aligned:
        if len(baseline) != 1 or len(target) != 1:
            check_unit(self.name, unit, baseline, target)
        (baseline_tensor,), (target_tensor,) = baseline, target
        notes = []
        for steps, tensor, token_dim in ((unit.baseline_steps, baseline_tensor, context.baseline_token_dim),
                                         (unit.target_steps, target_tensor, context.target_token_dim)):
            rows = int(tensor.shape[token_dim]) if token_dim is not None and tensor.dim() > token_dim else 1
            notes.append(SideAlignment(steps=steps, rows=rows, rows_kept=rows))
        tokens = notes[0].rows if context.baseline_token_dim is not None else None
        return finish(self.name, context, baseline_tensor, target_tensor, notes[0], notes[1], tokens=tokens)
