"""A minimal PNG writer (8-bit RGB, zlib from the standard library): pictures without matplotlib."""

from __future__ import annotations

import os
import struct
import zlib
from typing import Sequence

Rgb = tuple[int, int, int]


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def encode_png(rows: Sequence[Sequence[Rgb]], *, text: dict[str, str] | None = None) -> bytes:
    """PNG bytes of an image given as rows of (r, g, b); ``text`` goes into tEXt chunks."""
    height = len(rows)
    width = len(rows[0]) if rows else 0
    if height == 0 or width == 0 or any(len(row) != width for row in rows):
        raise ValueError("an image needs at least one pixel and rows of equal length")
    raw = bytearray()
    for row in rows:
        raw.append(0)  # filter type 0: none
        for r, g, b in row:
            raw += bytes((r, g, b))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit, truecolour, no interlace
    chunks = [_chunk(b"IHDR", header)]
    for key, value in (text or {}).items():
        chunks.append(_chunk(b"tEXt", key.encode("latin-1", "replace")[:79] + b"\0" + value.encode("latin-1", "replace")))
    chunks.append(_chunk(b"IDAT", zlib.compress(bytes(raw), 9)))
    chunks.append(_chunk(b"IEND", b""))
    return b"\x89PNG\r\n\x1a\n" + b"".join(chunks)


def write_png(path: str | os.PathLike[str], rows: Sequence[Sequence[Rgb]], *, text: dict[str, str] | None = None) -> None:
    data = encode_png(rows, text=text)
    tmp = f"{os.fspath(path)}.tmp-{os.getpid()}"
    with open(tmp, "wb") as handle:
        handle.write(data)
    os.replace(tmp, path)


def read_png_size(data: bytes) -> tuple[int, int]:
    """(width, height) of PNG bytes (for tests and checks)."""
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        raise ValueError("not a PNG file")
    width, height = struct.unpack(">II", data[16:24])
    return width, height
