"""Checked field readers for the run format's JSON (index lines, rank.json, run.json) and its JSON files.

Every field is type- and range-checked before use (a crafted file gets a ValueError naming
the field, never a traceback deeper in); the writers below replace files atomically.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from typing import Any

MAX_WORLD_SIZE = 1 << 20


def _world_size(value: Any) -> int:
    size = _int(value, "world_size")
    if not 1 <= size <= MAX_WORLD_SIZE:
        raise ValueError(f"world_size {size} is outside 1..{MAX_WORLD_SIZE}")
    return size


def _list(value: Any, field: str) -> list[Any]:
    if not isinstance(value, list):
        raise ValueError(f"{field} must be a list, not {type(value).__name__}")
    return value


def _choice(value: Any, field: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{field} must be one of {', '.join(choices)}, not {value!r:.40}")
    return value


def _mapping(value: Any, field: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"{field} must be an object, not {type(value).__name__}")
    return value


def _int(value: Any, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{field} must be an integer, not {value!r:.40}")
    if not -(1 << 62) < value < 1 << 62:
        raise ValueError(f"{field} {value} is out of range")
    return value


def _float(value: Any, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{field} must be a number, not {value!r:.40}")
    return float(value)


def _opt_float(value: Any, field: str) -> float | None:
    return None if value is None else _float(value, field)


def _str(value: Any, field: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{field} must be a string, not {value!r:.40}")
    return value


def _opt_str(value: Any, field: str) -> str | None:
    return None if value is None else _str(value, field)


def _json_default(value: Any) -> Any:
    """Tags may hold numpy/torch scalars or sets; store them as plain JSON."""
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def write_json_atomic(path: str, data: dict[str, Any], *, pad_to: int = 0) -> None:
    """Write JSON so that readers see the old file or the new one, never half of one.

    ``pad_to``: pad the file with spaces to this many bytes, so that a later
    ``rewrite_json_in_place`` fits in the blocks it already owns (a full disk).
    """
    text = json.dumps(data, indent=1, sort_keys=True, default=_json_default) + "\n"
    text += " " * max(0, pad_to - len(text.encode("utf-8")))
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def rewrite_json_in_place(path: str, data: dict[str, Any]) -> None:
    """Overwrite a padded JSON file without allocating: the last resort on a full disk."""
    text = json.dumps(data, separators=(",", ":"), sort_keys=True, default=_json_default).encode("utf-8")
    with open(path, "r+b") as handle:
        size = handle.seek(0, os.SEEK_END)
        if len(text) + 1 > size:
            raise OSError(f"{path}: {len(text)} bytes do not fit in {size}")
        handle.seek(0)
        handle.write(text + b"\n" + b" " * (size - len(text) - 1))
