"""Engine configuration, parallel layout and batching: no processes, no collectives."""

from __future__ import annotations

import re

import pytest

from examples.moe_engine.config import BUG_NAMES, EngineConfig, EngineConfigError, ModelConfig
from examples.moe_engine.parallel import ParallelLayout


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"tp": 3}, "num_heads=4 cannot be split over the attention TP size (world/dp-attention)=3"),
        ({"ep": 3, "dp_attention": 3}, "num_experts=8 cannot be split over --ep=3"),
        ({"ep": 2, "dp_attention": 3}, "--dp-attention 3 must divide the world size tp*ep=2"),
        ({"ep": 2, "dp_attention": 2, "fusion": True}, "--fusion with --dp-attention is not supported"),
        ({"ep": 2, "dp_attention": 2, "compile": True}, "--compile with --dp-attention is not supported"),
        ({"compile": True, "static_decode": True}, "--compile with --cuda-graph/--static-decode is not supported"),
        ({"steps": -1}, "--steps must be 0 or more"),
        ({"prompt_lens": ()}, "--prompt-lens needs one or more positive lengths"),
        ({"bug": "nope"}, "unknown bug 'nope'; valid: ep_reduce_skipped_under_fusion, double_reduce"),
        ({"dtype": "float16"}, "unknown dtype 'float16'; valid: float32, bfloat16"),
    ],
)
def test_bad_configs_say_what_would_work(changes, message):
    with pytest.raises(EngineConfigError, match="^" + re.escape(message)):
        EngineConfig(**changes)


@pytest.mark.parametrize(
    ("bug", "unreachable", "reachable"),
    [
        ("ep_reduce_skipped_under_fusion", {"ep": 2}, {"ep": 2, "fusion": True}),
        ("double_reduce", {"tp": 2}, {"ep": 2}),
        ("double_reduce", {"ep": 2, "fusion": True}, {"tp": 2, "ep": 2}),
        ("shared_expert_double_reduce", {}, {"tp": 2}),
        ("dense_tp_missing_reduce", {"tp": 2}, {"tp": 2, "dense_tp": True}),
        ("dense_tp_missing_reduce", {"tp": 2, "ep": 2, "dp_attention": 4, "dense_tp": True},
         {"tp": 2, "ep": 2, "dp_attention": 2, "dense_tp": True}),
    ],
)
def test_a_bug_its_configuration_never_reaches_is_refused(bug, unreachable, reachable):
    """Otherwise a healthy run would pass for a reproduced bug."""
    with pytest.raises(EngineConfigError, match=f"--bug {bug} needs"):
        EngineConfig(bug=bug, **unreachable)
    EngineConfig(bug=bug, **reachable)


def test_every_bug_has_an_example_that_reaches_it():
    examples = {"ep_reduce_skipped_under_fusion": {"ep": 2, "fusion": True}, "double_reduce": {"ep": 2},
                "shared_expert_double_reduce": {"tp": 2}, "dense_tp_missing_reduce": {"tp": 2, "dense_tp": True}}
    assert sorted(examples) == sorted(BUG_NAMES)


def test_dense_layers_bounded_by_layers():
    with pytest.raises(EngineConfigError, match=r"num_dense_layers must be in \[0, num_layers=2\]"):
        ModelConfig(num_layers=2, num_dense_layers=3)


@pytest.mark.parametrize(("tp", "ep", "dp"), [(1, 1, 1), (2, 1, 1), (1, 2, 2), (2, 2, 1), (2, 2, 2), (4, 2, 4), (2, 4, 8)])
def test_every_axis_partitions_the_world(tp, ep, dp):
    layouts = [ParallelLayout(rank=rank, tp=tp, ep=ep, dp_attention=dp) for rank in range(tp * ep)]
    world = set(range(tp * ep))
    for axis in ("attn_tp", "attn_dp", "ep", "moe_tp"):
        groups = layouts[0].group_ranks(axis)
        assert sorted(rank for group in groups for rank in group) == sorted(world), axis
        for layout in layouts:
            (mine,) = [group for group in groups if layout.rank in group]
            # A rank's position in its group is its rank on the axis.
            assert mine.index(layout.rank) == layout.axis_rank(axis)
            assert len(mine) == layout.size(axis)
    # The two views of the world: (attn_dp, attn_tp) and (ep, moe_tp) each tell every rank apart.
    assert len({(layout.attn_dp_rank, layout.attn_tp_rank) for layout in layouts}) == len(world)
    assert len({(layout.ep_rank, layout.moe_tp_rank) for layout in layouts}) == len(world)


