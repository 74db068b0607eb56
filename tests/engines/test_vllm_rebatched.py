"""vLLM runs batched differently compare with default options (issue 24): ``--aligner auto``.

The baseline runs five prompts of different lengths one after another (TP=1,
``max_num_seqs=1``: 20 forward passes, one request each). The targets run them batched
at TP=2 (``max_num_seqs=4``, ``max_num_batched_tokens=8``): vLLM packs several
requests into a step, prefills a prompt in chunks beside other requests' decode
tokens, and starts the first step before every request has arrived, so the steps
differ from the baseline's (and may differ from run to run). The preset dumps each
token's request (``token_req_ids``, vLLM's request numbers 0-4) beside ``input_ids``
and ``positions``; ``dumpcmp compare A B`` picks ``by_request`` from them and compares
each target step with the same (request, position) tokens of the baseline.

Runs: the session's five-prompt TP=1 baseline (tests/engines/conftest.py) and two TP=2
runs made once here (the healthy one, and one with the planted skipped fused-MoE
all-reduce), each with the preset and routing.yaml.
"""

from __future__ import annotations

import json

import pytest

from tests.engines.conftest import FIVE_PROMPTS
from tests.engines.vllm_runs import BUG, PRESET, ROUTING, TP2_ENV, dumpcmp, engine_run

pytestmark = [pytest.mark.engine, pytest.mark.slow]

PROMPT_LENGTHS = (7, 5, 4, 6, 3)
NEW_TOKENS = 4
LAYERS = 2
# Each prompt's tokens, then one forward pass per new token but the last.
TOKENS = sum(PROMPT_LENGTHS) + len(PROMPT_LENGTHS) * (NEW_TOKENS - 1)
BATCHED = ("--max-num-seqs", "4", "--max-num-batched-tokens", "8")


@pytest.fixture(scope="module")
def runs(vllm_model, vllm_tp1_five_prompts, tmp_path_factory):
    root = tmp_path_factory.mktemp("vllm_rebatched")
    command = ["examples.vllm.run_vllm", vllm_model, "--tp", "2", *FIVE_PROMPTS, *BATCHED]
    paths = {"tp1": vllm_tp1_five_prompts[0], "tp2": str(root / "tp2"), "tp2_bug": str(root / "tp2_bug")}
    tokens = {"tp1": vllm_tp1_five_prompts[1],
              "tp2": engine_run(paths["tp2"], [PRESET, ROUTING], command, **TP2_ENV)[0],
              "tp2_bug": engine_run(paths["tp2_bug"], [PRESET, ROUTING, BUG], command, **TP2_ENV)[0]}
    return paths, tokens


def compare(baseline: str, target: str) -> tuple[int, dict]:
    """``dumpcmp compare BASELINE TARGET``: default options (the aligner is auto's choice)."""
    proc = dumpcmp("compare", baseline, target, "--format", "json")
    assert proc.returncode in (0, 1), proc.stderr[-3000:]
    return proc.returncode, json.loads(proc.stdout)


def step_tokens(run_dir: str, rank: int = 0) -> dict[int, list[tuple[int, int]]]:
    """(request, position) of each token of each step, from the run's token metadata dumps."""
    from dumper.reader import open_run

    found: dict[int, dict[str, list[int]]] = {}
    with open_run(run_dir) as run:
        for record in run.records:
            if record.rank == rank and record.name in ("token_req_ids", "positions"):
                found.setdefault(record.step, {})[record.name] = run.load(record).tolist()
    return {step: list(zip(meta["token_req_ids"], meta["positions"])) for step, meta in sorted(found.items())}


def test_the_runs_are_batched_differently(runs):
    paths, tokens = runs
    assert tokens["tp1"] == tokens["tp2"]  # healthy: the same greedy tokens
    baseline, target = step_tokens(paths["tp1"]), step_tokens(paths["tp2"])
    # The preset numbers vLLM's requests as LLM.generate did (0-4), with no padding rows;
    # the TP ranks agree.
    assert step_tokens(paths["tp2"], rank=1) == target
    for steps in (baseline, target):
        keys = [key for step in steps.values() for key in step]
        assert len(keys) == len(set(keys)) == TOKENS
        assert {request for request, _ in keys} == set(range(len(PROMPT_LENGTHS)))
    # One request per step in the baseline; in the target several, a prompt prefilled in
    # chunks (a step starting a request at a position other than 0 before its prompt ends).
    assert len(baseline) == len(PROMPT_LENGTHS) * NEW_TOKENS
    assert all(len({r for r, _ in step}) == 1 for step in baseline.values())
    assert len(target) < len(baseline) and max(len({r for r, _ in step}) for step in target.values()) >= 3
    chunked = [(step, r, p) for step, keys in target.items() for r, p in keys
               if 0 < p < PROMPT_LENGTHS[r] and (r, p - 1) not in keys]
    assert chunked, target


