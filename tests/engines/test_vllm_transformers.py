"""vLLM on the CPU and transformers, end to end: the recipe in examples/vllm/, as a user runs it.

Five engine runs, made once (about 4 minutes on 2 busy cores); ``tp1`` is the session's,
shared with tests/engines/test_vllm_graft.py (tests/engines/conftest.py):

- ``tp1``      vLLM, TP=1, with the vLLM preset + routing.yaml   (the baseline)
- ``tp2``      vLLM, TP=2, with the vLLM preset + routing.yaml   (a healthy target)
- ``tp2_bug``  vLLM, TP=2, preset + routing.yaml + a patch that skips the fused-MoE all-reduce
- ``hf``       transformers, one process, with the transformers preset (the reference)
- ``hf_hooks`` transformers, one process, forward hooks only

and every comparison is a ``dumpcmp compare`` command of the recipe's README. The vLLM
runs add the opt-in ``examples/vllm/routing.yaml`` (the chosen experts, ``topk_ids``),
so that ``compare`` analyses their routing (docs/routing.md) at no extra run; the
transformers runs have no counterpart, so the cross-engine comparisons allow it as a
skip. One more test runs ``dumpcmp run --verify-observer`` on vLLM TP=1 (two more vLLM runs,
about 80 s).
"""

from __future__ import annotations

import json
import os
import re
import sys

import pytest

from tests.engines.vllm_runs import BUG, ENGINE_SECONDS, PRESET, ROUTING, TP2_ENV, dumpcmp, engine_run
from tests.helpers.procs import REPO

pytestmark = [pytest.mark.engine, pytest.mark.slow]

EXAMPLE = REPO / "examples" / "vllm"
# transformers' runs have no topk_ids (vLLM's routing.yaml dumps them): a skip, allowed.
THRESHOLDS = ["--thresholds", "examples/vllm/thresholds_cross_engine.yaml"]
CROSS_ENGINE = [*THRESHOLDS, "--allow-skip", "^topk_ids$"]
# 2 prompts x 4 new tokens, one prompt at a time: 8 forward passes of 2 layers.
STEPS, LAYERS = 8, 2
# Per step: input_ids, positions, token_req_ids and 6 dump points per layer, plus routing.yaml's topk_ids.
VLLM_TENSORS = STEPS * (3 + 7 * LAYERS)


@pytest.fixture(scope="module")
def model(vllm_model) -> str:
    return vllm_model


@pytest.fixture(scope="module")
def runs(model, vllm_tp1, tmp_path_factory):
    root = tmp_path_factory.mktemp("engines")
    paths = {name: str(root / name) for name in ("tp2", "tp2_bug", "hf", "hf_hooks")}
    paths["tp1"] = vllm_tp1[0]  # shared with the other engine modules (tests/engines/conftest.py)
    vllm = ["examples.vllm.run_vllm", model]
    tp2_env = TP2_ENV
    runs: dict[str, tuple[list[list[int]], str]] = {
        "tp1": (vllm_tp1[1], ""),
        "tp2": engine_run(paths["tp2"], [PRESET, ROUTING], [*vllm, "--tp", "2"], **tp2_env),
        "tp2_bug": engine_run(paths["tp2_bug"], [PRESET, ROUTING, BUG], [*vllm, "--tp", "2"], **tp2_env),
        "hf": engine_run(paths["hf"], ["transformers/qwen3_moe"], ["examples.vllm.run_transformers", model]),
        "hf_hooks": engine_run(paths["hf_hooks"], [], ["examples.vllm.run_transformers", model, "--hooks"]),
    }
    yield paths, {name: tokens for name, (tokens, _) in runs.items()}
    print("\nengine run seconds: " + ", ".join(f"{name} {seconds:.0f}" for name, seconds in ENGINE_SECONDS.items()))


def compare(baseline: str, target: str, *options: str) -> tuple[int, dict]:
    proc = dumpcmp("compare", baseline, target, "--format", "json", *options)
    assert proc.returncode in (0, 1), proc.stderr[-3000:]
    return proc.returncode, json.loads(proc.stdout)


def by_name(report: dict, name: str) -> list[dict]:
    return [r for r in report["results"] if r["name"] == name]


def test_every_run_generates_the_same_greedy_tokens(runs):
    _, tokens = runs
    assert tokens["tp1"] == tokens["tp2"] == tokens["hf"] == tokens["hf_hooks"]
    assert tokens["tp2_bug"] != tokens["tp1"]  # the planted bug changes the output


