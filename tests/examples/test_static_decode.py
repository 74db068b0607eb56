"""The example engine's CUDA-graph decode path, the parts that run on the CPU (CI has no GPU).

``--static-decode`` runs the path a graph replays (static KV arena, masked attention,
sorted expert slots) without capture; the graph-only bug lives in its expert slots
and shows only when a batch has padding rows, which only graph mode adds.
The graph runs themselves: tests/examples/test_cuda_graph_engine.py, on a GPU.
"""

from __future__ import annotations

import pytest
import torch

from comparator import compare
from examples.moe_engine.config import EngineConfig, EngineConfigError
from examples.moe_engine.cudagraph import StaticBatch, StaticKVCache, static_routed_experts
from examples.moe_engine.model import RoutedExperts
from examples.moe_engine.parallel import Comm, ParallelLayout
from examples.moe_engine.weights import generate_weights
from tests.helpers.example_runs import dump_examples


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return dump_examples(tmp_path_factory.mktemp("static_decode"), {
        "eager": "--steps 3", "static": "--steps 3 --static-decode",
        "eager3": "--steps 3 --prompt-lens 5,3,7",
        # 2 requests on DP rank 0, 1 on DP rank 1: the gathered MoE input pads rank 1
        "static_dp": "--steps 3 --prompt-lens 5,3,7 --static-decode --ep 2 --dp-attention 2",
        "eager1": "--steps 3 --prompt-lens 5",
        # DP rank 1 has no request: it runs a padding row every step, in the static path too
        "static_dp_idle": "--steps 3 --prompt-lens 5 --static-decode --tp 2 --dp-attention 2 --dense-tp",
    })


def test_static_decode_compares_as_passing_against_eager(runs):
    report = compare(runs["eager"], runs["static"])
    assert report.exit_code == 0 and report.first_divergence is None
    decode = [r for r in report.results if r.step >= 1]
    assert {r.name for r in decode} >= {"attn_output", "routed_expert_output", "moe_output", "logits"}
    assert report.summary.passed == report.summary.total


@pytest.mark.parametrize(("baseline", "target"), [("eager3", "static_dp"), ("eager1", "static_dp_idle")])
def test_static_decode_with_dp_attention_passes_against_eager(runs, baseline, target):
    report = compare(runs[baseline], runs[target])
    assert report.exit_code == 0 and report.first_divergence is None, [
        (r.name, r.step, r.tags, r.reason) for r in report.results if r.status != "pass"]
    assert report.aligner == "concat_steps"
    # concat_steps keeps each step's real tokens (the padded decode steps' included), step by step
    moe = [r for r in report.results if r.name == "routed_expert_output"]
    assert all(r.status == "pass" for r in moe), moe
    assert sorted(r.alignment.target.steps for r in moe if r.tags == {"layer": 1}) == [(0,), (1,), (2,), (3,)]


def _experts_and_inputs(rows: int):
    config = EngineConfig()
    weights = generate_weights(config.model)
    comm = Comm(ParallelLayout(rank=0, tp=1, ep=1, dp_attention=1))
    experts = RoutedExperts(config, weights, layer_id=1, comm=comm)
    generator = torch.Generator().manual_seed(3)
    hidden = torch.randn(rows, config.model.hidden_size, generator=generator)
    logits = torch.randn(rows, config.model.num_experts, generator=generator)
    weights_k, ids = logits.softmax(-1).topk(config.model.top_k, dim=-1)
    return experts, hidden, weights_k / weights_k.sum(-1, keepdim=True), ids


def _batch(rows: int, real: int, *, bug: bool) -> StaticBatch:
    cache = StaticKVCache(num_layers=1, num_local_heads=1, head_dim=1, dtype=torch.float32,
                          device=torch.device("cpu"), num_slots=1, max_len=1)
    return StaticBatch(positions=torch.zeros(rows, dtype=torch.long), slot_ids=torch.zeros(rows, dtype=torch.long),
                       num_real_per_dp=torch.tensor([real]), last_token_rows=torch.arange(rows), kv_cache=cache,
                       padding_counts_bug=bug, padded_rows_per_dp_rank=rows)


@pytest.mark.parametrize("bug", [False, True])
def test_without_padding_the_static_experts_match_the_eager_experts(bug):
    experts, hidden, weights_k, ids = _experts_and_inputs(5)
    eager = experts(hidden, weights_k, ids)
    static = static_routed_experts(experts, hidden, weights_k, ids, _batch(5, 5, bug=bug))
    torch.testing.assert_close(static, eager, rtol=1e-5, atol=1e-6)  # the bug needs padding rows


def test_padding_rows_change_real_rows_only_with_the_graph_bug():
    experts, hidden, weights_k, ids = _experts_and_inputs(8)
    real = 5
    eager = experts(hidden[:real], weights_k[:real], ids[:real])
    healthy = static_routed_experts(experts, hidden, weights_k, ids, _batch(8, real, bug=False))
    buggy = static_routed_experts(experts, hidden, weights_k, ids, _batch(8, real, bug=True))
    torch.testing.assert_close(healthy[:real], eager, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(buggy[:real], eager, rtol=1e-3, atol=1e-4)  # real tokens, wrong experts


def test_graph_options_are_checked():
    with pytest.raises(EngineConfigError, match="--cuda-graph needs --device cuda"):
        EngineConfig(cuda_graph=True)
    with pytest.raises(EngineConfigError, match="lives only in CUDA-graph decode"):
        EngineConfig(bug="graph_padding_counts", static_decode=True)
    with pytest.raises(EngineConfigError, match="exclude each other"):
        EngineConfig(cuda_graph=True, static_decode=True, device="cuda")
    EngineConfig(static_decode=True, tp=2, dp_attention=2)  # DP attention: every DP rank runs one size