def test_a_healthy_batched_tp2_run_passes_with_default_options(runs):
    paths, _ = runs
    code, report = compare(paths["tp1"], paths["tp2"])
    assert code == 0, report["first_divergence"]
    assert report["aligner"] == "by_request"
    # The first step that differs decides (vLLM may start before every request arrived).
    assert report["aligner_reason"].startswith("auto: by_request: step ")
    assert " in the baseline, " in report["aligner_reason"]
    summary = report["summary"]
    assert summary["passed"] == summary["total"] > 0
    # One comparison per target step, each against the baseline steps holding its tokens:
    # every token of the target is compared once, none is left on one side only.
    target_steps = len(step_tokens(paths["tp2"]))
    for name, tags in (("moe_output", {"layer": 0}), ("layer_output", {"layer": 1}), ("token_req_ids", {})):
        results = [r for r in report["results"] if r["name"] == name and r["tags"] == tags]
        assert [r["step"] for r in results] == list(range(target_steps))
        assert sum(r["alignment"]["tokens"] for r in results) == TOKENS
        assert all(r["alignment"]["target"]["only_here"] == 0 for r in results)
    # The routing of every layer and step agrees (float32: no flip).
    topk = [r for r in report["results"] if r["name"] == "topk_ids"]
    assert len(topk) == target_steps * LAYERS
    assert all(r["routing"]["suspicious_flips"] == [] and r["routing"]["benign_flips"] == [] for r in topk)


def test_a_planted_bug_in_the_batched_run_is_still_found_at_its_layer(runs):
    paths, tokens = runs
    assert tokens["tp2_bug"] != tokens["tp1"]  # the bug changes the generated tokens
    code, report = compare(paths["tp1"], paths["tp2_bug"])
    assert code == 1 and report["aligner"] == "by_request"
    first = report["first_divergence"]
    assert (first["name"], first["step"], first["tags"]) == ("moe_output", 0, {"layer": 0})
    assert "missing all-reduce over tp" in first["hint"] and first["origin"] == "source"
    # Everything before it passes: the token metadata, layer 0's attention, router and
    # the routed experts' partial sums before the (skipped) reduction.
    before = report["results"][: first["index"]]
    assert {r["name"] for r in before} >= {"input_ids", "positions", "token_req_ids", "attn_output",
                                            "router_logits", "routed_expert_output"}
    assert all(r["status"] == "pass" for r in before)


@pytest.fixture(scope="module")
def bf16_runs(vllm_model, tmp_path_factory):
    """The same two shapes of run in bf16: TP=1 one request at a time, TP=2 batched and chunked."""
    root = tmp_path_factory.mktemp("vllm_rebatched_bf16")
    command = ["examples.vllm.run_vllm", vllm_model, "--dtype", "bfloat16", *FIVE_PROMPTS]
    paths = {"tp1": str(root / "tp1"), "tp2": str(root / "tp2")}
    engine_run(paths["tp1"], [PRESET, ROUTING], [*command, "--tp", "1"])
    engine_run(paths["tp2"], [PRESET, ROUTING], [*command, "--tp", "2", *BATCHED], **TP2_ENV)
    return paths


def test_a_healthy_batched_bf16_run_passes_with_default_options(bf16_runs):
    """bf16 noise between runs batched differently: one decode token's router logits are a few
    dozen values, judged at default limits widened for their size (comparator/judge/small_tensors.py)."""
    code, report = compare(bf16_runs["tp1"], bf16_runs["tp2"])
    assert code == 0, [(r["name"], r["step"], r["reason"]) for r in report["results"] if r["status"] != "pass"]
    assert report["aligner"] == "by_request"
    summary = report["summary"]
    assert summary["passed"] == summary["total"] > 0 and summary["compared_fraction"] == 1.0
    assert {r["name"] for r in report["results"]} >= {"router_logits", "moe_output", "layer_output"}