def test_vllm_tp2_matches_tp1_with_the_preset(runs):
    paths, _ = runs
    code, report = compare(paths["tp1"], paths["tp2"])
    assert code == 0 and report["first_divergence"] is None
    assert report["summary"]["passed"] == report["summary"]["total"] == VLLM_TENSORS
    # The preset's dims put the TP=2 ranks back together as the TP=1 run holds them.
    (routed, *_), (moe, *_) = by_name(report, "routed_expert_output"), by_name(report, "moe_output")
    assert routed["target"]["unshard"] == "sum over tp(2)"
    assert moe["target"]["unshard"] == "pick one tp replica of 2, verify the rest"


def test_vllm_tp2_routing_agrees_with_tp1(runs):
    """routing.yaml's topk_ids: compare analyses each layer's routing per step; in float32
    TP=1 and TP=2 pick the same experts (a flip would have to be benign and listed)."""
    paths, _ = runs
    code, report = compare(paths["tp1"], paths["tp2"])
    assert code == 0
    topk = by_name(report, "topk_ids")
    assert len(topk) == STEPS * LAYERS and all(r["status"] == "pass" for r in topk)
    for result in topk:
        routing = result["routing"]
        assert routing is not None and routing["problem"] is None, result
        assert routing["top_k"] == 2 and routing["router_logits_pass"] is True
        assert routing["suspicious_flips"] == []
        assert all(flip["margin"] <= routing["tolerance"] for flip in routing["benign_flips"])


def test_a_skipped_moe_all_reduce_is_the_first_divergence(runs):
    paths, _ = runs
    code, report = compare(paths["tp1"], paths["tp2_bug"])
    first = report["first_divergence"]
    assert code == 1
    assert (first["name"], first["step"], first["tags"]) == ("moe_output", 0, {"layer": 0})
    assert "missing all-reduce over tp" in first["hint"] and first["origin"] == "source"
    # The routed experts' partial sums before the (skipped) reduction still match.
    assert by_name(report, "routed_expert_output")[0]["status"] == "pass"
    # The routing before the bug agrees: the failure is not blamed on a flip.
    assert by_name(report, "topk_ids")[0]["routing"]["suspicious_flips"] == []


def test_transformers_preset_reference_against_vllm_tp2(runs):
    paths, _ = runs
    code, report = compare(paths["hf"], paths["tp2"], "--name-map", "examples/vllm/names_transformers.yaml",
                           *CROSS_ENGINE)
    assert code == 0, report["first_divergence"]
    summary = report["summary"]
    assert summary["total"] == VLLM_TENSORS and summary["passed"] == VLLM_TENSORS - STEPS * LAYERS
    assert summary["skipped"] == summary["allowed_skips"] == STEPS * LAYERS  # topk_ids
    positions = by_name(report, "positions")[0]
    assert positions["baseline"]["name"] == "position_ids"
    # transformers' [1, t, h] meets vLLM's [t, h]: the size-1 dim is dropped.
    assert by_name(report, "moe_output")[0]["baseline"]["unshard"] == "drop size-1 dim 0"


def test_transformers_hooks_reference_against_vllm_tp2(runs):
    paths, _ = runs
    code, report = compare(paths["hf_hooks"], paths["tp2"], "--name-map",
                           "examples/vllm/names_transformers_hooks.yaml", *THRESHOLDS,
                           "--allow-skip", r"^(input_ids|positions|token_req_ids|layer_input|topk_ids)$|\.output\.[12]$")
    assert code == 0, report["first_divergence"]
    compared = [r for r in report["results"] if r["status"] == "pass"]
    assert {r["name"] for r in compared} == {"attn_output", "router_logits", "routed_expert_output", "moe_output",
                                              "layer_output"}
    assert len(compared) == STEPS * LAYERS * 5
    assert {r["baseline"]["name"] for r in by_name(report, "moe_output")} == {
        f"model.layers.{layer}.mlp.output" for layer in range(LAYERS)}
    skipped = {r["name"] for r in report["results"] if r["status"] == "skip"}
    assert {"input_ids", "positions", "token_req_ids", "layer_input", "topk_ids"} <= skipped


def test_a_planted_bug_still_stands_out_against_the_transformers_reference(runs):
    paths, _ = runs
    code, report = compare(paths["hf"], paths["tp2_bug"], "--name-map", "examples/vllm/names_transformers.yaml",
                           *CROSS_ENGINE)
    first = report["first_divergence"]
    assert code == 1
    assert (first["name"], first["step"], first["tags"]) == ("moe_output", 0, {"layer": 0})
    assert "missing all-reduce over tp" in first["hint"]
    # Everything before it passes under the cross-engine thresholds (topk_ids: an allowed skip).
    before = [r for r in report["results"][: first["index"]] if r["name"] != "topk_ids"]
    assert before and all(r["status"] == "pass" for r in before)


