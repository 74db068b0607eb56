"""patches/engine_fingerprints.py: what the vLLM presets record, and that a failure never reaches the engine."""

from __future__ import annotations

from types import SimpleNamespace

from dumper import dumper
from patches.engine_fingerprints import record_vllm_model


class Qwen3MoeForCausalLM:
    pass


def _runner(tmp_path):
    model_config = SimpleNamespace(hf_config={"model_type": "qwen3_moe"}, model=str(tmp_path), dtype="float32",
                                   quantization=None, revision=None, enforce_eager=False)
    compilation = SimpleNamespace(custom_ops=["-rotary_embedding"])
    return SimpleNamespace(model=Qwen3MoeForCausalLM(), model_config=model_config,
                           vllm_config=SimpleNamespace(compilation_config=compilation))


def test_the_runner_s_model_is_recorded(tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setattr(dumper, "record_model", lambda **identity: seen.update(identity))
    record_vllm_model(_runner(tmp_path))
    assert seen["engine"] == "vllm" and seen["architecture"] == "Qwen3MoeForCausalLM"
    assert seen["settings"]["custom_ops"] == "-rotary_embedding" and seen["env"] == ("VLLM_*",)


def test_a_runner_of_another_vllm_is_skipped_silently(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(dumper, "record_model", lambda **identity: calls.append(identity))
    runner = _runner(tmp_path)
    del runner.vllm_config  # an attribute another vLLM version lacks
    record_vllm_model(runner)  # no exception reaches the engine
    assert calls == []
