"""Shared by the token aligners: plan every step of a tensor into one unit, and trim rows.

``concat_steps`` and ``by_request`` have the same planner (one unit per tensor, with
each step's token table read from the metadata) and the same first executor stage (per
step, keep the rows that hold real tokens); they differ in how they put the kept rows
together.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

from aligners.axes import align_axes, dim_index, dim_names
from aligners.base import AlignContext, Aligned, AlignmentNote, AlignUnit, Side, SideAlignment, StepPair
from aligners.errors import AlignerError
from aligners.metadata import PRESET, MetadataNames, StepTokens, read_step_tokens

if TYPE_CHECKING:
    import torch

# The dim name of per-request rows (one row per request in the batch: logits, seq lens).
REQUEST_DIM = "r"


class StepTablePlanner:
    """Reads each (run, step)'s token table once, for every tensor of the comparison."""

    name: str
    need_keys: bool

    def __init__(self, names: MetadataNames | None = None) -> None:
        self.names = names or MetadataNames()
        self._tables: dict[tuple[Side, int], StepTokens] = {}

    def table(self, context: AlignContext, side: Side, step: int) -> StepTokens:
        key = (side, step)
        if key not in self._tables:
            self._tables[key] = read_step_tokens(context.aux(side), step, names=self.names, side=side,
                                                 aligner=self.name, need_keys=self.need_keys)
        return self._tables[key]

    def plan(self, steps: Sequence[StepPair], context: AlignContext) -> list[AlignUnit]:
        """One unit holding every step of the tensor on each side, in step order."""
        baseline_steps = tuple(sorted({p.baseline_step for p in steps if p.baseline_step is not None}))
        target_steps = tuple(sorted({p.target_step for p in steps if p.target_step is not None}))
        if not baseline_steps and not target_steps:
            return []
        if not baseline_steps or not target_steps:
            return [AlignUnit(baseline_steps=baseline_steps, target_steps=target_steps)]
        return [AlignUnit(
            baseline_steps=baseline_steps, target_steps=target_steps,
            baseline_tokens=tuple(self.table(context, "baseline", s) for s in baseline_steps),
            target_tokens=tuple(self.table(context, "target", s) for s in target_steps),
        )]


@dataclass(frozen=True, kw_only=True)
class KeptRows:
    """One side's real rows of every step, concatenated along its token dim."""

    tensor: "torch.Tensor"
    tables: tuple[StepTokens, ...]  # of the steps that kept rows, in order
    note: SideAlignment


def check_unit(aligner: str, unit: AlignUnit, baseline: Sequence["torch.Tensor"], target: Sequence["torch.Tensor"]) -> None:
    if len(baseline) != len(unit.baseline_steps) or len(target) != len(unit.target_steps):
        raise AlignerError(f"{aligner}: got {len(baseline)} baseline and {len(target)} target tensors for a unit of "
                           f"{len(unit.baseline_steps)} and {len(unit.target_steps)} steps")
    if len(unit.baseline_tokens) != len(unit.baseline_steps) or len(unit.target_tokens) != len(unit.target_steps):
        raise AlignerError(f"{aligner}: the unit carries no token tables; plan it with {aligner}'s own plan()")


