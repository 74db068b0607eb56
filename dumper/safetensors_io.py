"""Writing safetensors files straight from host memory (the run format's data files)."""

from __future__ import annotations

import json
import os
import struct
from typing import Any

from dumper.snapshot import Snapshot

_SAFETENSORS_DTYPES = {
    "bool": "BOOL", "uint8": "U8", "int8": "I8", "int16": "I16", "uint16": "U16", "int32": "I32",
    "uint32": "U32", "int64": "I64", "uint64": "U64", "float16": "F16", "bfloat16": "BF16",
    "float32": "F32", "float64": "F64", "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2",
}


def write_safetensors(tensors: dict[str, Any], path: str) -> None:
    """Write a safetensors file straight from host memory (tensors or snapshots).

    The header needs only dtypes and shapes, so it goes out before any device copy
    has landed; each tensor's bytes are then written as soon as its copy is complete,
    with no intermediate copy (safetensors' ``save_file`` copies every tensor into a
    bytes object first) and without holding the GIL while the kernel copies.
    """
    from dumper.stats import raw_bytes

    entries = []
    header: dict[str, Any] = {}
    offset = 0
    for key, value in tensors.items():
        tensor = value.tensor if isinstance(value, Snapshot) else value
        nbytes = tensor.numel() * tensor.element_size()
        header[key] = {
            "dtype": _SAFETENSORS_DTYPES[str(tensor.dtype).removeprefix("torch.")],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
        entries.append(value)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned, as safetensors writes it
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        _write_all(fd, memoryview(struct.pack("<Q", len(text)) + text))
        for value in entries:
            tensor = value.wait() if isinstance(value, Snapshot) else value
            if tensor.numel():
                _write_all(fd, raw_bytes(tensor))
    finally:
        os.close(fd)


def _write_all(fd: int, data: memoryview) -> None:
    # Slices bound the size of one system call; os.write may also write less.
    step = 1 << 26
    position = 0
    while position < len(data):
        position += os.write(fd, data[position : position + step])
