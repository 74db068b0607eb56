"""Checksums of tensor bytes: which algorithm a run used, computing and checking them.

An index record's checksum names its algorithm: ``crc32:xxxxxxxx`` (schema 1 runs) or
``xxh3_64:xxxxxxxxxxxxxxxx`` (schema 2, the default since issue 17). Two checksums say
something about two tensors only when they name the same algorithm (``comparable``):
equal strings of one algorithm mean equal bytes; strings of different algorithms
always differ and mean nothing.

NOTE: xxh3_64 replaced zlib's crc32 because crc32 was 37-43% of the writer thread's
time (about 2-4 GB/s on one core); xxh3_64 runs at 30-55 GB/s here and releases the
GIL on large buffers (``benchmarks/bench_checksum.py``, docs/performance.md).
google-crc32c was slower and keeps the GIL for anything but ``bytes`` objects.
"""

from __future__ import annotations

import zlib
from typing import Callable

CRC32 = "crc32"
XXH3_64 = "xxh3_64"
# Every algorithm a reader can check, by the prefix of a record's checksum.
KNOWN: tuple[str, ...] = (CRC32, XXH3_64)


def _crc32(data: memoryview) -> str:
    return f"{zlib.crc32(data) & 0xFFFFFFFF:08x}"


def _xxh3_64(data: memoryview) -> str:
    import xxhash

    return f"{xxhash.xxh3_64_intdigest(data):016x}"


_DIGESTS: dict[str, Callable[[memoryview], str]] = {CRC32: _crc32, XXH3_64: _xxh3_64}


def _default() -> str:
    try:
        import xxhash  # noqa: F401 - a dependency; without it the writer keeps the old checksum
    except ImportError:
        return CRC32
    return XXH3_64


# What the writer computes; run.json records it (``checksum``).
DEFAULT: str = _default()


def compute(data: memoryview, algorithm: str = DEFAULT) -> str:
    """``ALGORITHM:hex`` of ``data``."""
    return f"{algorithm}:{_DIGESTS[algorithm](data)}"


def algorithm_of(checksum: str) -> str:
    """The algorithm a checksum names (``""`` for an empty or unnamed one)."""
    name, colon, _ = checksum.partition(":")
    return name if colon else ""


def comparable(*checksums: str) -> bool:
    """True when every checksum is present and all name one algorithm: only then may they be compared."""
    algorithms = {algorithm_of(checksum) for checksum in checksums}
    return len(algorithms) == 1 and "" not in algorithms


def recompute(data: memoryview, like: str) -> str | None:
    """``data``'s checksum in the algorithm ``like`` names; None when this dumpcmp does not know it."""
    algorithm = algorithm_of(like)
    return compute(data, algorithm) if algorithm in _DIGESTS else None
