"""The ``none`` aligner: step N of the target is compared with its paired baseline step, as is."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from aligners.base import AlignContext, AlignUnit, StepPair

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
              context: AlignContext) -> tuple["torch.Tensor", "torch.Tensor"]:
        (baseline_tensor,), (target_tensor,) = baseline, target
        return baseline_tensor, target_tensor
