"""dumper/fingerprint.py: cheap, layout-independent identities, recorded without ever breaking the engine."""

from __future__ import annotations

import json
import logging

import torch
from safetensors.torch import save_file

from dumper.api import Dumper
from dumper.fingerprint import checkpoint_digest, config_hash, environment, model_identity, tensors_digest


def test_weights_digest_sees_a_changed_value_and_not_the_dict_order():
    generator = torch.Generator().manual_seed(0)
    weights = {"a": torch.randn(64, 32, generator=generator), "b": torch.randn(16, generator=generator)}
    digest = tensors_digest(weights)
    assert tensors_digest(dict(reversed(list(weights.items())))) == digest
    changed = {k: v.clone() for k, v in weights.items()}
    changed["a"][0, 0] += 1.0  # a sampled position (stride 32 over 2048 values starts at 0)
    assert tensors_digest(changed) != digest
    assert tensors_digest({"a": weights["a"].to(torch.bfloat16), "b": weights["b"]}) != digest


def test_checkpoint_digest_reads_headers_not_weights(tmp_path):
    save_file({"w": torch.zeros(4, 4)}, str(tmp_path / "model.safetensors"))
    first = checkpoint_digest(tmp_path)
    assert first is not None and first.startswith("sha256:")
    save_file({"w": torch.zeros(4, 5)}, str(tmp_path / "model.safetensors"))
    assert checkpoint_digest(tmp_path) != first  # another shape: another header
    assert checkpoint_digest(tmp_path / "missing") is None and checkpoint_digest("Qwen/Qwen3-30B-A3B") is None


def test_config_hash_of_dicts_objects_and_dataclasses():
    class HFConfig:
        def to_dict(self):
            return {"hidden_size": 64, "num_layers": 2}

    assert config_hash(HFConfig()) == config_hash({"num_layers": 2, "hidden_size": 64})
    assert config_hash({"hidden_size": 65, "num_layers": 2}) != config_hash(HFConfig())


def test_environment_keeps_settings_not_per_run_values():
    env = {"DUMPCMP_MODE": "stats", "DUMPCMP_DIR": "/runs/x", "DUMPCMP_RUN_ID": "abc", "VLLM_USE_V1": "1",
           "VLLM_ATTENTION_BACKEND": "FLASH_ATTN", "HOME": "/root"}
    assert environment(env, ("VLLM_*",)) == {"DUMPCMP_MODE": "stats", "VLLM_ATTENTION_BACKEND": "FLASH_ATTN",
                                              "VLLM_USE_V1": "1"}


def test_model_identity_normalises_dtypes():
    identity = model_identity(engine="no-such-engine-package", architecture="X", config={"a": 1}, dtype=torch.bfloat16)
    assert identity["dtype"] == "bfloat16" and identity["engine_version"] is None and identity["weights"] is None


def test_record_model_never_raises_and_writes_beside_rank_json(tmp_path, caplog):
    class Broken:
        def to_dict(self):
            raise RuntimeError("config not ready")

    dumper = Dumper()
    dumper.configure(dir=str(tmp_path / "run"))
    with caplog.at_level(logging.WARNING):
        dumper.record_model(engine="x", config=Broken())  # warns, never raises
    assert "model fingerprint not recorded (RuntimeError: config not ready)" in caplog.text
    dumper.record_model(engine="x", architecture="Tiny", config={"h": 4}, dtype="float32", env=("TINY_*",))
    dumper.dump("h", torch.ones(2, 4))
    dumper.close()
    written = json.loads((tmp_path / "run" / "rank-00000" / "fingerprint.json").read_text())
    assert written["model"]["architecture"] == "Tiny" and written["model"]["config_hash"] == config_hash({"h": 4})
    assert written["schema"] == 1 and written["dumper_version"]
