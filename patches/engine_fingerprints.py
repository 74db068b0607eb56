"""The model fingerprints engine presets record once the model is loaded (``dumper.record_model``).

One function per engine, called from the presets' injected code, so that every preset
of an engine (and each of its model runners: vLLM's GPU and CPU runners load models in
their own ``load_model``) records the same identity. A fingerprint must never break
the engine: any failure here is swallowed and the run goes on without it.
"""

from __future__ import annotations

from typing import Any

from dumper import dumper


def record_vllm_model(runner: Any) -> None:
    """Architecture, config, checkpoint digest, dtype, quantisation, VLLM_* settings of a vLLM model runner."""
    try:
        model_config = runner.model_config
        dumper.record_model(
            engine="vllm", architecture=type(runner.model).__name__, config=model_config.hf_config,
            weights=dumper.checkpoint_digest(model_config.model), dtype=model_config.dtype,
            quantization=model_config.quantization, env=("VLLM_*",),
            settings={"model": model_config.model, "revision": model_config.revision,
                      "enforce_eager": model_config.enforce_eager,
                      # a kernel swapped for PyTorch code (e.g. -rotary_embedding, examples/vllm/README.md)
                      "custom_ops": ",".join(runner.vllm_config.compilation_config.custom_ops)},
        )
    except Exception:  # noqa: BLE001 - an attribute another vLLM version lacks must not stop the engine
        pass
