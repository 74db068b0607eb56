"""The one interface every token aligner implements (see :mod:`aligners`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Protocol, Sequence

if TYPE_CHECKING:
    import torch

# (name, step, tags) -> the unsharded tensor of that run, or None if it was not dumped.
AuxLoader = Callable[[str, int, "dict[str, Any]"], "torch.Tensor | None"]


@dataclass(frozen=True, kw_only=True)
class StepPair:
    """One step of a logical tensor: a target step and the baseline step paired with it.

    Either side is None when that run did not dump the tensor at that step.
    """

    baseline_step: int | None
    target_step: int | None


@dataclass(frozen=True, kw_only=True)
class AlignUnit:
    """One comparison: the steps of each run whose tensors are aligned together.

    A unit with no steps on one side is reported as ``skip`` (present on one side only).
    """

    baseline_steps: tuple[int, ...]
    target_steps: tuple[int, ...]

    @property
    def step(self) -> int:
        """The step the result is reported under: the target's first (else the baseline's)."""
        return self.target_steps[0] if self.target_steps else self.baseline_steps[0]


@dataclass(frozen=True, kw_only=True)
class AlignContext:
    name: str
    tags: dict[str, Any]
    baseline_token_dim: int | None  # index of the 't' dim after unsharding, if annotated
    target_token_dim: int | None
    baseline_aux: AuxLoader | None = None
    target_aux: AuxLoader | None = None


class Aligner(Protocol):
    name: str

    def plan(self, steps: Sequence[StepPair], context: AlignContext) -> list[AlignUnit]:
        """Group step pairs into comparison units, from metadata only."""
        ...

    def align(self, unit: AlignUnit, baseline: Sequence["torch.Tensor"], target: Sequence["torch.Tensor"],
              context: AlignContext) -> tuple["torch.Tensor", "torch.Tensor"]:
        """Turn one unit's per-step tensors into the two tensors to compare."""
        ...
