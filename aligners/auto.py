"""``--aligner auto``: pick the token aligner from the runs' token metadata, and say why.

The two runs' per-step token metadata (the presets dump it at the engine's step entry:
``input_ids``, ``positions``, ``token_req_ids``/``req_ids`` with ``seq_lens`` or
``extend_lens``, ``num_tokens_per_dp_rank``) tell whether both runs processed the same
tokens at every paired step:

- the same tokens at every step, laid out alike: ``none`` (today's default, step by step);
  but when the runs name their requests otherwise (SGLang's random rids), ``by_request``
  with the requests matched by input ids, so that the request-id dumps compare renamed;
- the same tokens at every step, laid out differently (DP-attention padding, another
  DP split): ``concat_steps``;
- other step boundaries or batch composition (another scheduler, ``max_num_seqs``,
  chunked prefill, a preemption): ``by_request``, matching tokens by (request, position);
  when the runs do not share request ids, the target's requests are matched to the
  baseline's by their input ids (aligners/requests.py);
- batched differently, but without request metadata: ``concat_steps`` if the tokens
  in step order agree, else ``none`` with a reason that says what to dump.

Only small integer metadata is read, once per step; the choice and its reason go into
the report.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

from aligners.base import AuxLoader, Side, TokenKey
from aligners.errors import MissingMetadataError
from aligners.metadata import MetadataNames, StepTokens, read_step_tokens
from dumper.errors import DumpcmpError

Chosen = Literal["none", "concat_steps", "by_request"]

WHAT_TO_DUMP = ("dump the request metadata (the presets' metadata entries: input_ids, positions, token_req_ids, "
                "seq_lens) or use --aligner by_request")


@dataclass(frozen=True, kw_only=True)
class AutoChoice:
    """What ``auto`` picked, why, and (by_request) how the target's requests map to the baseline's."""

    aligner: Chosen
    reason: str
    # target request id -> baseline request id, when the runs do not share ids (matched by input ids)
    request_map: tuple[tuple[int, int], ...] = ()
    # concat_steps with one comparison per step: the runs' steps hold the same tokens
    per_step: bool = False

    def describe(self) -> str:
        return f"auto: {self.reason}"

    def make(self, names: MetadataNames | None = None):
        """The chosen aligner, with the target's requests renamed to the baseline's ids where matched."""
        from aligners import get_aligner
        from aligners.by_request import ByRequestAligner

        if self.aligner == "by_request":
            return ByRequestAligner(names, request_map=dict(self.request_map), per_target_step=True)
        if self.aligner == "concat_steps" and self.per_step:
            from aligners.concat_steps import ConcatStepsAligner

            return ConcatStepsAligner(names, per_step=True)
        return get_aligner(self.aligner, metadata=names)


@dataclass(frozen=True, kw_only=True)
class StepView:
    """One step of one run, as far as its metadata tells: the real tokens, and how the rows are laid out."""

    step: int
    table: StepTokens
    positions: tuple[int, ...] | None  # of the real tokens, in order
    input_ids: tuple[int, ...] | None  # of the real tokens, in order

    @property
    def layout(self) -> tuple[int | None, tuple[int, ...] | None]:
        """Rows and real tokens per DP rank (None for one DP rank): equal layouts give equal shapes."""
        counts = self.table.num_tokens_per_dp_rank
        return self.table.local_rows, counts if counts is not None and len(counts) > 1 else None

    @property
    def keys(self) -> tuple[TokenKey, ...] | None:
        return self.table.keys


@dataclass(frozen=True, kw_only=True)
class RunView:
    side: Side
    steps: dict[int, StepView]
    problem: str | None  # why some step's metadata could not be read (None: all read)

    @property
    def keyed(self) -> bool:
        return bool(self.steps) and all(v.keys is not None for v in self.steps.values())

    @property
    def has_input_ids(self) -> bool:
        return bool(self.steps) and all(v.input_ids is not None for v in self.steps.values())


def read_run(aux: AuxLoader, steps: Sequence[int], names: MetadataNames, side: Side) -> RunView:
    """Every step's token metadata of one run; steps whose metadata is missing, unreadable or inconsistent are left out.

    NOTE: a metadata file that cannot be read is no reason to stop the comparison: that
    tensor's own result reports it; auto only loses that step's evidence.
    """
    views: dict[int, StepView] = {}
    problem: str | None = None
    for step in steps:
        try:
            try:
                table = read_step_tokens(aux, step, names=names, side=side, aligner="auto", need_keys=True)
            except MissingMetadataError:
                table = read_step_tokens(aux, step, names=names, side=side, aligner="auto", need_keys=False)
            found = aux(names.positions, step, {})
            found = aux(names.position_ids, step, {}) if found is None else found
            view = StepView(step=step, table=table, positions=_real(found, table),
                            input_ids=_real(aux(names.input_ids, step, {}), table))
        except DumpcmpError as exc:
            problem = problem or str(exc)
            continue
        views[step] = view
    return RunView(side=side, steps=views, problem=problem)


def _real(tensor, table: StepTokens) -> tuple[int, ...] | None:
    if tensor is None or table.local_real_rows is None:
        return None
    values = [int(v) for v in tensor.reshape(-1).tolist()]
    if len(values) != table.local_rows:
        return None
    return tuple(values[row] for row in table.local_real_rows)


def choose(baseline: RunView, target: RunView, *, offset: int) -> AutoChoice:
    """The aligner for two runs' metadata; ``offset``: baseline step = target step + offset."""
    for run in (baseline, target):
        if not run.steps:
            why = f" ({run.problem})" if run.problem else ""
            return AutoChoice(aligner="none", reason=f"none: the {run.side} run has no usable token metadata{why}, "
                                                     "so steps are compared as dumped")
        if run.problem:
            # An aligner that needs every step's metadata would stop on it: compare as dumped, say why.
            return AutoChoice(aligner="none", reason=f"none: the {run.side} run's token metadata is incomplete "
                                                     f"({run.problem}), so steps are compared as dumped")
    pairs = [(baseline.steps[t + offset], view) for t, view in sorted(target.steps.items()) if t + offset in baseline.steps]
    if not pairs:
        return AutoChoice(aligner="none", reason="none: the runs' token metadata share no step")
    shared_ids = _ids(target) <= _ids(baseline) if baseline.keyed and target.keyed else False
    difference = next((d for d in (_difference(b, t, shared_ids) for b, t in pairs) if d is not None), None)
    if difference is None and baseline.keyed and target.keyed:
        difference = _recomputed(baseline, target, offset)
    if difference is None and baseline.keyed and target.keyed and not shared_ids:
        renamed = _renamed_requests(baseline, target, len(pairs))
        if renamed is not None:
            return renamed
    if difference is None:
        relaid = next(((b, t) for b, t in pairs if b.layout != t.layout), None)
        if relaid is None:
            return AutoChoice(aligner="none", reason=f"none: both runs hold the same tokens at each of {len(pairs)} "
                                                     "steps, laid out alike")
        b, t = relaid
        return AutoChoice(aligner="concat_steps", per_step=True, reason=(
            f"concat_steps, step by step: the same tokens at every step, laid out differently (step {t.step}: "
            f"{_layout_text(b)} in the baseline, {_layout_text(t)} in the target)"))
    if baseline.keyed and target.keyed:
        from aligners.requests import match_requests

        matched = match_requests(baseline, target)
        return AutoChoice(aligner="by_request", reason=f"by_request: {difference}{matched.describe()}",
                          request_map=matched.request_map)
    if baseline.has_input_ids and target.has_input_ids and _stream(baseline) == _stream(target):
        return AutoChoice(aligner="concat_steps", reason=(
            f"concat_steps: {difference}, and without request ids in both runs; the tokens in step order agree"))
    lacking = "baseline" if not baseline.keyed else "target"
    return AutoChoice(aligner="none", reason=(
        f"none: {difference}: the runs were batched differently, but the {lacking} run's metadata does not say "
        f"which request each token belongs to; {WHAT_TO_DUMP}"))


