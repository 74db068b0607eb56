"""The one interface every token aligner implements (see :mod:`aligners`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Literal, Protocol, Sequence

if TYPE_CHECKING:
    import torch

    from aligners.metadata import StepTokens
    from dumper.dims import DimsSpec

# (name, step, tags) -> the unsharded tensor of that run, or None if it was not dumped.
AuxLoader = Callable[[str, int, "dict[str, Any]"], "torch.Tensor | None"]

Side = Literal["baseline", "target"]


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
    ``baseline_tokens`` / ``target_tokens`` hold the token tables the planner read from
    each run's metadata, one per step in unit order (empty for ``none``): the executor
    needs nothing else, so a unit can be shipped to a worker process as it is.
    """

    baseline_steps: tuple[int, ...]
    target_steps: tuple[int, ...]
    baseline_tokens: tuple["StepTokens", ...] = ()
    target_tokens: tuple["StepTokens", ...] = ()
    # True when the unit is one target step and the baseline steps that hold its tokens
    # (by_request as --aligner auto plans it): those steps hold other steps' tokens too,
    # which are not "only in the baseline", and a token recomputed there counts once.
    baseline_partial: bool = False
    # target request id -> baseline request id, when the runs name their requests otherwise
    # (``auto`` matched them by input ids): the target's request-id dumps are compared renamed.
    request_map: tuple[tuple[int, int], ...] = ()

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
    # The dims annotations after unsharding (e.g. "t (h d) # tp:replicated"); axis
    # alignment reads their names. None when a side is not annotated.
    baseline_dims: DimsSpec | None = None
    target_dims: DimsSpec | None = None

    def token_dim(self, side: Side) -> int | None:
        return self.baseline_token_dim if side == "baseline" else self.target_token_dim

    def dims(self, side: Side) -> DimsSpec | None:
        return self.baseline_dims if side == "baseline" else self.target_dims

    def aux(self, side: Side) -> AuxLoader | None:
        return self.baseline_aux if side == "baseline" else self.target_aux


# A token is identified across runs by (request id, position in its sequence).
TokenKey = tuple[int, int]


@dataclass(frozen=True, kw_only=True)
class SideAlignment:
    """What an aligner did to one run's tensors for one comparison."""

    steps: tuple[int, ...]  # the steps merged into this comparison, in order
    rows: int  # rows along the token dim before alignment, all steps together
    rows_kept: int  # rows compared
    padding_rows: int = 0  # rows trimmed as DP padding (an idle DP rank's token, rows padded to the largest rank)
    dummy_steps: tuple[int, ...] = ()  # steps without a single real token (idle passes), dropped whole
    layouts: tuple[str, ...] = ()  # per step: "packed", "dp_local" or "dp_gathered" (see aligners.metadata)
    only_here: int = 0  # tokens only this run holds (by_request): left out of the comparison, counted here
    only_here_examples: tuple[TokenKey, ...] = ()  # the first few of them, as (request id, position)

    @property
    def steps_merged(self) -> int:
        return len(self.steps)

    def to_json(self) -> dict[str, Any]:
        return {
            "steps": list(self.steps), "steps_merged": self.steps_merged, "rows": self.rows,
            "rows_kept": self.rows_kept, "padding_rows": self.padding_rows, "dummy_steps": list(self.dummy_steps),
            "layouts": list(self.layouts), "only_here": self.only_here,
            "only_here_examples": [list(key) for key in self.only_here_examples],
        }


@dataclass(frozen=True, kw_only=True)
class AlignmentNote:
    """What an aligner did for one comparison: put into each result (table and JSON)."""

    aligner: str
    baseline: SideAlignment
    target: SideAlignment
    tokens: int | None = None  # tokens (or request rows) compared; None without a token dim
    axes: str | None = None  # axis alignment applied to the target, e.g. "'t h d' -> 't (h d)'"
    detail: str | None = None  # anything else worth saying (e.g. how layout metadata was compared)

    @property
    def changed_anything(self) -> bool:
        """False when the tensors were compared exactly as dumped, one step each."""
        return bool(
            self.axes or self.detail
            or any(side.steps_merged > 1 or side.rows != side.rows_kept or side.dummy_steps or side.only_here
                   for side in (self.baseline, self.target))
        )

    def describe(self) -> str:
        """One line for the table, e.g. 'concat_steps: 4 steps merged; target: 5 padding rows trimmed'."""
        parts: list[str] = []
        merged = {self.baseline.steps_merged, self.target.steps_merged}
        if merged != {1}:
            parts.append(
                f"{self.target.steps_merged} steps merged" if len(merged) == 1
                else f"steps merged: baseline {self.baseline.steps_merged}, target {self.target.steps_merged}"
            )
        for label, side in (("baseline", self.baseline), ("target", self.target)):
            done: list[str] = []
            if side.padding_rows:
                done.append(f"{side.padding_rows} padding rows trimmed")
            if side.dummy_steps:
                done.append(f"{len(side.dummy_steps)} dummy steps dropped")
            if side.only_here:
                examples = ", ".join(f"req {r} pos {p}" for r, p in side.only_here_examples)
                done.append(f"{side.only_here} tokens only here ({examples}{', ...' if side.only_here > len(side.only_here_examples) else ''})")
            if done:
                parts.append(f"{label}: " + ", ".join(done))
        if self.tokens is not None and parts:
            parts.append(f"{self.tokens} tokens compared")
        if self.axes:
            parts.append(f"axes {self.axes}")
        if self.detail:
            parts.append(self.detail)
        return f"{self.aligner}: " + ("; ".join(parts) if parts else "as dumped")

    def to_json(self) -> dict[str, Any]:
        return {
            "aligner": self.aligner, "tokens": self.tokens, "axes": self.axes, "detail": self.detail,
            "summary": self.describe(), "baseline": self.baseline.to_json(), "target": self.target.to_json(),
        }


@dataclass(frozen=True, kw_only=True)
class Aligned:
    """An aligner's answer for one unit: the two tensors to compare, and what was done."""

    baseline: "torch.Tensor"
    target: "torch.Tensor"
    note: AlignmentNote
    token_dim: int | None = None  # the token dim of both returned tensors (the baseline's layout)

    def __iter__(self):
        """Unpacks as ``baseline, target`` for callers that need only the tensors."""
        return iter((self.baseline, self.target))


class Aligner(Protocol):
    name: str

    def plan(self, steps: Sequence[StepPair], context: AlignContext) -> list[AlignUnit]:
        """Group step pairs into comparison units, from metadata only.

        Raises MissingMetadataError (an AlignerError) naming the token metadata it lacks.
        """
        ...

    def align(self, unit: AlignUnit, baseline: Sequence["torch.Tensor"], target: Sequence["torch.Tensor"],
              context: AlignContext) -> Aligned:
        """Turn one unit's per-step tensors into the two tensors to compare."""
        ...
