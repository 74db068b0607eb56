"""The seed bugs with CUDA-graph decode on, two GPUs (NCCL), against an eager 1-GPU baseline.

Seeds 1-4 and the graph-only bug are engine bugs switched on in the targets; seed 5
(DP attention's padding) is a healthy DP-attention target whose graphs pad every DP
rank's block of the gathered MoE input to the captured size.

Skipped without two CUDA devices (CI has none); run on the device machine and recorded in
docs/gpu.md. Each target runs its decode steps from CUDA graphs captured with the engine's
NCCL collectives inside them (``--cuda-graph``), padded up to the captured batch size 4
(3 requests), and is dumped through the example preset. The prefill (step 0) is eager,
so each seed's first divergence is where the eager tests find it; the decode steps
replayed from the graphs must show the same bug at the same tensor, with the same kind
of hint, and healthy graph-mode targets must pass.
"""

from __future__ import annotations

import pytest
import torch

from comparator import compare
from tests.helpers.example_runs import dump_examples

pytestmark = pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2,
                                reason="needs two CUDA devices (CI has none)")

COMMON = "--device cuda --prompt-lens 5,3,7 --steps 3"
GRAPH = f"{COMMON} --cuda-graph"
RUNS = {
    "eager": COMMON,
    "graph_tp2": f"{GRAPH} --tp 2",
    "graph_ep2": f"{GRAPH} --ep 2",
    "graph_ep2_fusion": f"{GRAPH} --ep 2 --fusion",
    "graph_dense_tp": f"{GRAPH} --tp 2 --dense-tp",
    "seed1": f"{GRAPH} --ep 2 --fusion --bug ep_reduce_skipped_under_fusion",
    "seed2": f"{GRAPH} --ep 2 --bug double_reduce",
    "seed3": f"{GRAPH} --tp 2 --bug shared_expert_double_reduce",
    "seed4": f"{GRAPH} --tp 2 --dense-tp --bug dense_tp_missing_reduce",
    "graph_bug_ep2": f"{GRAPH} --ep 2 --bug graph_padding_counts",
    # Seed 5's shape: DP attention. 5 requests: 3 on DP rank 0, 2 on DP rank 1; the decode
    # graphs of size 4 pad both ranks' blocks of the gathered MoE input past the largest (3).
    "eager5": "--device cuda --prompt-lens 5,3,7,2,4 --steps 3",
    "graph_dp": "--device cuda --prompt-lens 5,3,7,2,4 --steps 3 --cuda-graph --ep 2 --dp-attention 2",
    # One request: DP rank 1 is idle and replays the graphs with a padding row.
    "eager1": "--device cuda --prompt-lens 5 --steps 3",
    "graph_dp_idle": "--device cuda --prompt-lens 5 --steps 3 --cuda-graph --ep 2 --dp-attention 2",
}
# seed -> (first divergent tensor, its layer, a phrase of its hint)
SEEDS = {
    "seed1": ("moe_output", 1, "their sum matches the baseline"),
    "seed2": ("moe_output", 1, "looks like a duplicated reduction over a group of size 2"),
    "seed3": ("shared_expert_output", 1, "duplicated reduction over a group of size 2"),
    "seed4": ("dense_mlp_output", 0, "their sum matches the baseline"),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return dump_examples(tmp_path_factory.mktemp("cuda_graph_seeds"), RUNS)


def _failing(report) -> list[tuple]:
    return [(r.name, r.step, r.tags, r.reason) for r in report.results if r.status != "pass"]


def _result(report, name: str, layer: int, step: int):
    (found,) = [r for r in report.results if r.name == name and r.tags.get("layer") == layer and r.step == step]
    return found


@pytest.mark.parametrize("target", ["graph_tp2", "graph_ep2", "graph_ep2_fusion", "graph_dense_tp"])
def test_healthy_two_gpu_graph_runs_pass_against_eager(runs, target):
    report = compare(runs["eager"], runs[target])
    assert report.exit_code == 0 and report.first_divergence is None, _failing(report)
    decode = [r for r in report.results if r.step >= 1]
    assert decode and all(r.status == "pass" for r in decode)


@pytest.mark.parametrize("seed", sorted(SEEDS))
def test_seed_bugs_are_found_with_graphs_on(runs, seed):
    name, layer, phrase = SEEDS[seed]
    report = compare(runs["eager"], runs[seed])
    first = report.first_divergence
    assert first is not None
    assert (first.name, first.step, first.tags) == (name, 0, {"layer": layer})
    assert phrase in first.hint
    # The decode steps, replayed from the graphs, carry the same bug at the same tensor.
    for step in (1, 2, 3):
        replayed = _result(report, name, layer, step)
        assert replayed.status == "fail", (step, replayed.reason)


def test_graph_only_bug_on_two_gpus_is_found_at_the_first_tensor_it_corrupts(runs):
    report = compare(runs["eager"], runs["graph_bug_ep2"])
    first = report.first_divergence
    assert first is not None
    assert (first.name, first.step, first.tags) == ("routed_expert_output", 1, {"layer": 1})
    assert first.hint.startswith("the target ran this step from a CUDA graph and the baseline eagerly")


@pytest.mark.parametrize(("baseline", "target"), [("eager5", "graph_dp"), ("eager1", "graph_dp_idle")])
def test_seed5_dp_attention_under_graphs_passes_with_the_default_aligner(runs, baseline, target):
    report = compare(runs[baseline], runs[target])
    assert report.exit_code == 0, _failing(report)
    assert report.aligner == "concat_steps"
    # Step by step: the replayed decode steps (padded to a captured size) are each compared alone.
    moe = [r for r in report.results if r.name == "routed_expert_output" and r.tags == {"layer": 1}]
    assert sorted(r.alignment.target.steps for r in moe) == [(0,), (1,), (2,), (3,)]


def test_seed5_dp_attention_under_graphs_without_an_aligner_hints_at_padding(runs):
    report = compare(runs["eager5"], runs["graph_dp"], exclude="^num_tokens_per_dp_rank$", aligner="none")
    first = report.first_divergence
    assert first is not None and first.reason.startswith("shape mismatch")
    assert first.hint.endswith("looks like padding, try --aligner concat_steps")