def keep_real_rows(aligner: str, side: Side, name: str, tensors: Sequence["torch.Tensor"], steps: tuple[int, ...],
                   tables: tuple[StepTokens, ...], token_dim: int, names: MetadataNames) -> KeptRows:
    """Per step, the rows that hold real tokens (padding and dummy passes dropped), concatenated."""
    import torch

    kept: list[torch.Tensor] = []
    kept_tables: list[StepTokens] = []
    layouts: list[str] = []
    dummy: list[int] = []
    rows = padding = 0
    for step, tensor, table in zip(steps, tensors, tables):
        num_rows = int(tensor.shape[token_dim])
        found = table.real_rows(num_rows)
        if found is None:
            advice = ""
            if table.num_tokens_per_dp_rank is None:
                advice = (f"; if these are DP-gathered rows, dump {names.num_tokens_per_dp_rank!r} "
                          f"(as {PRESET} does)")
            raise AlignerError(
                f"{aligner}: {side} {name} at step {step} has {num_rows} rows along its token dim, but the step's "
                f"token metadata accounts for {table.explain()} rows{advice}"
            )
        layout, real = found
        rows += num_rows
        padding += num_rows - len(real)
        layouts.append(layout)
        if not real:
            dummy.append(step)
            continue
        if len(real) == num_rows:
            kept.append(tensor)
        else:
            kept.append(tensor.index_select(token_dim, torch.tensor(real, dtype=torch.long, device=tensor.device)))
        kept_tables.append(table)
    if kept:
        joined = torch.cat(kept, dim=token_dim) if len(kept) > 1 else kept[0]
    else:
        joined = tensors[0].narrow(token_dim, 0, 0)
    if dummy:
        # Rows of a dummy pass are padding too; count them once, as a dummy step.
        padding -= sum(int(t.shape[token_dim]) for s, t in zip(steps, tensors) if s in dummy)
    note = SideAlignment(steps=steps, rows=rows, rows_kept=int(joined.shape[token_dim]), padding_rows=padding,
                         dummy_steps=tuple(dummy), layouts=tuple(layouts))
    return KeptRows(tensor=joined, tables=tuple(kept_tables), note=note)


def concat_plain(tensors: Sequence["torch.Tensor"], steps: tuple[int, ...], dim: int | None) -> tuple["torch.Tensor", SideAlignment]:
    """Steps concatenated as dumped: along ``dim``, or flattened when there is none."""
    import torch

    if dim is None:
        joined = torch.cat([t.reshape(-1) for t in tensors]) if len(tensors) > 1 else tensors[0]
        rows = kept = len(tensors)
    else:
        joined = torch.cat(list(tensors), dim=dim) if len(tensors) > 1 else tensors[0]
        rows = kept = int(joined.shape[dim])
    return joined, SideAlignment(steps=steps, rows=rows, rows_kept=kept)


def request_dim(context: AlignContext, side: Side) -> int | None:
    return dim_index(context.dims(side), REQUEST_DIM)


def is_layout_metadata(name: str, names: MetadataNames) -> bool:
    """Metadata whose values describe the batching itself: compared as totals, not as dumped."""
    return name == names.num_tokens_per_dp_rank


def real_tokens_per_step(tensors: Sequence["torch.Tensor"], steps: tuple[int, ...]) -> tuple["torch.Tensor", SideAlignment]:
    """A per-DP-rank count tensor -> the real tokens of each step that had any (dummy passes dropped)."""
    import torch

    totals = [(step, int(t.sum())) for step, t in zip(steps, tensors)]
    kept = [total for _, total in totals if total > 0]
    dummy = tuple(step for step, total in totals if total == 0)
    note = SideAlignment(steps=steps, rows=sum(int(t.numel()) for t in tensors), rows_kept=len(kept), dummy_steps=dummy)
    return torch.tensor(kept, dtype=torch.long), note


def finish(aligner: str, context: AlignContext, baseline: "torch.Tensor", target: "torch.Tensor",
           baseline_note: SideAlignment, target_note: SideAlignment, *, tokens: int | None,
           detail: str | None = None) -> Aligned:
    """Axis-align the target to the baseline's layout and wrap up the note."""
    target, axes = align_axes(baseline, target, baseline_dims=context.baseline_dims, target_dims=context.target_dims)
    # The baseline keeps its layout; the target now has it too.
    token_dim = context.baseline_token_dim
    if token_dim is None:
        token_dim = dim_index(context.baseline_dims, "t") if axes is not None else context.target_token_dim
    note = AlignmentNote(aligner=aligner, baseline=baseline_note, target=target_note, tokens=tokens, axes=axes,
                         detail=detail)
    return Aligned(baseline=baseline, target=target, note=note, token_dim=token_dim)


__all__ = ["REQUEST_DIM", "StepTablePlanner", "KeptRows", "check_unit", "concat_plain", "dim_names", "finish",
           "is_layout_metadata", "keep_real_rows", "real_tokens_per_step", "request_dim"]
