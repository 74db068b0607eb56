"""The ``by_request`` aligner: match tokens by (request id, position), whatever the batching.

Per side, every step's real rows are kept (as ``concat_steps`` does) and each is named
by its token's request id and position, read from the step's token metadata. The
tokens both runs hold are compared in (request id, position) order; tokens one run
holds and the other does not are counted in the result's alignment note (with the
first few named), not dropped silently. Right when the runs order, batch, chunk or
schedule requests differently: another engine, another scheduler, another DP split.

Per-request rows (dims ``r``, e.g. logits) are matched by (request id, position of the
request's last token in that step). Tensors with neither ``t`` nor ``r`` cannot be
matched by request: their steps are concatenated as dumped (the note says so). The
per-DP-rank token counts are compared as the total over all steps.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Sequence

from aligners.base import AlignContext, Aligned, AlignUnit, Side, SideAlignment, StepPair, TokenKey
from aligners.errors import AlignerError
from aligners.metadata import MetadataNames, StepTokens
from aligners.steps import (
    StepTablePlanner, check_unit, concat_plain, finish, is_layout_metadata, keep_real_rows, request_dim,
)

if TYPE_CHECKING:
    import torch

EXAMPLES = 3  # tokens named per side in a note
RowKey = tuple[int, int, int]  # (step, request id, position)


class ByRequestAligner(StepTablePlanner):
    name = "by_request"
    need_keys = True

    def __init__(self, names: MetadataNames | None = None, *, request_map: dict[int, int] | None = None,
                 per_target_step: bool = False) -> None:
        super().__init__(names)
        # target request id -> baseline request id (``auto`` matched them by input ids); applied when planning
        self.request_map = request_map or {}
        # One unit per target step (``auto``), so that results keep the target's execution order
        # and a failure is reported at the step where it starts; else one unit per tensor.
        self.per_target_step = per_target_step

    def plan(self, steps: Sequence[StepPair], context: AlignContext) -> list[AlignUnit]:
        units = self._plan(steps, context)
        if not self.request_map:
            return units
        # NOTE: executors (worker processes too) make their aligner by name: the units carry the map.
        renames = tuple(sorted(self.request_map.items()))
        return [replace(unit, request_map=renames) for unit in units]

    def _plan(self, steps: Sequence[StepPair], context: AlignContext) -> list[AlignUnit]:
        if not self.per_target_step or is_layout_metadata(context.name, self.names):
            # The per-DP-rank counts describe the batching itself: compared as totals over the run.
            return super().plan(steps, context)
        baseline_steps = sorted({p.baseline_step for p in steps if p.baseline_step is not None})
        target_steps = sorted({p.target_step for p in steps if p.target_step is not None})
        if not baseline_steps or not target_steps:
            return super().plan(steps, context)
        where: dict[TokenKey, int] = {}  # each baseline token's first step
        for step in baseline_steps:
            for key in self.table(context, "baseline", step).keys or ():
                where.setdefault(key, step)
        units = []
        for step in target_steps:
            table = self.table(context, "target", step)
            if table.num_real == 0:
                # A dummy pass (an idle DP rank's, SGLang's idle batch): no token to compare, and
                # none only in the target either; dropped whole, as concat_steps drops it.
                continue
            holding = tuple(sorted({where[key] for key in table.keys or () if key in where}))
            units.append(AlignUnit(
                baseline_steps=holding, target_steps=(step,), baseline_partial=True,
                baseline_tokens=tuple(self.table(context, "baseline", s) for s in holding) if holding else (),
                target_tokens=(table,) if holding else (),
            ))
        return units

    def row_keys(self, unit: AlignUnit) -> tuple[tuple[RowKey, ...], tuple[RowKey, ...]] | None:
        """(step, request id, position) of each row ``align`` gives, for tokens and for request rows
        (dims 'r'); the step is the target's. None: a unit without token tables on both sides.

        NOTE: the comparator's routing masks (comparator/judge/downstream.py) name the rows of
        an aligned tensor with these; by_request's rows are in (request, position) order, not
        in the steps' order, and hold only the tokens both runs have.
        """
        if not unit.baseline_tokens or not unit.target_tokens:
            return None
        found = []
        for attribute in ("keys", "request_rows"):
            baseline = {key for table in unit.baseline_tokens for key in getattr(table, attribute) or ()}
            target_step: dict[TokenKey, int] = {}
            for table in unit.target_tokens:
                for key in getattr(table, attribute) or ():
                    target_step.setdefault(key, table.step)
            found.append(tuple((target_step[key], *key) for key in sorted(baseline & target_step.keys())))
        return found[0], found[1]

    def table(self, context: AlignContext, side: Side, step: int) -> StepTokens:
        table = super().table(context, side, step)
        if side != "target" or not self.request_map:
            return table
        return _renamed(table, self.request_map)

    def align(self, unit: AlignUnit, baseline: Sequence["torch.Tensor"], target: Sequence["torch.Tensor"],
              context: AlignContext) -> Aligned:
        import torch

        check_unit(self.name, unit, baseline, target)
        if is_layout_metadata(context.name, self.names):
            totals = [torch.stack([t.sum() for t in tensors]).sum().reshape(1) for tensors in (baseline, target)]
            notes = [SideAlignment(steps=steps, rows=len(steps), rows_kept=1)
                     for steps in (unit.baseline_steps, unit.target_steps)]
            return finish(self.name, context, totals[0], totals[1], notes[0], notes[1], tokens=None,
                          detail="per-DP-rank counts compared as the total over all steps")
        keyed: dict[str, tuple["torch.Tensor", tuple[TokenKey, ...], SideAlignment, int]] = {}
        for side, tensors, steps, tables in (("baseline", baseline, unit.baseline_steps, unit.baseline_tokens),
                                             ("target", target, unit.target_steps, unit.target_tokens)):
            found = self._keyed_rows(side, context, tensors, steps, tables)  # type: ignore[arg-type]
            if found is None:
                break
            keyed[side] = found
        if len(keyed) < 2:
            # Neither a token nor a request dim: nothing to match by request.
            b, b_note = concat_plain(baseline, unit.baseline_steps, None)
            t, t_note = concat_plain(target, unit.target_steps, None)
            return finish(self.name, context, b, t, b_note, t_note, tokens=None,
                          detail="no 't' or 'r' dim: steps concatenated as dumped")
        b_tensor, b_keys, b_note, b_dim = keyed["baseline"]
        t_tensor, t_keys, t_note, t_dim = keyed["target"]
        b_index = _index(self.name, "baseline", context.name, b_keys, first_wins=unit.baseline_partial)
        t_index = _index(self.name, "target", context.name, t_keys)
        common = sorted(b_index.keys() & t_index.keys())
        only_b = [] if unit.baseline_partial else sorted(b_index.keys() - t_index.keys())
        only_t = sorted(t_index.keys() - b_index.keys())
        b_note = _with_only(b_note, only_b)
        t_note = _with_only(t_note, only_t)

        def pick(tensor: "torch.Tensor", index: dict[TokenKey, int], dim: int) -> "torch.Tensor":
            rows = [index[key] for key in common]
            if rows == list(range(int(tensor.shape[dim]))):
                return tensor
            return tensor.index_select(dim, torch.tensor(rows, dtype=torch.long, device=tensor.device))

        target_rows, detail = pick(t_tensor, t_index, t_dim), None
        if unit.request_map and context.name in (self.names.token_req_ids, *self.names.req_ids):
            # NOTE: the runs name the same requests otherwise (matched by input ids): their
            # request-id dumps agree once the target's ids are the baseline's.
            target_rows = _renumbered(target_rows, dict(unit.request_map))
            detail = "the target's request ids renamed to the baseline's (requests matched by input ids)"
        return finish(self.name, context, pick(b_tensor, b_index, b_dim), target_rows, b_note, t_note,
                      tokens=len(common), detail=detail)

    def _keyed_rows(self, side: Side, context: AlignContext, tensors: Sequence["torch.Tensor"], steps: tuple[int, ...],
                    tables: tuple[StepTokens, ...]) -> tuple["torch.Tensor", tuple[TokenKey, ...], SideAlignment, int] | None:
        """The side's rows, concatenated over steps, with the token key of each row; None without t or r dims."""
        token_dim = context.token_dim(side)
        if token_dim is not None:
            kept = keep_real_rows(self.name, side, context.name, tensors, steps, tables, token_dim, self.names)
            keys = tuple(key for table in kept.tables for key in (table.keys or ()))
            if len(keys) != kept.note.rows_kept:
                raise AlignerError(f"{self.name}: {side} {context.name}: {kept.note.rows_kept} real rows but "
                                   f"{len(keys)} token keys in the metadata")
            return kept.tensor, keys, kept.note, token_dim
        dim = request_dim(context, side)
        if dim is None:
            return None
        keys_list: list[TokenKey] = []
        for step, tensor, table in zip(steps, tensors, tables):
            rows = table.request_rows or ()
            if int(tensor.shape[dim]) != len(rows):
                raise AlignerError(f"{self.name}: {side} {context.name} at step {step} has {int(tensor.shape[dim])} "
                                   f"request rows, but the step's metadata names {len(rows)} requests")
            keys_list.extend(rows)
        joined, note = concat_plain(tensors, steps, dim)
        return joined, tuple(keys_list), note, dim


