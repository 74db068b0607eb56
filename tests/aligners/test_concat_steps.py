"""concat_steps on the seed-5 shape and its error paths."""

from __future__ import annotations

import pytest
import torch

from aligners import AlignerError, MissingMetadataError, get_aligner
from comparator.judge.hints import padding_hint
from comparator.judge.metrics import compute_metrics
from tests.aligners.synthetic import build_side, context, step_pairs, stream_features

PROMPT = [(0, pos) for pos in range(5)]


def seed5():
    """One request of 5 tokens, then 2 decode steps; the target's second DP rank is idle."""
    baseline = build_side([[[(0, 0, 5)]], [[(0, 5, 1)]], [[(0, 6, 1)]]])
    target = build_side([[[(0, 0, 5)], []], [[(0, 5, 1)], []], [[(0, 6, 1)], []]])
    return baseline, target


def align(aligner_name, baseline, target, baseline_tensors, target_tensors, **context_options):
    aligner = get_aligner(aligner_name)
    ctx = context(baseline, target, **context_options)
    (unit,) = aligner.plan(step_pairs(baseline, target), ctx)
    return aligner.align(unit, baseline_tensors, target_tensors, ctx)


def test_seed5_shape_passes_with_concat_steps():
    baseline, target = seed5()
    assert [list(t.shape) for t in target.local] == [[6, 4], [2, 4], [2, 4]]  # one padding row per step
    assert [list(t.shape) for t in baseline.local] == [[5, 4], [1, 4], [1, 4]]
    aligned = align("concat_steps", baseline, target, baseline.local, target.local)
    expected = stream_features(PROMPT + [(0, 5), (0, 6)])
    assert torch.equal(aligned.baseline, expected) and torch.equal(aligned.target, expected)
    note = aligned.note
    assert (note.target.padding_rows, note.target.rows, note.target.rows_kept) == (3, 10, 7)
    assert note.target.layouts == ("dp_local",) * 3 and note.baseline.layouts == ("packed",) * 3
    assert note.describe() == "concat_steps: 3 steps merged; target: 3 padding rows trimmed; 7 tokens compared"
    assert note.to_json()["target"]["padding_rows"] == 3


def test_seed5_gathered_moe_rows():
    baseline, target = seed5()
    assert [list(t.shape) for t in target.gathered] == [[10, 4], [2, 4], [2, 4]]
    aligned = align("concat_steps", baseline, target, baseline.local, target.gathered)
    assert torch.equal(aligned.baseline, aligned.target)
    assert aligned.note.target.layouts == ("dp_gathered", "dp_local", "dp_local")  # 2 rows: both layouts agree
    assert aligned.note.target.padding_rows == 5 + 1 + 1


def test_gathered_rows_padded_to_a_graph_size():
    # Under a CUDA graph every DP rank is padded to the captured size (here 8), not to
    # the largest rank's tokens: equal blocks larger than any rank's count.
    baseline, target = seed5()
    graph = 8

    def pad_blocks(gathered: torch.Tensor) -> torch.Tensor:
        blocks = gathered.reshape(2, -1, gathered.shape[-1])
        garbage = torch.full((2, graph - blocks.shape[1], gathered.shape[-1]), 7.5)
        return torch.cat([blocks, garbage], dim=1).reshape(2 * graph, -1)

    padded = [pad_blocks(t) for t in target.gathered]
    aligned = align("concat_steps", baseline, target, baseline.local, padded)
    assert torch.equal(aligned.baseline, aligned.target)
    assert aligned.note.target.layouts == ("dp_gathered",) * 3
    assert aligned.note.target.padding_rows == 3 * (2 * graph) - 7
    with pytest.raises(AlignerError, match="token metadata accounts for"):
        align("concat_steps", baseline, target, baseline.local, [t[:-1] for t in padded])  # not equal blocks


def test_without_the_aligner_the_padding_hint_names_it():
    baseline, target = seed5()
    hint = padding_hint(baseline.local[0], target.local[0], token_dim=0,
                        passes=lambda m: m.rel_diff < 1e-6)
    assert "looks like padding, try --aligner concat_steps" in hint
    assert compute_metrics(baseline.local[0], target.local[0][:5]).rel_diff == 0


def test_dummy_pass_dropped_and_counted():
    baseline = build_side([[[(0, 0, 3)]]])
    target = build_side([[[], []], [[(0, 0, 2)], [(0, 2, 1)]]])
    aligned = align("concat_steps", baseline, target, baseline.local, target.gathered)
    assert torch.equal(aligned.target, stream_features([(0, 0), (0, 1), (0, 2)]))
    assert aligned.note.target.dummy_steps == (0,)
    assert aligned.note.target.padding_rows == 1  # rank 1's row padded to rank 0's 2
    assert "1 dummy steps dropped" in aligned.note.describe()


def test_layout_metadata_compared_as_totals():
    baseline, target = seed5()
    steps = range(3)
    aligned = align("concat_steps", baseline, target, [baseline.aux["num_tokens_per_dp_rank", s] for s in steps],
                    [target.aux["num_tokens_per_dp_rank", s] for s in steps], name="num_tokens_per_dp_rank", dims="d")
    assert aligned.baseline.tolist() == aligned.target.tolist() == [5, 1, 1]
    assert "each step's real tokens" in aligned.note.describe()


