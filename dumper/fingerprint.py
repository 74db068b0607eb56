"""What makes two runs comparable: the fingerprint each rank records in ``fingerprint.json``.

Written next to ``rank.json`` when the rank's directory is created, and again when an
engine preset reports the model (``dumper.record_model``)::

    {"schema": 1, "dumper_version": "0.1.0", "command": [...], "pid": 123,
     "env": {"DUMPCMP_MODE": "stats", "VLLM_ATTENTION_BACKEND": "FLASH_ATTN"},
     "patches": {"/abs/path/preset.yaml": "sha256:..."},
     "model": {"engine": "vllm", "engine_version": "0.32.0", "architecture": "Qwen3MoeForCausalLM",
               "config_hash": "sha256:...", "weights": "sha256:..." | null, "dtype": "bfloat16",
               "quantization": null, "settings": {...}} | null}

Everything here is best effort and cheap: a failure warns once (in the caller) and
never stops the engine. The weights fingerprint must not depend on the parallel layout
(a TP=2 rank holds half of each matrix), so presets fingerprint the checkpoint files
(:func:`checkpoint_digest`) or the full weights before sharding (:func:`tensors_digest`).
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import struct
from typing import Any, Iterable, Mapping

FINGERPRINT_FILE = "fingerprint.json"
FINGERPRINT_SCHEMA = 1
# DUMPCMP_* settings that differ between any two runs by construction: not part of a fingerprint.
_PER_RUN_ENV = ("DUMPCMP_DIR", "DUMPCMP_RUN_ID", "DUMPCMP_COMMAND", "DUMPCMP_PATCH", "DUMPCMP_OVERWRITE")
# How many values of each tensor tensors_digest() hashes (spread evenly over the tensor).
_SAMPLES_PER_TENSOR = 64


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()[:16]


def config_hash(config: Any) -> str:
    """A hash of a model config: a mapping, a dataclass, or an object with ``to_dict()`` (transformers)."""
    import dataclasses

    if hasattr(config, "to_dict"):
        config = config.to_dict()
    elif dataclasses.is_dataclass(config) and not isinstance(config, type):
        config = dataclasses.asdict(config)
    elif not isinstance(config, Mapping):
        config = vars(config)
    text = json.dumps(config, sort_keys=True, default=str, separators=(",", ":"))
    return _sha256(text.encode("utf-8"))


def tensors_digest(tensors: Mapping[str, Any]) -> str:
    """Names, shapes, dtypes and an evenly spread sample of values of full (unsharded) tensors."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach()
        flat = tensor.reshape(-1)
        digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}|".encode())
        if flat.numel():
            stride = max(1, flat.numel() // _SAMPLES_PER_TENSOR)
            sample = flat[::stride][:_SAMPLES_PER_TENSOR].float().cpu()
            digest.update(struct.pack(f"<{sample.numel()}f", *sample.tolist()))
    return "sha256:" + digest.hexdigest()[:16]


def checkpoint_digest(path: str | os.PathLike[str] | None) -> str | None:
    """The checkpoint files of a model directory: names, sizes and safetensors headers.

    Reads only each file's header (a few kB), so it costs nothing next to loading the
    model; None when ``path`` is not a local directory with weight files.
    """
    if path is None or not os.path.isdir(path):
        return None
    digest = hashlib.sha256()
    files = sorted(f for f in os.listdir(path) if f.endswith((".safetensors", ".bin", ".pt", ".gguf")))
    if not files:
        return None
    for name in files:
        full = os.path.join(path, name)
        digest.update(f"{name}|{os.path.getsize(full)}|".encode())
        if name.endswith(".safetensors"):
            with open(full, "rb") as handle:
                (length,) = struct.unpack("<Q", handle.read(8))
                digest.update(handle.read(min(length, 100 << 20)))
    return "sha256:" + digest.hexdigest()[:16]


def engine_version(engine: str | None) -> str | None:
    if not engine:
        return None
    from importlib import metadata

    try:
        return metadata.version(engine)
    except metadata.PackageNotFoundError:
        return None


def model_identity(*, engine: str | None = None, architecture: str | None = None, config: Any = None,
                   weights: str | None = None, dtype: Any = None, quantization: Any = None,
                   settings: Mapping[str, Any] | None = None, version: str | None = None) -> dict[str, Any]:
    """The model part of a fingerprint, from what an engine preset knows once the model is loaded."""
    return {
        "engine": engine,
        "engine_version": version or engine_version(engine),
        "architecture": architecture,
        "config_hash": config_hash(config) if config is not None else None,
        "weights": weights,
        "dtype": str(dtype).removeprefix("torch.") if dtype is not None else None,
        "quantization": str(quantization) if quantization is not None else None,
        "settings": {str(k): _plain(v) for k, v in sorted((settings or {}).items())},
    }


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def environment(environ: Mapping[str, str], patterns: Iterable[str] = ()) -> dict[str, str]:
    """``DUMPCMP_*`` settings (not the per-run ones) and the engine settings a preset names (globs)."""
    patterns = ("DUMPCMP_*", *patterns)
    return {
        name: value for name, value in sorted(environ.items())
        if any(fnmatch.fnmatchcase(name, p) for p in patterns) and name not in _PER_RUN_ENV
    }


def patch_hashes(paths: Iterable[str]) -> dict[str, str]:
    hashes = {}
    for path in paths:
        try:
            with open(path, "rb") as handle:
                hashes[os.path.abspath(path)] = _sha256(handle.read())
        except OSError:
            hashes[os.path.abspath(path)] = "unreadable"
    return hashes


def build_fingerprint(*, command: Iterable[str], environ: Mapping[str, str], model: dict[str, Any] | None,
                      env_patterns: Iterable[str] = ()) -> dict[str, Any]:
    from dumper.format import TOOL_VERSION

    patches = [p for p in environ.get("DUMPCMP_PATCH", "").split(os.pathsep) if p.strip()]
    return {
        "schema": FINGERPRINT_SCHEMA,
        "dumper_version": TOOL_VERSION,
        "command": list(command),
        "pid": os.getpid(),
        "env": environment(environ, env_patterns),
        "patches": patch_hashes(patches),
        "model": model,
    }


def write_fingerprint(rank_dir: str, fingerprint: dict[str, Any]) -> None:
    from dumper.format import write_json_atomic

    write_json_atomic(os.path.join(rank_dir, FINGERPRINT_FILE), fingerprint)
