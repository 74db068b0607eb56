"""The run format's data files: safetensors, written and read without copies or memory maps.

One module for both directions, so that the dtype codes and the header layout
(8-byte little-endian length, JSON header, data 8-byte aligned) are spelled once.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dumper.errors import RunFormatError
from dumper.safeio import open_regular

if TYPE_CHECKING:
    from dumper.steady_flush import SteadyFlush

# torch dtype name (str(dtype) without "torch.") -> safetensors dtype code, and back.
SAFETENSORS_CODES = {
    "bool": "BOOL", "uint8": "U8", "int8": "I8", "int16": "I16", "uint16": "U16", "int32": "I32",
    "uint32": "U32", "int64": "I64", "uint64": "U64", "float16": "F16", "bfloat16": "BF16",
    "float32": "F32", "float64": "F64", "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2",
}
DTYPE_OF_CODE = {code: dtype for dtype, code in SAFETENSORS_CODES.items()}

# A header larger than this is corrupt (ours hold a few hundred bytes per tensor).
MAX_HEADER_BYTES = 100 << 20
# A data file larger than this is not ours (the writer rolls files at DUMPCMP_FILE_MB).
MAX_DATA_FILE_BYTES = 1 << 44


@dataclass(frozen=True)
class HeaderEntry:
    """Where one tensor lies in a data file, as its header says."""

    dtype: str  # torch dtype name, e.g. "bfloat16"
    shape: tuple[int, ...]
    offset: int  # from the start of the file
    nbytes: int


def write_safetensors(tensors: dict[str, Any], path: str, *, flush: "SteadyFlush | None" = None) -> None:
    """Write a safetensors file straight from host memory (tensors or snapshots).

    The header needs only dtypes and shapes, so it goes out before any device copy
    has landed; each tensor's bytes are then written as soon as its copy is complete,
    with no intermediate copy (safetensors' ``save_file`` copies every tensor into a
    bytes object first) and without holding the GIL while the kernel copies.
    ``flush`` writes the file back to disk as it goes (dumper/steady_flush.py).
    """
    from dumper.snapshot import Snapshot
    from dumper.stats import raw_bytes

    entries = []
    header: dict[str, Any] = {}
    offset = 0
    for key, value in tensors.items():
        tensor = value.tensor if isinstance(value, Snapshot) else value
        nbytes = tensor.numel() * tensor.element_size()
        header[key] = {
            "dtype": SAFETENSORS_CODES[str(tensor.dtype).removeprefix("torch.")],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
        entries.append(value)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned, as safetensors writes it
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        if flush is not None:
            flush.begin(fd)
        written = _write_all(fd, memoryview(struct.pack("<Q", len(text)) + text))
        for value in entries:
            tensor = value.wait() if isinstance(value, Snapshot) else value
            if tensor.numel():
                written += _write_all(fd, raw_bytes(tensor))
                if flush is not None:
                    flush.wrote(written)
        if flush is not None:
            flush.end(written)
    finally:
        os.close(fd)


def _write_all(fd: int, data: memoryview) -> int:
    # Slices bound the size of one system call; os.write may also write less.
    step = 1 << 26
    position = 0
    while position < len(data):
        position += os.write(fd, data[position : position + step])
    return position


def _is_size(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1 << 62


def read_header(path: str) -> dict[str, HeaderEntry | RunFormatError]:
    """The tensors of one data file by key; raises RunFormatError for a corrupt or truncated file.

    An entry that cannot be understood is kept as its error, so that the file's other
    tensors stay readable.
    """
    try:
        with open_regular(path, limit=MAX_DATA_FILE_BYTES, what="data file") as handle:
            prefix = handle.read(8)
            if len(prefix) != 8:
                raise RunFormatError(f"{path}: corrupt safetensors file (shorter than its header)")
            (length,) = struct.unpack("<Q", prefix)
            if length > MAX_HEADER_BYTES:
                raise RunFormatError(f"{path}: corrupt safetensors file (header length {length})")
            raw = handle.read(length)
            size = os.fstat(handle.fileno()).st_size
    except FileNotFoundError:
        raise RunFormatError(f"{path}: data file is missing") from None
    except OSError as exc:
        raise RunFormatError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        header = json.loads(raw)
        if not isinstance(header, dict):
            raise ValueError("not an object")
    except (ValueError, RecursionError) as exc:
        raise RunFormatError(f"{path}: corrupt safetensors file (header: {str(exc)[:200]})") from None
    data_start = 8 + length
    entries: dict[str, HeaderEntry | RunFormatError] = {}
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        try:
            # NOTE: exact types: int("12") and int(1.5) would accept strings and floats.
            offsets, shape = entry["data_offsets"], entry["shape"]
            if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_size(o) for o in offsets)):
                raise ValueError(f"data_offsets {offsets!r:.40}")
            if not (isinstance(shape, list) and len(shape) <= 64 and all(_is_size(n) for n in shape)):
                raise ValueError(f"shape {shape!r:.40}")
            begin, end = offsets
            if end < begin:
                raise ValueError(f"data offsets {begin}..{end}")
            entries[key] = HeaderEntry(dtype=DTYPE_OF_CODE[entry["dtype"]], shape=tuple(shape),
                                       offset=data_start + begin, nbytes=end - begin)
        except (KeyError, TypeError, ValueError):
            entries[key] = RunFormatError(f"{path}: corrupt header entry for {key!r}")
    ends = [e.offset + e.nbytes for e in entries.values() if isinstance(e, HeaderEntry)]
    if ends and max(ends) > size:
        raise RunFormatError(f"{path}: truncated safetensors file ({size} bytes, header needs {max(ends)})")
    return entries