def test_per_request_rows_are_concatenated():
    baseline, target = seed5()
    aligned = align("concat_steps", baseline, target, baseline.per_request, target.per_request, dims="r v")
    assert list(aligned.target.shape) == [3, 4] and torch.equal(aligned.baseline, aligned.target)


def test_one_side_only_gives_a_unit_without_tables():
    baseline, target = seed5()
    aligner = get_aligner("concat_steps")
    ctx = context(baseline, target)
    from aligners import StepPair

    units = aligner.plan([StepPair(baseline_step=None, target_step=0)], ctx)
    assert [(u.baseline_steps, u.target_steps) for u in units] == [((), (0,))]
    assert aligner.plan([], ctx) == []


# ------------------------------------------------------------------- error paths
def test_missing_metadata_names_the_tensor_and_the_preset_line():
    baseline, target = seed5()
    drop = frozenset({"num_tokens_per_dp_rank", "token_req_ids", "input_ids", "positions"})
    aligner = get_aligner("concat_steps")
    with pytest.raises(MissingMetadataError) as caught:
        aligner.plan(step_pairs(baseline, target), context(baseline, target, drop_target=drop))
    message = str(caught.value)
    assert message.startswith("concat_steps needs the number of real tokens per step of the target run, but step 0 "
                              "has none of 'num_tokens_per_dp_rank', 'token_req_ids', 'input_ids', 'positions'")
    assert "`- dump: input_ids`" in message and "patches/presets/example/moe_engine.yaml" in message
    assert "--aligner-meta" in message


def test_missing_metadata_uses_configured_names():
    baseline, target = seed5()
    aligner = get_aligner("concat_steps", metadata="input_ids=tokens,token_req_ids=rid,num_tokens_per_dp_rank=n,positions=pos")
    with pytest.raises(MissingMetadataError, match="has none of 'n', 'rid', 'tokens', 'pos'"):
        aligner.plan(step_pairs(baseline, target), context(baseline, target))


def test_no_aux_loader():
    baseline, target = seed5()
    ctx = context(baseline, target)
    from dataclasses import replace

    with pytest.raises(MissingMetadataError, match="needs the baseline run's token metadata, and none can be read"):
        get_aligner("concat_steps").plan(step_pairs(baseline, target), replace(ctx, baseline_aux=None))


def test_gathered_rows_without_counts_say_what_to_dump():
    baseline, target = seed5()
    aligner = get_aligner("concat_steps")
    ctx = context(baseline, target, drop_target=frozenset({"num_tokens_per_dp_rank"}))
    (unit,) = aligner.plan(step_pairs(baseline, target), ctx)
    with pytest.raises(AlignerError) as caught:
        aligner.align(unit, baseline.local, target.gathered, ctx)
    assert str(caught.value) == (
        "concat_steps: target hidden at step 0 has 10 rows along its token dim, but the step's token metadata accounts "
        "for 5 (packed), 6 (dp_local) rows; if these are DP-gathered rows, dump 'num_tokens_per_dp_rank' "
        "(as patches/presets/example/moe_engine.yaml does)"
    )


def test_inconsistent_metadata():
    baseline, target = seed5()
    target.aux["positions", 0] = torch.arange(4)
    with pytest.raises(AlignerError, match=r"target run, step 0: the per-token metadata disagree on the number of rows "
                                           r"\(token_req_ids has 6, input_ids has 6, positions has 4\)"):
        get_aligner("concat_steps").plan(step_pairs(baseline, target), context(baseline, target))
    baseline, target = seed5()
    target.aux["num_tokens_per_dp_rank", 1] = torch.tensor([2, 0])
    with pytest.raises(AlignerError, match=r"sums to 2 real tokens, but token_req_ids marks 1 rows as real"):
        get_aligner("concat_steps").plan(step_pairs(baseline, target), context(baseline, target))
    baseline, target = seed5()
    del target.aux["token_req_ids", 0]
    target.aux["num_tokens_per_dp_rank", 0] = torch.tensor([3, 0])
    with pytest.raises(AlignerError, match=r"num_tokens_per_dp_rank \[3, 0\] does not account for the 6 rows"):
        get_aligner("concat_steps").plan(step_pairs(baseline, target), context(baseline, target))


def test_counts_alone_find_the_padding_row():
    baseline, target = seed5()
    for step in range(3):
        del target.aux["token_req_ids", step]
    aligned = align("concat_steps", baseline, target, baseline.local, target.local)
    assert torch.equal(aligned.baseline, aligned.target)


def test_wrong_number_of_tensors():
    baseline, target = seed5()
    aligner = get_aligner("concat_steps")
    ctx = context(baseline, target)
    (unit,) = aligner.plan(step_pairs(baseline, target), ctx)
    with pytest.raises(AlignerError, match="got 1 baseline and 3 target tensors for a unit of 3 and 3 steps"):
        aligner.align(unit, baseline.local[:1], target.local, ctx)
