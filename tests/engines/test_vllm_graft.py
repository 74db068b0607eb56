"""Grafting on vLLM CPU TP=2 (Qwen3-MoE preset): the baseline's MoE output put back where a planted bug broke it.

The bug (examples/vllm/bug_skip_moe_allreduce.yaml) skips the fused-MoE all-reduce, so
each TP rank keeps its own partial sum of every layer's MoE output. Grafting the TP=1
baseline's ``moe_output`` into the buggy TP=2 run at every layer makes everything
downstream agree again, and the greedy tokens come back; grafting layer 0 only moves
the divergence to layer 1's MoE output, the same planted bug one layer on.
Two vLLM TP=2 runs (about a minute each on 2 busy cores); the TP=1 baseline is the
session's (tests/engines/conftest.py).
"""

from __future__ import annotations

import json

import pytest

from tests.engines.vllm_runs import BUG, PRESET, ROUTING, TP2_ENV, dumpcmp, engine_run

pytestmark = [pytest.mark.engine, pytest.mark.slow]


@pytest.fixture(scope="module")
def grafted(vllm_model, vllm_tp1, tmp_path_factory) -> dict[str, tuple[str, list[list[int]]]]:
    root = tmp_path_factory.mktemp("vllm_graft")
    runs = {}
    for name, expression in (("every_layer", "name~^moe_output$"), ("layer0", "name~^moe_output$ layer=0")):
        path = str(root / name)
        tokens, stderr = engine_run(path, [PRESET, ROUTING, BUG], ["examples.vllm.run_vllm", vllm_model, "--tp", "2"],
                                    options=("--graft-from", vllm_tp1[0], "--graft", expression), **TP2_ENV)
        assert "grafted" in stderr and "none of the" not in stderr, stderr[-3000:]
        runs[name] = (path, tokens)
    return runs


def compare(baseline: str, target: str) -> tuple[int, dict]:
    proc = dumpcmp("compare", baseline, target, "--format", "json")
    assert proc.returncode in (0, 1), proc.stderr[-3000:]
    return proc.returncode, json.loads(proc.stdout)


def test_grafting_every_moe_output_makes_the_run_agree_again(vllm_tp1, grafted):
    path, tokens = grafted["every_layer"]
    assert tokens == vllm_tp1[1]  # the greedy tokens the bug changed are back
    code, report = compare(vllm_tp1[0], path)
    assert code == 0, report["first_divergence"]
    grafted_results = [r for r in report["results"] if r.get("grafted")]
    assert {r["name"] for r in grafted_results} == {"moe_output"} and len(grafted_results) == 8 * 2
    downstream = [r for r in report["results"] if r["name"] in ("layer_output", "attn_output", "router_logits")]
    assert downstream and all(r["status"] == "pass" for r in downstream)
    assert report["graft"]["outcome"] == "gone"
    info = json.loads(open(f"{path}/run.json", encoding="utf-8").read())
    assert info["graft"]["from"] == vllm_tp1[0] and info["graft"]["grafted_records"] == 8 * 2 * 2  # x 2 ranks


def test_grafting_layer0_moves_the_divergence_to_layer1(vllm_tp1, grafted):
    path, _ = grafted["layer0"]
    code, report = compare(vllm_tp1[0], path)
    assert code == 1
    first = report["first_divergence"]
    assert (first["name"], first["step"], first["tags"]) == ("moe_output", 0, {"layer": 1})
    assert "missing all-reduce over tp" in first["hint"]
    # between the graft and the next bug site, the layer agrees again
    step0 = {(r["name"], r["tags"].get("layer")): r for r in report["results"] if r["step"] == 0}
    for key in (("layer_output", 0), ("layer_input", 1), ("attn_output", 1), ("router_logits", 1)):
        assert step0[key]["status"] == "pass", step0[key]
    assert step0[("moe_output", 0)]["grafted"] is True
    verdict = report["graft"]
    assert verdict["outcome"] == "moved" and verdict["next_divergence"]["tags"] == {"layer": 1}
