"""Healthy parallel runs compute what the 1-process baseline computes, to fp32 rounding."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from tests.examples.engine_runs import Job, run_cli, run_jobs

pytestmark = pytest.mark.slow

# Each mode covers several paths, to keep the number of runs small.
HEALTHY_MODES = {
    "tp2_dense_tp": "--tp 2 --dense-tp",  # attention TP, moe-TP, dense MLP over attention-TP
    "ep2": "--ep 2",  # expert parallel (attention TP 2 over the same ranks)
    "tp2xep2_fusion": "--tp 2 --ep 2 --fusion",  # 4 ranks; MoE reductions deferred into the next add + norm
    "dp_attention2_tp2xep2": "--tp 2 --ep 2 --dp-attention 2 --dense-tp",  # 2 DP groups of attention-TP 2
    "dp_attention4": "--tp 4 --dp-attention 4",  # 4 DP groups of 1 rank; 4 requests, one each
}
SINGLE_REQUEST = "--prompt-lens 5"
# Seed 5's shape: one request over two DP ranks; the idle one still joins every collective.
IDLE_DP_RANK = f"--ep 2 --dp-attention 2 {SINGLE_REQUEST}"

# fp32 sums in another order: a few ulps of logits of order 1.
LOGITS_ATOL = 1e-4


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, dict[str, torch.Tensor]]:
    jobs = [Job(name="baseline", args=""), Job(name="single_request", args=SINGLE_REQUEST),
            Job(name="idle_dp_rank", args=IDLE_DP_RANK)]
    jobs += [Job(name=name, args=args) for name, args in HEALTHY_MODES.items()]
    results = run_jobs(jobs, tmp_path_factory.mktemp("modes"))
    return {name: ranks[0] for name, ranks in results.items()}


def assert_same_generation(baseline: dict[str, torch.Tensor], target: dict[str, torch.Tensor], what: str) -> None:
    assert sorted(target) == sorted(baseline), what
    for key in sorted(baseline):
        if key.startswith("logits."):
            torch.testing.assert_close(target[key], baseline[key], rtol=0, atol=LOGITS_ATOL, msg=f"{what}: {key}")
        else:
            assert torch.equal(target[key], baseline[key]), f"{what}: {key} {target[key]} != {baseline[key]}"


@pytest.mark.parametrize("mode", sorted(HEALTHY_MODES))
def test_healthy_target_matches_baseline(runs, mode):
    assert_same_generation(runs["baseline"], runs[mode], HEALTHY_MODES[mode])


def test_idle_dp_rank_matches_single_request_baseline(runs):
    assert_same_generation(runs["single_request"], runs["idle_dp_rank"], IDLE_DP_RANK)


def test_cli_prints_tokens_on_rank0_and_saves_logits(runs, tmp_path):
    saved = tmp_path / "logits.safetensors"
    proc = run_cli([*IDLE_DP_RANK.split(), "--save-logits", str(saved)])
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("moe_engine: tp=1 ep=2 dp_attention=2 bug=none (world 2")
    tokens = " ".join(str(token) for token in runs["single_request"]["tokens.req0"].tolist())
    assert lines[1:] == [f"request 0 (prompt 5 tokens): {tokens}"]
    assert_same_generation(runs["single_request"], load_file(str(saved)), "CLI")


def test_under_torchrun_each_process_is_one_rank(runs, tmp_path):
    """RANK/WORLD_SIZE/MASTER_ADDR in the environment: no workers of its own."""
    from tests.helpers.procs import torchrun_like

    saved = tmp_path / "logits.safetensors"
    code = (f"import sys\nfrom examples.moe_engine.__main__ import main\n"
            f"sys.exit(main(['--tp', '2', '--prompt-lens', '5', '--save-logits', {str(saved)!r}]))\n")
    results = torchrun_like(tmp_path / "run", code, world_size=2)
    assert "request 0 (prompt 5 tokens)" in results[0].stdout
    assert results[1].stdout == ""
    assert_same_generation(runs["single_request"], load_file(str(saved)), "torchrun")


def test_config_errors_exit_2_with_one_line():
    proc = run_cli(["--tp", "3"])
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "moe_engine: error: num_heads=4 cannot be split over the attention TP size (world/dp-attention)=3; "
        "choose sizes that divide it"
    ]
