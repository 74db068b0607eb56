"""Property tests: a token stream, batched two different ways, aligns back to itself exactly.

A random token stream is split into random steps, spread over random DP ranks (idle
ranks with their padding token, DP-gathered rows padded to the largest rank, dummy
passes where every rank is idle), and compared against another batching of the same
stream.
"""

from __future__ import annotations

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aligners import get_aligner
from tests.aligners.synthetic import Key, Step, build_side, context, feature, step_pairs, stream_features

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def draw_stream(data: st.DataObject) -> list[Key]:
    """Every token of 1-4 requests of 1-6 tokens, interleaved at random (each request in position order)."""
    lengths = data.draw(st.lists(st.integers(1, 6), min_size=1, max_size=4), label="request lengths")
    next_position = [0] * len(lengths)
    stream: list[Key] = []
    while any(p < n for p, n in zip(next_position, lengths)):
        open_requests = [r for r, (p, n) in enumerate(zip(next_position, lengths)) if p < n]
        req = data.draw(st.sampled_from(open_requests))
        stream.append((req, next_position[req]))
        next_position[req] += 1
    return stream


def split(data: st.DataObject, items: list, *, label: str) -> list[list]:
    """``items`` cut into consecutive non-empty parts at random points."""
    cuts = data.draw(st.sets(st.integers(1, max(1, len(items) - 1)), max_size=len(items)), label=label)
    cuts = sorted(c for c in cuts if 0 < c < len(items))
    bounds = [0, *cuts, len(items)]
    return [items[a:b] for a, b in zip(bounds, bounds[1:])]


def segments(tokens: list[Key]) -> list[tuple[int, int, int]]:
    """Maximal runs of one request's consecutive positions -> (request, first position, count)."""
    out: list[tuple[int, int, int]] = []
    for req, pos in tokens:
        if out and out[-1][0] == req and out[-1][1] + out[-1][2] == pos:
            out[-1] = (req, out[-1][1], out[-1][2] + 1)
        else:
            out.append((req, pos, 1))
    return out


def spread_over_dp(data: st.DataObject, steps: list[list[Key]], dp_size: int) -> list[Step]:
    """Each step's tokens cut into ``dp_size`` consecutive parts (some empty), plus dummy passes."""
    schedule: list[Step] = []
    for tokens in steps:
        for _ in range(data.draw(st.integers(0, 1), label="dummy passes before")):
            schedule.append([[] for _ in range(dp_size)])
        cuts = sorted(data.draw(st.lists(st.integers(0, len(tokens)), min_size=dp_size - 1, max_size=dp_size - 1)))
        bounds = [0, *cuts, len(tokens)]
        schedule.append([segments(tokens[a:b]) for a, b in zip(bounds, bounds[1:])])
    return schedule


@SETTINGS
@given(st.data())
def test_concat_steps_recovers_the_stream_from_any_batching(data):
    stream = draw_stream(data)
    baseline = build_side([[segments(tokens)] for tokens in split(data, stream, label="baseline steps")])
    dp_size = data.draw(st.integers(1, 3), label="dp size")
    target = build_side(spread_over_dp(data, split(data, stream, label="target steps"), dp_size))
    expected = stream_features(stream)
    for target_layout in ("local", "gathered"):
        aligner = get_aligner("concat_steps")
        ctx = context(baseline, target)
        (unit,) = aligner.plan(step_pairs(baseline, target), ctx)
        aligned = aligner.align(unit, baseline.local, getattr(target, target_layout), ctx)
        assert torch.equal(aligned.baseline, expected)
        assert torch.equal(aligned.target, expected)
        note = aligned.note
        assert note.tokens == len(stream)
        assert note.target.steps_merged == len(target.steps) and note.baseline.steps_merged == len(baseline.steps)
        assert len(note.target.dummy_steps) == sum(1 for s in target.steps if int(target.aux["num_tokens_per_dp_rank", s].sum()) == 0)
        rows = sum(int(t.shape[0]) for t in getattr(target, target_layout))
        dummy_rows = sum(int(getattr(target, target_layout)[s].shape[0]) for s in note.target.dummy_steps)
        assert note.target.padding_rows == rows - len(stream) - dummy_rows


def draw_chunked_schedule(data: st.DataObject, lengths: list[int], *, dp_size: int, label: str) -> list[Step]:
    """Each request cut into chunks at random; chunks scheduled over steps in request order, on random DP ranks."""
    chunks = [split(data, [(req, pos) for pos in range(length)], label=f"{label} chunks of {req}")
              for req, length in enumerate(lengths)]
    schedule: list[Step] = []
    while any(chunks):
        ranks: Step = [[] for _ in range(dp_size)]
        waiting = [req for req, left in enumerate(chunks) if left]
        chosen = data.draw(st.lists(st.sampled_from(waiting), min_size=1, unique=True), label=f"{label} step")
        if data.draw(st.booleans(), label=f"{label} dummy pass"):
            schedule.append([[] for _ in range(dp_size)])
        for req in chosen:
            tokens = chunks[req].pop(0)
            rank = data.draw(st.integers(0, dp_size - 1))
            ranks[rank].append((req, tokens[0][1], len(tokens)))
        schedule.append(ranks)
    return schedule


@SETTINGS
@given(st.data())
def test_by_request_matches_tokens_across_any_scheduling(data):
    lengths = data.draw(st.lists(st.integers(1, 6), min_size=1, max_size=4), label="request lengths")
    # The target may run some requests for fewer tokens: those tokens are the baseline's only.
    target_lengths = [data.draw(st.integers(1, n), label="target length") for n in lengths]
    baseline = build_side(draw_chunked_schedule(data, lengths, dp_size=1, label="baseline"))
    target = build_side(draw_chunked_schedule(data, target_lengths, dp_size=data.draw(st.integers(1, 3)), label="target"))
    common = sorted((req, pos) for req, n in enumerate(target_lengths) for pos in range(n))
    expected = stream_features(common)
    for target_layout in ("local", "gathered"):
        aligner = get_aligner("by_request")
        ctx = context(baseline, target)
        (unit,) = aligner.plan(step_pairs(baseline, target), ctx)
        aligned = aligner.align(unit, baseline.local, getattr(target, target_layout), ctx)
        assert torch.equal(aligned.baseline, expected)
        assert torch.equal(aligned.target, expected)
        assert aligned.note.tokens == len(common)
        assert aligned.note.baseline.only_here == sum(lengths) - sum(target_lengths)
        assert aligned.note.target.only_here == 0

    # Per-request rows (logits-like): matched by (request, last position of the step).
    aligner = get_aligner("by_request")
    ctx = context(baseline, target, name="logits", dims="r h")
    (unit,) = aligner.plan(step_pairs(baseline, target), ctx)
    aligned = aligner.align(unit, baseline.per_request, target.per_request, ctx)
    assert torch.equal(aligned.baseline, aligned.target)
    keys = sorted(set(_chunk_ends(baseline)) & set(_chunk_ends(target)))
    assert aligned.note.tokens == len(keys)
    if keys:
        assert torch.equal(aligned.target, torch.stack([feature(k) for k in keys]))


def _chunk_ends(side) -> list[Key]:  # type: ignore[no-untyped-def]
    return [(int(r), int(s) - 1) for step in side.steps
            for r, s in zip(side.aux["req_ids", step].tolist(), side.aux["seq_lens", step].tolist())]
