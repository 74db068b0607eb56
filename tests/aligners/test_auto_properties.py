"""Property tests for ``--aligner auto`` and the input-ids request matcher, on random rebatchings.

Requests of random lengths are scheduled two ways (split, merged, reordered, chunked
prefill, over 1-3 DP ranks, a request preempted and recomputed in one run only, request
ids renamed in one run). Whatever auto picks must compare every target token with the
same token of the baseline, and it must pick ``none`` exactly when both runs batch alike.
"""

from __future__ import annotations

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aligners import MetadataNames
from aligners.auto import choose, read_run
from aligners.requests import match_sequences
from tests.aligners.synthetic import Key, Side, Step, build_side, context, feature, step_pairs
from tests.aligners.test_properties import draw_chunked_schedule

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
NAMES = MetadataNames()


def decide(baseline: Side, target: Side):  # type: ignore[no-untyped-def]
    ctx = context(baseline, target)
    return choose(read_run(ctx.baseline_aux, baseline.steps, NAMES, "baseline"),  # type: ignore[arg-type]
                  read_run(ctx.target_aux, target.steps, NAMES, "target"), offset=0)  # type: ignore[arg-type]


def compare_all(baseline: Side, target: Side, choice, layout: str = "local") -> list[Key]:  # type: ignore[no-untyped-def]
    """Every unit of the chosen aligner, aligned: both sides must hold the same features; the tokens compared."""
    aligner = choice.make(NAMES)
    ctx = context(baseline, target)
    compared: list[Key] = []
    for unit in aligner.plan(step_pairs(baseline, target), ctx):
        if not unit.baseline_steps or not unit.target_steps:
            continue
        aligned = aligner.align(unit, [baseline.local[s] for s in unit.baseline_steps],
                                [getattr(target, layout)[s] for s in unit.target_steps], ctx)
        assert torch.equal(aligned.baseline, aligned.target)
        compared += [key for key in map(_key_of, aligned.target) if key is not None]
    return compared


_FEATURES: dict[bytes, Key] = {}


def _key_of(row: torch.Tensor) -> Key | None:
    """The token whose feature ``row`` is; None for a padding row (compared as dumped under ``none``)."""
    return _FEATURES.get(row.numpy().tobytes())


def _remember(lengths: list[int]) -> None:
    for req, length in enumerate(lengths):
        for pos in range(length + 4):
            _FEATURES[feature((req, pos)).numpy().tobytes()] = (req, pos)


def preempt(data: st.DataObject, schedule: list[Step], lengths: list[int]) -> list[Step]:
    """One request, after some of its tokens ran, is recomputed from position 0 in a later step of its own."""
    done: dict[int, int] = {}
    for index, step in enumerate(schedule):
        for segments in step:
            for req, start, count in segments:
                done[req] = max(done.get(req, 0), start + count)
        if done and data.draw(st.booleans(), label="preempt here"):
            req = data.draw(st.sampled_from(sorted(done)), label="preempted request")
            return [*schedule[:index + 1], [[(req, 0, done[req])]], *schedule[index + 1:]]
    return schedule


@SETTINGS
@given(st.data())
def test_auto_aligns_any_rebatching_token_for_token(data):
    lengths = data.draw(st.lists(st.integers(1, 6), min_size=1, max_size=4), label="request lengths")
    _remember(lengths)
    baseline = build_side(draw_chunked_schedule(data, lengths, dp_size=1, label="baseline"))
    target_schedule = draw_chunked_schedule(data, lengths, dp_size=data.draw(st.integers(1, 3), label="dp"),
                                            label="target")
    preempted = data.draw(st.booleans(), label="preempt in the target")
    if preempted:
        target_schedule = preempt(data, target_schedule, lengths)
    target = build_side(target_schedule)
    choice = decide(baseline, target)
    real = [[(r, p) for segments in step for r, s, n in segments for p in range(s, s + n)]
            for step in target_schedule]
    same_tokens = [_keys(baseline, s) for s in baseline.steps] == [_keys(target, s) for s in target.steps]
    if same_tokens and len(baseline.steps) == len(target.steps):
        assert choice.aligner in ("none", "concat_steps"), choice.reason
    else:
        assert choice.aligner == "by_request", choice.reason
    for layout in ("local", "gathered"):
        compared = compare_all(baseline, target, choice, layout)
        # Every target token (a recomputed one again) is compared once, with the baseline's same token.
        assert sorted(compared) == sorted(k for step in real for k in step)


def _keys(side: Side, step: int) -> list[Key]:
    reqs = side.aux["token_req_ids", step].tolist()
    positions = side.aux["positions", step].tolist()
    return [(r, p) for r, p in zip(reqs, positions) if r >= 0]


@SETTINGS
@given(st.data())
def test_auto_with_one_batching_on_both_sides_compares_step_by_step(data):
    lengths = data.draw(st.lists(st.integers(1, 6), min_size=1, max_size=4), label="request lengths")
    schedule = draw_chunked_schedule(data, lengths, dp_size=1, label="both")
    choice = decide(build_side(schedule), build_side(schedule))
    assert choice.aligner == "none" and choice.reason.startswith("none: both runs hold the same tokens")