def _index(aligner: str, side: str, name: str, keys: tuple[TokenKey, ...], *,
           first_wins: bool = False) -> dict[TokenKey, int]:
    """Row of each token key; ``first_wins``: a token computed again later (a preempted request) keeps its first row."""
    index: dict[TokenKey, int] = {}
    for row, key in enumerate(keys):
        if key in index and first_wins:
            continue
        if key in index:
            raise AlignerError(f"{aligner}: {side} {name} holds token (request {key[0]}, position {key[1]}) twice "
                               f"(rows {index[key]} and {row}); by_request needs each token once per run")
        index[key] = row
    return index


def _renumbered(tensor: "torch.Tensor", request_map: dict[int, int]) -> "torch.Tensor":
    """Request-id values mapped through ``request_map`` (padding -1 and unknown ids kept)."""
    import torch

    values = [request_map.get(int(v), int(v)) if int(v) >= 0 else int(v) for v in tensor.reshape(-1).tolist()]
    return torch.tensor(values, dtype=tensor.dtype, device=tensor.device).reshape(tensor.shape)


def _renamed(table: StepTokens, request_map: dict[int, int]) -> StepTokens:
    def rename(keys: tuple[TokenKey, ...] | None) -> tuple[TokenKey, ...] | None:
        return None if keys is None else tuple((request_map.get(r, r), p) for r, p in keys)

    return replace(table, keys=rename(table.keys), request_rows=rename(table.request_rows))


def _with_only(note: SideAlignment, only: list[TokenKey]) -> SideAlignment:
    return replace(note, only_here=len(only), only_here_examples=tuple(only[:EXAMPLES]))
