"""by_request: matching tokens by (request id, position), and its error paths."""

from __future__ import annotations

import pytest
import torch

from aligners import AlignerError, MissingMetadataError, get_aligner
from aligners.by_request import ByRequestAligner
from tests.aligners.synthetic import build_side, context, step_pairs, stream_features


def two_orders():
    """Two requests of 3 tokens; the target runs them in the other order, chunked, on 2 DP ranks."""
    baseline = build_side([[[(0, 0, 3), (1, 0, 3)]], [[(0, 3, 1), (1, 3, 1)]]])
    target = build_side([[[(1, 0, 2)], []], [[(1, 2, 2)], [(0, 0, 3)]], [[], [(0, 3, 1)]]])
    return baseline, target


def align(baseline, target, baseline_tensors, target_tensors, aligner=None, **context_options):
    aligner = aligner or get_aligner("by_request")
    ctx = context(baseline, target, **context_options)
    (unit,) = aligner.plan(step_pairs(baseline, target), ctx)
    return aligner.align(unit, baseline_tensors, target_tensors, ctx)


def test_other_order_and_chunking_match():
    baseline, target = two_orders()
    aligned = align(baseline, target, baseline.local, target.gathered)
    expected = stream_features([(r, p) for r in (0, 1) for p in range(4)])
    assert torch.equal(aligned.baseline, expected) and torch.equal(aligned.target, expected)
    assert aligned.note.tokens == 8 and aligned.note.target.steps_merged == 3


def test_concat_steps_would_not_match_them():
    baseline, target = two_orders()
    aligned = align(baseline, target, baseline.local, target.local, aligner=get_aligner("concat_steps"))
    assert aligned.baseline.shape == aligned.target.shape and not torch.equal(aligned.baseline, aligned.target)


def test_tokens_on_one_side_are_reported():
    baseline, target = two_orders()
    target = build_side([[[(1, 0, 2)], []], [[(1, 2, 2)], [(0, 0, 3)]]])  # request 0's decode token never runs
    aligned = align(baseline, target, baseline.local, target.local)
    assert aligned.note.baseline.only_here == 1 and aligned.note.baseline.only_here_examples == ((0, 3),)
    assert aligned.note.tokens == 7
    assert "baseline: 1 tokens only here (req 0 pos 3)" in aligned.note.describe()
    assert aligned.note.to_json()["baseline"]["only_here_examples"] == [[0, 3]]


def test_sglang_style_metadata_rids_and_seq_lens():
    """No per-token request ids, no extend lens: each request's tokens end at its seq len - 1."""
    baseline, target = two_orders()
    for side in (baseline, target):
        for step in side.steps:
            side.aux["rids", step] = side.aux.pop(("req_ids", step))
            del side.aux["token_req_ids", step], side.aux["extend_lens", step]
    aligned = align(baseline, target, baseline.local, target.gathered)
    assert torch.equal(aligned.baseline, aligned.target) and aligned.note.tokens == 8


def test_per_request_rows():
    baseline, target = two_orders()
    aligned = align(baseline, target, baseline.per_request, target.per_request, dims="r v")
    # Last tokens per step: baseline (0,2) (1,2) (0,3) (1,3); target (1,1) (1,3) (0,2) (0,3).
    assert aligned.note.tokens == 3 and torch.equal(aligned.baseline, aligned.target)
    assert aligned.note.baseline.only_here == 1 and aligned.note.target.only_here == 1


def test_layout_metadata_and_untokened_tensors():
    baseline, target = two_orders()
    counts = lambda side: [side.aux["num_tokens_per_dp_rank", s] for s in side.steps]  # noqa: E731
    aligned = align(baseline, target, counts(baseline), counts(target), name="num_tokens_per_dp_rank", dims="d")
    assert aligned.baseline.tolist() == aligned.target.tolist() == [8]
    scalars = align(baseline, target, [torch.tensor(1.0)] * 2, [torch.tensor(1.0)] * 3, name="scale", dims="*")
    assert scalars.note.detail == "no 't' or 'r' dim: steps concatenated as dumped"
    assert list(scalars.target.shape) == [3]