def _renamed_requests(baseline: RunView, target: RunView, steps: int) -> AutoChoice | None:
    """The same tokens at every step, but the runs name their requests otherwise (SGLang's random rids).

    NOTE: compared step by step, the request-id dumps themselves would fail; ``by_request``
    (one comparison per target step, as ``none`` makes) compares them renamed to the
    baseline's ids. None when the requests cannot be matched by input ids.
    """
    from aligners.requests import match_requests

    matched = match_requests(baseline, target)
    if not matched.request_map:
        return None
    return AutoChoice(aligner="by_request", reason=(
        f"by_request: both runs hold the same tokens at each of {steps} steps{matched.describe()}"),
        request_map=matched.request_map)


def _ids(run: RunView) -> set[int]:
    return {request for view in run.steps.values() for request, _ in view.keys or ()}


def _difference(baseline: StepView, target: StepView, shared_ids: bool) -> str | None:
    """How two paired steps' real tokens differ, in words; None when they are the same tokens."""
    b_count, t_count = baseline.table.num_real, target.table.num_real
    where = (f"step {target.step}" if baseline.step == target.step
             else f"target step {target.step} (baseline step {baseline.step})")
    if b_count != t_count:
        return f"{where} holds {_tokens(b_count)} in the baseline, {t_count} in the target"
    # NOTE: input ids are no evidence here: a run that diverged generates other tokens at
    # the same positions, and that is for the comparison to find, not a batching difference.
    # With ids of one scheme, the requests themselves; else which tokens share a request.
    requests = ((tuple(r for r, _ in baseline.keys or ()), tuple(r for r, _ in target.keys or ())) if shared_ids
                else (_grouping(baseline.keys), _grouping(target.keys)))
    for what, b, t in (("positions", baseline.positions, target.positions), ("requests", *requests)):
        if b is not None and t is not None and b != t:
            return f"{where} holds {_tokens(b_count)} in both runs, of other {what}"
    return None


