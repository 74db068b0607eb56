"""Each ``--bug`` reproduces its seed's mechanism (SEEDS.md) at the tensor the seed names.

Forward hooks capture, at the prefill, the outputs each mechanism is about, on every
rank of the buggy target and in the 1-process baseline.
"""

from __future__ import annotations

import pytest
import torch

from tests.examples.engine_runs import Job, run_jobs

pytestmark = pytest.mark.slow

# The default model: layer 0 dense, layers 1 and 2 MoE.
DENSE_OUT = "layers.0.mlp"
MOE_OUT = "layers.1.mlp"
ROUTED_OUT = "layers.1.mlp.experts"
SHARED_OUT = "layers.1.mlp.shared_experts"
# Under --fusion, layer 1's MoE output is reduced here (an identity without fusion).
MOE_OUT_REDUCED = "layers.2.input_norm.finish_deferred_reduction"
CAPTURED = (DENSE_OUT, MOE_OUT, ROUTED_OUT, SHARED_OUT, MOE_OUT_REDUCED)

BUG_RUNS = {
    "ep_reduce_skipped_under_fusion": "--ep 2 --fusion",
    "double_reduce": "--ep 2",
    "shared_expert_double_reduce": "--tp 2",
    "dense_tp_missing_reduce": "--tp 2 --dense-tp",
}
ATOL = 1e-4


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, list[dict[str, torch.Tensor]]]:
    jobs = [Job(name="baseline", args="", capture=CAPTURED)]
    jobs += [Job(name=bug, args=f"{args} --bug {bug}", capture=CAPTURED) for bug, args in BUG_RUNS.items()]
    return run_jobs(jobs, tmp_path_factory.mktemp("bugs"))


@pytest.fixture(scope="module")
def baseline(runs) -> dict[str, torch.Tensor]:
    return runs["baseline"][0]


def close(actual: torch.Tensor, expected: torch.Tensor) -> bool:
    return torch.allclose(actual, expected, rtol=0, atol=ATOL)


@pytest.mark.parametrize("bug", sorted(BUG_RUNS))
def test_bug_changes_the_logits(runs, baseline, bug):
    rank0 = runs[bug][0]
    worst = max((rank0[k] - baseline[k]).abs().max().item() for k in baseline if k.startswith("logits."))
    assert worst > 0.1, f"--bug {bug} did not change the logits (max diff {worst})"


def test_seed1_each_rank_keeps_its_own_experts_partial_sum(runs, baseline):
    reduced = [rank[MOE_OUT_REDUCED] for rank in runs["ep_reduce_skipped_under_fusion"]]
    assert not close(reduced[0], reduced[1])
    assert close(reduced[0] + reduced[1], baseline[MOE_OUT])


def test_seed2_moe_output_is_ep_size_times_baseline(runs, baseline):
    for rank in runs["double_reduce"]:
        assert close(rank[MOE_OUT], 2 * baseline[MOE_OUT])


def test_seed3_shared_output_doubled_while_routed_output_matches(runs, baseline):
    # Per-rank partial sums, as the experts' outputs are: summed over the ranks.
    ranks = runs["shared_expert_double_reduce"]
    assert close(ranks[0][ROUTED_OUT] + ranks[1][ROUTED_OUT], baseline[ROUTED_OUT])
    assert close(ranks[0][SHARED_OUT] + ranks[1][SHARED_OUT], 2 * baseline[SHARED_OUT])
    assert close(ranks[0][MOE_OUT], baseline[ROUTED_OUT] + 2 * baseline[SHARED_OUT])


def test_seed4_dense_output_left_as_partial_sums(runs, baseline):
    dense = [rank[DENSE_OUT] for rank in runs["dense_tp_missing_reduce"]]
    assert not close(dense[0], dense[1])
    assert close(dense[0] + dense[1], baseline[DENSE_OUT])