def test_dumping_does_not_change_vllm_tp1(model, tmp_path):
    """``dumpcmp run --verify-observer`` (docs/routing.md): the fully dumped TP=1 run, then a
    run dumping only its last tensor (layer_output); the two agree bitwise."""
    run_dir = tmp_path / "observed"
    _, stderr = engine_run(str(run_dir), [PRESET], ["examples.vllm.run_vllm", model, "--tp", "1"],
                           options=("--verify-observer",))
    assert "observer check: no change (tensor layer_output" in stderr, stderr[-3000:]
    check = json.loads((run_dir / "run.json").read_text())["observer_check"]
    assert (check["changed"], check["method"], check["observed"]) == (False, "tensor", "layer_output")
    assert check["exit_codes"] == {"dumping_on": 0, "reference": 0}
    assert len(check["outputs"]) == STEPS * LAYERS and all(o["identical"] for o in check["outputs"])


# Forces vLLM's "the combine kernel already reduced the fused output" state (an EP
# all2all backend's) on the CPU: at TP=1 nothing is reduced either way, so only the
# dims the preset chooses change.
FORCE_FUSED_OUTPUT_REDUCED = """
patches:
  - target: vllm.model_executor.layers.fused_moe.runner.moe_runner.MoERunner.forward
    edits:
      - at: entry
        prepend: "type(self)._fused_output_is_reduced = property(lambda runner: True)"
"""


def test_the_preset_dims_follow_vllms_fused_output_is_reduced(model, tmp_path):
    """The else branch (not reduced: tp:partial) is what every other run here records
    (test_vllm_tp2_matches_tp1_with_the_preset sums routed_expert_output over tp); forcing
    the attribute takes the other branch."""
    from dumper.reader import open_run

    force = tmp_path / "force_reduced.yaml"
    force.write_text(FORCE_FUSED_OUTPUT_REDUCED)
    run = str(tmp_path / "forced")
    engine_run(run, [PRESET, str(force)], ["examples.vllm.run_vllm", model, "--tp", "1"])
    with open_run(run) as opened:
        dims = {r.dims for r in opened.records if r.name == "routed_expert_output"}
    assert dims == {"t h # tp:replicated"}


def test_healthy_bf16_tp2_passes_against_tp1_with_default_limits(model, tmp_path):
    """bf16, four prompts of eight new tokens, TP=1 against TP=2, default thresholds and no
    allow-list: benign flips at near-ties are judged by routing.yaml's topk_ids, and the rows
    they reach are left out downstream (docs/routing.md)."""
    vllm = ["examples.vllm.run_vllm", model, "--dtype", "bfloat16", "--prompts", "4", "--max-tokens", "8"]
    paths = {"tp1": str(tmp_path / "tp1"), "tp2": str(tmp_path / "tp2")}
    tokens_tp1, _ = engine_run(paths["tp1"], [PRESET, ROUTING], [*vllm, "--tp", "1"])
    tokens_tp2, _ = engine_run(paths["tp2"], [PRESET, ROUTING], [*vllm, "--tp", "2"],
                               VLLM_CPU_OMP_THREADS_BIND="0|1")
    assert tokens_tp1 == tokens_tp2
    code, report = compare(paths["tp1"], paths["tp2"])
    assert code == 0, report["exit_reason"]
    summary = report["summary"]
    assert summary["failed"] == summary["errored"] == 0 and summary["passed"] > 0
    assert summary["skipped"] == summary["nothing_compared"]  # only results every row of which was left out
    topk = by_name(report, "topk_ids")
    assert topk and all(r["status"] == "pass" and not r["routing"]["suspicious_flips"] for r in topk)


def test_transformers_layers_compiled_dump_what_eager_transformers_dumps(runs, model, tmp_path):
    """transformers with each decoder layer under torch.compile(fullgraph=True): the preset's
    dumps become graph operators; the records, and their order, are the eager run's."""
    paths, tokens = runs
    compiled = str(tmp_path / "hf_compiled")
    proc = dumpcmp("run", "--patch", "transformers/qwen3_moe", "--dir", compiled, "--", sys.executable, "-m",
                   "examples.vllm.run_transformers", model, "--compile")
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = dict(re.findall(r"^(GENERATED|COMPILED) (.*)$", proc.stdout, re.MULTILINE))
    assert json.loads(found["GENERATED"]) == tokens["hf"]
    dynamo = json.loads(found["COMPILED"])
    assert dynamo["graphs"] >= 1 and dynamo["graph_breaks"] == 0, dynamo

    def order(run_dir: str) -> list[tuple]:
        with open(os.path.join(run_dir, "rank-00000", "index.jsonl"), encoding="utf-8") as handle:
            return [(r["step"], r["name"], r["tags"]) for r in map(json.loads, handle)]

    assert order(compiled) == order(paths["hf"])
    code, report = compare(paths["hf"], compiled)
    assert code == 0 and report["summary"]["passed"] == report["summary"]["total"] == len(order(compiled))