def _tokens(count: int) -> str:
    return "1 token" if count == 1 else f"{count} tokens"


def _grouping(keys: tuple[TokenKey, ...] | None) -> tuple[int, ...] | None:
    """Which tokens of a step belong to one request, whatever the ids: each request numbered by first appearance."""
    if keys is None:
        return None
    order: dict[int, int] = {}
    return tuple(order.setdefault(request, len(order)) for request, _ in keys)


def _recomputed(baseline: RunView, target: RunView, offset: int) -> str | None:
    """A step only one run has, holding tokens the other run computed at its paired steps (a preempted request)."""
    for run, other, shift in ((target, baseline, offset), (baseline, target, -offset)):
        unpaired = [view for step, view in sorted(run.steps.items()) if step + shift not in other.steps]
        if not unpaired:
            continue
        held = {key for view in other.steps.values() for key in (view.keys or ())}
        for view in unpaired:
            if any(key in held for key in view.keys or ()):
                return (f"{run.side} step {view.step}, which the {other.side} run does not have, holds tokens the "
                        f"{other.side} computed at other steps (a request recomputed)")
    return None


def _stream(run: RunView) -> tuple[int, ...]:
    return tuple(i for _, view in sorted(run.steps.items()) for i in (view.input_ids or ()))


def _layout_text(view: StepView) -> str:
    counts = view.table.num_tokens_per_dp_rank
    ranks = f"{len(counts)} DP ranks, " if counts is not None and len(counts) > 1 else ""
    return f"{ranks}{view.table.local_rows} rows for {view.table.num_real} tokens"


__all__ = ["AutoChoice", "RunView", "StepView", "WHAT_TO_DUMP", "choose", "read_run"]
