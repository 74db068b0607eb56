"""Load dumped tensors one at a time, with plain positional reads.

NOTE: safetensors' memory-mapped reads leave the touched file pages mapped (and counted
in the process's resident memory) for as long as the file stays open, so comparing a
run of many gigabytes would look like it needs many gigabytes. Here each tensor is
read into its own buffer and freed with the tensor; only parsed headers are cached.
SGLang ``.pt`` files are loaded through dumper/sglang_files.py.
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict
from typing import TYPE_CHECKING

from dumper.errors import RunFormatError
from dumper.format import IndexRecord
from dumper.safeio import open_regular
from dumper.safetensors_io import MAX_DATA_FILE_BYTES, HeaderEntry, read_header

if TYPE_CHECKING:
    import torch

    from dumper.run import Run

# Parsed headers kept (a run can have thousands of data files), and checked data file paths.
_HEADERS_CACHED = 256
_PATHS_CACHED = 4096


class TensorLoader:
    """Loads the records of one run; ``check`` validates a record's file and entry without reading data."""

    def __init__(self, run: Run, *, verify_checksums: bool = False) -> None:
        self.run = run
        self.verify_checksums = verify_checksums
        self._headers: OrderedDict[str, dict[str, HeaderEntry | RunFormatError] | RunFormatError] = OrderedDict()
        self._paths: dict[str, str] = {}  # record's data file (relative) -> checked real path

    def check(self, record: IndexRecord) -> None:
        """Raise RunFormatError if the record's data cannot be read (reads headers only)."""
        if self.run.format == "dumpcmp":
            self._entry(record)

    def load(self, record: IndexRecord, *, verify: bool | None = None) -> "torch.Tensor":
        """The record's tensor, a copy owned by the caller; ``verify`` (default: the loader's) checks its checksum."""
        path = self._path(record)
        if self.run.format == "sglang":
            from dumper.sglang_files import as_tensor, load_file

            return as_tensor(load_file(path)["value"], path)
        import torch

        entry = self._entry(record)
        dtype = getattr(torch, entry.dtype)
        if entry.nbytes == 0:
            tensor = torch.empty(entry.shape, dtype=dtype)
        else:
            if entry.nbytes > loadable_bytes():
                # NOTE: sizes come from the file's header; a sparse file may claim terabytes
                # (a MemoryError, or the OOM killer) while holding nothing.
                raise RunFormatError(f"{path}: {record.name} claims {entry.nbytes} bytes, more than half of this "
                                     f"machine's memory ({loadable_bytes()} bytes); not loaded")
            buffer = bytearray(entry.nbytes)
            try:
                with open_regular(path, limit=MAX_DATA_FILE_BYTES, what="data file") as handle:
                    handle.seek(entry.offset)
                    got = handle.readinto(buffer)
            except OSError as exc:
                raise RunFormatError(f"{path}: cannot read {record.name} ({exc.strerror})") from None
            if got != entry.nbytes:
                raise RunFormatError(f"{path}: truncated: {record.name} needs {entry.nbytes} bytes at {entry.offset}, found {got}")
            tensor = torch.frombuffer(buffer, dtype=dtype).reshape(entry.shape)
        if self.verify_checksums if verify is None else verify:
            from dumper.checksums import KNOWN, recompute
            from dumper.stats import raw_bytes

            # The record's own algorithm: crc32 in schema 1 runs, xxh3_64 since schema 2.
            found = recompute(raw_bytes(tensor), record.checksum)
            if found is None:
                raise RunFormatError(f"{path}: {record.name} seq {record.seq}: unknown checksum algorithm in "
                                     f"{record.checksum!r:.60} (this dumpcmp checks {', '.join(KNOWN)}; upgrade dumpcmp)")
            if found != record.checksum:
                raise RunFormatError(f"{path}: checksum mismatch for {record.name} seq {record.seq} ({found} != {record.checksum})")
        return tensor

    def _path(self, record: IndexRecord) -> str:
        if record.file is None or record.key is None:
            raise RunFormatError(f"{record.name} (step {record.step}, rank {record.rank}) has no data: run dumped in stats mode")
        relative = os.path.join(record.source, record.file)
        path = self._paths.get(relative)
        if path is None:
            # NOTE: realpath costs an lstat per path component; a data file holds many records.
            path = self._paths[relative] = inside(self.run.root, relative)
            if len(self._paths) > _PATHS_CACHED:
                self._paths.pop(next(iter(self._paths)))
        return path

    def _entry(self, record: IndexRecord) -> HeaderEntry:
        path = self._path(record)
        entries = self._header(path)
        entry = entries.get(record.key or "")
        if entry is None:
            raise RunFormatError(f"{path}: no tensor {record.key!r} for {record.name} (step {record.step}, rank {record.rank})")
        if isinstance(entry, RunFormatError):
            raise entry
        if entry.dtype != record.dtype or entry.shape != tuple(record.shape):
            raise RunFormatError(
                f"{path}: key {record.key!r} holds {list(entry.shape)} {entry.dtype}, "
                f"but the index says {list(record.shape)} {record.dtype}"
            )
        import torch

        if entry.nbytes != math.prod(entry.shape) * getattr(torch, entry.dtype).itemsize:
            raise RunFormatError(f"{path}: corrupt header entry for {record.key!r} ({entry.nbytes} bytes for {list(entry.shape)} {entry.dtype})")
        return entry

    def _header(self, path: str) -> dict[str, HeaderEntry | RunFormatError]:
        found = self._headers.get(path)
        if found is None:
            try:
                found = read_header(path)
            except RunFormatError as exc:
                found = exc  # remembered: a corrupt file is reported once per record, not re-read
            self._headers[path] = found
            if len(self._headers) > _HEADERS_CACHED:
                self._headers.popitem(last=False)
        else:
            self._headers.move_to_end(path)
        if isinstance(found, RunFormatError):
            raise found
        return found


def loadable_bytes() -> int:
    """Half the machine's physical memory: the most one tensor may claim to be loaded."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2
    except (ValueError, OSError, AttributeError):
        return 1 << 40


def inside(root: str, relative: str) -> str:
    """``relative`` under ``root``; an index must never point outside its run (symbolic links included)."""
    root_real = os.path.realpath(root)
    path = os.path.realpath(os.path.join(root_real, relative))
    if os.path.commonpath([root_real, path]) != root_real:
        raise RunFormatError(f"index entry {relative!r} points outside the run directory {root}")
    return path