def rename(side: Side, mapping: dict[int, int]) -> Side:
    """The same run, its request ids renamed (another engine's id scheme)."""
    for (name, step), values in list(side.aux.items()):
        if name in ("token_req_ids", "req_ids"):
            side.aux[name, step] = torch.tensor([mapping.get(int(v), int(v)) for v in values.tolist()],
                                                dtype=torch.long)
    return side


@SETTINGS
@given(st.data())
def test_auto_matches_requests_by_input_ids_when_ids_differ(data):
    lengths = data.draw(st.lists(st.integers(1, 6), min_size=1, max_size=4, unique=True), label="request lengths")
    _remember(lengths)
    baseline = build_side(draw_chunked_schedule(data, lengths, dp_size=1, label="baseline"))
    target_schedule = draw_chunked_schedule(data, lengths, dp_size=1, label="target")
    order = data.draw(st.permutations(range(len(lengths))), label="target id order")
    mapping = {req: 100 + order[req] for req in range(len(lengths))}  # ids no baseline request has
    target = rename(build_side(target_schedule), mapping)
    choice = decide(baseline, target)
    real = sorted((r, p) for step in target_schedule for segments in step for r, s, n in segments
                  for p in range(s, s + n))
    # Batched alike or not: by_request, so that the request-id dumps compare renamed.
    assert choice.aligner == "by_request", choice.reason
    assert dict(choice.request_map) == {new: old for old, new in mapping.items()}
    assert "requests matched by input ids" in choice.reason
    compared = compare_all(baseline, target, choice)
    assert sorted(compared) == real
    # The request-id dump itself agrees once the target's ids are renamed to the baseline's.
    assert_request_ids_agree(baseline, target, choice)


def assert_request_ids_agree(baseline: Side, target: Side, choice) -> None:  # type: ignore[no-untyped-def]
    aligner = choice.make(NAMES)
    ctx = context(baseline, target, name="token_req_ids", dims="t")
    for unit in aligner.plan(step_pairs(baseline, target), ctx):
        if not unit.baseline_steps or not unit.target_steps:
            continue
        aligned = aligner.align(unit, [baseline.aux["token_req_ids", s] for s in unit.baseline_steps],
                                [target.aux["token_req_ids", s] for s in unit.target_steps], ctx)
        assert torch.equal(aligned.baseline, aligned.target)
        assert "request ids renamed" in (aligned.note.detail or "")


@SETTINGS
@given(st.data())
def test_match_sequences_exact_then_longest_common_prefix(data):
    count = data.draw(st.integers(1, 5), label="requests")
    # Distinct first tokens: each request's prompt tells it apart (as real prompts do).
    baseline = {req: (req + 1, *data.draw(st.lists(st.integers(1, 9), max_size=6), label=f"tokens {req}"))
                for req in range(count)}
    target: dict[int, tuple[int, ...]] = {}
    truth: dict[int, int] = {}
    for req, seq in baseline.items():
        if not data.draw(st.booleans(), label=f"target has {req}"):
            continue
        keep = data.draw(st.integers(1, len(seq)), label=f"prefix of {req}")
        tail = tuple(data.draw(st.lists(st.integers(10, 19), max_size=3), label=f"diverging tail of {req}"))
        new_id = 50 + len(target)
        target[new_id] = seq[:keep] + tail
        truth[new_id] = req
    match = match_sequences(baseline, target)
    assert dict(match.request_map) == truth
    assert match.unmatched == 0 and match.exact + match.by_prefix == len(target)
    stranger = {99: (42,)}  # shares no first token with any baseline request
    assert dict(match_sequences(baseline, stranger).request_map)[99] not in baseline


def test_the_reason_counts_one_token_in_the_singular():
    # vLLM started its first step before the second request arrived in the target only.
    baseline = build_side([[[(0, 0, 1)]], [[(0, 1, 1)]], [[(1, 0, 3)]]])
    target = build_side([[[(0, 0, 1)]], [[(0, 1, 1), (1, 0, 3)]]])
    choice = decide(baseline, target)
    assert choice.aligner == "by_request"
    assert choice.reason == "by_request: step 1 holds 1 token in the baseline, 4 in the target"


def test_runs_batched_alike_whose_ids_differ_compare_by_request_with_ids_renamed():
    """Two SGLang runs batched alike: the same tokens at every step, random rids hashed otherwise."""
    schedule = [[[(0, 0, 3), (1, 0, 2)]], [[(0, 3, 1), (1, 2, 1)]]]
    baseline = build_side(schedule)
    target = rename(build_side(schedule), {0: 7001, 1: 7002})
    choice = decide(baseline, target)
    assert choice.aligner == "by_request" and dict(choice.request_map) == {7001: 0, 7002: 1}
    assert choice.reason == ("by_request: both runs hold the same tokens at each of 2 steps; the runs do not share "
                             "request ids: requests matched by input ids (2 exactly)")
    assert_request_ids_agree(baseline, target, choice)
    # One comparison per target step, as none makes.
    units = choice.make(NAMES).plan(step_pairs(baseline, target), context(baseline, target))
    assert [(u.baseline_steps, u.target_steps) for u in units] == [((0,), (0,)), ((1,), (1,))]
