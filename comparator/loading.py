"""Read dumped tensors with plain positional reads: memory stays what the tensors need.

NOTE: safetensors' memory-mapped reads leave the touched file pages mapped (and counted
in the process's resident memory) for as long as the file stays open, so comparing a
run of many gigabytes would look like it needs many gigabytes. Here each tensor is
read into its own buffer with ``os.pread`` and freed with the tensor; only parsed
headers are cached. Runs of other formats (SGLang ``.pt``) go through the reader.
"""

from __future__ import annotations

import json
import os
import struct
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from dumper.errors import RunFormatError
from dumper.format import IndexRecord
from dumper.reader import Run

if TYPE_CHECKING:
    import torch

_MAX_HEADER_BYTES = 100 << 20
_HEADERS_CACHED = 256

_DTYPES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2", "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8",
    "U16": "uint16", "U32": "uint32", "U64": "uint64", "BOOL": "bool",
}


class TensorLoader:
    """Loads records of one run; ``check`` validates a record's file and entry without reading data."""

    def __init__(self, run: Run, *, verify_checksums: bool = False) -> None:
        self.run = run
        self.verify_checksums = verify_checksums
        self._headers: OrderedDict[str, tuple[int, dict[str, Any]] | RunFormatError] = OrderedDict()

    def _path(self, record: IndexRecord) -> str:
        if record.file is None or record.key is None:
            raise RunFormatError(f"{record.name} (step {record.step}, rank {record.rank}) has no data: run dumped in stats mode")
        # The reader refuses index entries whose file leaves the rank directory.
        return os.path.join(self.run.path, record.source, record.file)

    def _header(self, path: str) -> tuple[int, dict[str, Any]]:
        found = self._headers.get(path)
        if found is None:
            found = self._headers[path] = _read_header(path)
            if len(self._headers) > _HEADERS_CACHED:
                self._headers.popitem(last=False)
        else:
            self._headers.move_to_end(path)
        if isinstance(found, RunFormatError):
            raise found
        return found

    def _entry(self, record: IndexRecord) -> tuple[str, int, int]:
        path = self._path(record)
        data_start, header = self._header(path)
        entry = header.get(record.key)
        if not isinstance(entry, dict):
            raise RunFormatError(f"{path}: no tensor {record.key!r} for {record.name} (step {record.step}, rank {record.rank})")
        try:
            dtype = _DTYPES[entry["dtype"]]
            shape = tuple(int(s) for s in entry["shape"])
            begin, end = (int(o) for o in entry["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise RunFormatError(f"{path}: corrupt header entry for {record.key!r}") from None
        if dtype != record.dtype or shape != tuple(record.shape):
            raise RunFormatError(
                f"{path}: key {record.key!r} holds {list(shape)} {dtype}, but the index says {list(record.shape)} {record.dtype}"
            )
        return path, data_start + begin, end - begin

    def check(self, record: IndexRecord) -> None:
        """Raise RunFormatError if the record's data cannot be read (reads headers only)."""
        if self.run.format != "dumpcmp":
            return
        self._entry(record)

    def load(self, record: IndexRecord) -> "torch.Tensor":
        if self.run.format != "dumpcmp":
            return self.run.load(record, verify=self.verify_checksums)
        import torch

        path, offset, size = self._entry(record)
        dtype = getattr(torch, record.dtype)
        if size == 0:
            tensor = torch.empty(record.shape, dtype=dtype)
        else:
            buffer = bytearray(size)
            try:
                with open(path, "rb", buffering=0) as handle:
                    handle.seek(offset)
                    got = handle.readinto(buffer)
            except OSError as exc:
                raise RunFormatError(f"{path}: cannot read {record.name} ({exc.strerror})") from None
            if got != size:
                raise RunFormatError(f"{path}: truncated: {record.name} needs {size} bytes at {offset}, found {got}")
            tensor = torch.frombuffer(buffer, dtype=dtype).reshape(record.shape)
        if self.verify_checksums:
            from dumper.stats import checksum

            found = checksum(tensor)
            if found != record.checksum:
                raise RunFormatError(f"{path}: checksum mismatch for {record.name} seq {record.seq} ({found} != {record.checksum})")
        return tensor


def _read_header(path: str) -> tuple[int, dict[str, Any]] | RunFormatError:
    try:
        with open(path, "rb", buffering=0) as handle:
            prefix = handle.read(8)
            if len(prefix) != 8:
                return RunFormatError(f"{path}: corrupt safetensors file (shorter than its header)")
            (length,) = struct.unpack("<Q", prefix)
            if length > _MAX_HEADER_BYTES:
                return RunFormatError(f"{path}: corrupt safetensors file (header length {length})")
            raw = handle.read(length)
            size = os.fstat(handle.fileno()).st_size
    except FileNotFoundError:
        return RunFormatError(f"{path}: data file is missing")
    except OSError as exc:
        return RunFormatError(f"{path}: cannot read ({exc.strerror})")
    try:
        header = json.loads(raw)
        if not isinstance(header, dict):
            raise ValueError("not an object")
    except ValueError as exc:
        return RunFormatError(f"{path}: corrupt safetensors file (header: {exc})")
    ends = [entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__" and isinstance(entry, dict)
            and isinstance(entry.get("data_offsets"), list) and len(entry["data_offsets"]) == 2]
    if ends and 8 + length + max(ends) > size:
        return RunFormatError(f"{path}: truncated safetensors file ({size} bytes, header needs {8 + length + max(ends)})")
    return 8 + length, header