def test_dumper_axes():
    layout = ParallelLayout(rank=3, tp=2, ep=2, dp_attention=2)
    assert layout.dumper_axes() == {"attn_tp": (1, 2), "attn_dp": (1, 2), "ep": (1, 2), "moe_tp": (1, 2)}


def test_requests_split_over_dp_ranks_in_contiguous_blocks():
    from examples.moe_engine.engine import requests_of_dp_rank

    assert [list(requests_of_dp_rank(4, 2, d)) for d in range(2)] == [[0, 1], [2, 3]]
    assert [list(requests_of_dp_rank(3, 2, d)) for d in range(2)] == [[0, 1], [2]]
    # Seed 5: one request, two DP ranks: the second is idle.
    assert [list(requests_of_dp_rank(1, 2, d)) for d in range(2)] == [[0], []]


def test_idle_dp_rank_runs_one_padding_token():
    import torch

    from examples.moe_engine.batch import PADDING_TOKEN_ID, build_batch

    batch = build_batch([], forward_mode="prefill", num_tokens_per_dp_rank=[5, 0], dp_rank=1, kv_cache=None,
                        device=torch.device("cpu"))
    assert batch.forward_mode == "idle"
    assert batch.input_ids.tolist() == [PADDING_TOKEN_ID]
    assert batch.token_req_ids.tolist() == [-1]
    assert batch.req_ids.tolist() == [] and batch.last_token_rows.tolist() == []
    assert batch.padded_rows_per_dp_rank == 5


def test_prefill_and_decode_batches():
    import torch

    from examples.moe_engine.batch import Request, build_batch

    requests = [Request(req_id=2, prompt=[5, 6, 7], output=[]), Request(req_id=3, prompt=[8, 9], output=[])]
    prefill = build_batch(requests, forward_mode="prefill", num_tokens_per_dp_rank=[4, 5], dp_rank=1,
                          kv_cache=None, device=torch.device("cpu"))
    assert prefill.input_ids.tolist() == [5, 6, 7, 8, 9]
    assert prefill.positions.tolist() == [0, 1, 2, 0, 1]
    assert prefill.token_req_ids.tolist() == [2, 2, 2, 3, 3]
    assert prefill.seq_lens.tolist() == [3, 2] and prefill.extend_lens.tolist() == [3, 2]
    assert prefill.last_token_rows.tolist() == [2, 4]
    for request, token in zip(requests, (11, 12)):
        request.output.append(token)
    decode = build_batch(requests, forward_mode="decode", num_tokens_per_dp_rank=[2, 2], dp_rank=1,
                         kv_cache=None, device=torch.device("cpu"))
    assert decode.input_ids.tolist() == [11, 12]
    assert decode.positions.tolist() == [3, 2]
    assert decode.seq_lens.tolist() == [4, 3] and decode.extend_lens.tolist() == [1, 1]


def test_bug_switches_combine():
    config = EngineConfig(tp=2, ep=2, dense_tp=True, bug="dense_tp_missing_reduce", extra_bugs=("double_reduce",))
    assert config.bugs == ("dense_tp_missing_reduce", "double_reduce") and config.has_bug("double_reduce")
    with pytest.raises(EngineConfigError, match="--bug double_reduce needs --ep 2"):
        EngineConfig(tp=2, dense_tp=True, bug="dense_tp_missing_reduce", extra_bugs=("double_reduce",))
    with pytest.raises(EngineConfigError, match="given twice"):
        EngineConfig(tp=2, ep=2, bug="double_reduce", extra_bugs=("double_reduce",))