# ------------------------------------------------------------------- error paths
def test_missing_positions():
    baseline, target = two_orders()
    with pytest.raises(MissingMetadataError) as caught:
        get_aligner("by_request").plan(step_pairs(baseline, target),
                                       context(baseline, target, drop_baseline=frozenset({"positions"})))
    assert str(caught.value).startswith("by_request needs the position of every token of the baseline run, but step 0 "
                                        "has no 'positions' dump: dump it at the engine's step entry (a patch line "
                                        "`- dump: positions`")


def test_missing_request_ids():
    baseline, target = two_orders()
    drop = frozenset({"token_req_ids", "req_ids"})
    with pytest.raises(MissingMetadataError, match="needs the request of every token of the target run, but step 0 has "
                                                   "neither 'token_req_ids' nor 'req_ids' / 'rids'"):
        get_aligner("by_request").plan(step_pairs(baseline, target), context(baseline, target, drop_target=drop))


def test_missing_lengths():
    baseline, target = two_orders()
    drop = frozenset({"token_req_ids", "extend_lens", "seq_lens"})
    with pytest.raises(MissingMetadataError, match="has neither 'extend_lens' nor 'seq_lens'"):
        get_aligner("by_request").plan(step_pairs(baseline, target), context(baseline, target, drop_target=drop))


def test_inconsistent_lengths():
    baseline, target = two_orders()
    del target.aux["token_req_ids", 0]
    target.aux["extend_lens", 0] = torch.tensor([5])
    with pytest.raises(AlignerError, match=r"extend_lens \[5\] does not cover the 2 real tokens of 1 requests"):
        get_aligner("by_request").plan(step_pairs(baseline, target), context(baseline, target))
    baseline, target = two_orders()
    for name in ("token_req_ids", "extend_lens"):
        del target.aux[name, 0]
    target.aux["seq_lens", 0] = torch.tensor([9])
    with pytest.raises(AlignerError, match=r"do not end each request at its seq len \[9\]"):
        get_aligner("by_request").plan(step_pairs(baseline, target), context(baseline, target))


def test_a_token_twice_is_an_error():
    baseline, target = two_orders()
    target.aux["positions", 2] = torch.tensor([0, 2])  # request 0's decode token claims position 2 again
    with pytest.raises(AlignerError, match=r"target hidden holds token \(request 0, position 2\) twice"):
        align(baseline, target, baseline.local, target.local)


def test_request_rows_must_match_the_metadata():
    baseline, target = two_orders()
    with pytest.raises(AlignerError, match="target logits at step 0 has 2 request rows, but the step's metadata names 1"):
        align(baseline, target, baseline.per_request, [torch.zeros(2, 4)] * 3, name="logits", dims="r v")


def test_transformers_position_ids_stand_for_positions():
    """transformers' preset dumps its positions as ``position_ids``: read when no ``positions`` is dumped."""
    baseline, target = two_orders()
    for step in baseline.steps:
        baseline.aux["position_ids", step] = baseline.aux.pop(("positions", step))
    aligned = align(baseline, target, baseline.local, target.gathered)
    assert torch.equal(aligned.baseline, aligned.target) and aligned.note.tokens == 8


def test_row_keys_name_the_aligned_rows_in_order():
    """The routing masks name by_request's rows with row_keys: (target step, request, position) of each."""
    baseline, target = two_orders()
    target = build_side([[[(1, 0, 2)], []], [[(1, 2, 2)], [(0, 0, 3)]]])  # request 0's decode token never runs
    for aligner in (get_aligner("by_request"), ByRequestAligner(per_target_step=True)):
        ctx = context(baseline, target)
        for unit in aligner.plan(step_pairs(baseline, target), ctx):
            aligned = aligner.align(unit, [baseline.local[s] for s in unit.baseline_steps],
                                    [target.gathered[s] for s in unit.target_steps], ctx)
            token_keys, request_keys = aligner.row_keys(unit)
            assert torch.equal(aligned.target, stream_features([(r, p) for _, r, p in token_keys]))
            assert all(step in unit.target_steps for step, _, _ in token_keys)
            assert {(r, p) for _, r, p in request_keys} <= {(r, p) for _, r, p in token_keys}
