"""What a dump call may put in the run, checked on the engine thread before it is queued.

The writer turns a batch of records into one data file and index lines; a value it
cannot encode used to fail the whole batch (the records before it were lost too) or
write a record the reader then refused. So every record is checked here, alone:

- the name must be a string; ``dims`` a string or None (otherwise dropped, with a warning);
- tags become JSON values: numbers, strings, booleans, None, lists and string-keyed
  objects; one-element tensors and numpy scalars become numbers, NaN and infinities
  the strings ``"nan"``/``"inf"`` (with a warning), other objects their ``str()``;
  a tag that cannot be made one (a several-element tensor, a structure deeper than
  8 levels or circular, an object whose ``str()`` raises) costs its record alone;
- the tensor's dtype must be one the run format can hold (safetensors codes), and
  not on the meta device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from dumper.safetensors_io import SAFETENSORS_CODES

MAX_TAG_DEPTH = 8
MAX_TAG_ITEMS = 1000  # elements of one list/object tag
MAX_TAG_TEXT = 4096  # characters of one string tag


class BadRecord(Exception):
    """This record cannot be written; the message says why (it lands in rank.json ``lost``)."""


@dataclass(frozen=True)
class CheckedTags:
    tags: dict[str, Any]
    notes: tuple[str, ...] = ()  # conversions the user should hear about once


_PLAIN = (str, int, bool, type(None))


def check_tags(tags: dict[str, Any]) -> CheckedTags:
    """JSON-safe copies of ``tags``; raises BadRecord for a tag no JSON value can stand for."""
    if all(type(v) in _PLAIN and (type(v) is not int or -(1 << 62) < v < 1 << 62) for v in tags.values()):
        if all(type(v) is not str or len(v) <= MAX_TAG_TEXT for v in tags.values()):
            return CheckedTags(tags)  # the common case: nothing to convert
    notes: list[str] = []
    return CheckedTags({str(key): _json_value(value, f"tag {key!r}", 0, notes) for key, value in tags.items()},
                       tuple(notes))


def _json_value(value: Any, where: str, depth: int, notes: list[str]) -> Any:
    if depth > MAX_TAG_DEPTH:
        raise BadRecord(f"{where} is nested deeper than {MAX_TAG_DEPTH} levels (or refers to itself)")
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        if -(1 << 62) < value < 1 << 62:
            return int(value)
        notes.append(f"{where} = {value} is outside the index's integer range; written as a string")
        return str(value)
    if isinstance(value, float):
        if math.isfinite(value):
            return float(value)
        notes.append(f"{where} = {value} is not a JSON number; written as the string {str(value)!r}")
        return str(value)
    if isinstance(value, str):
        if len(value) > MAX_TAG_TEXT:
            raise BadRecord(f"{where} is a string of {len(value)} characters (at most {MAX_TAG_TEXT})")
        return value
    size = _element_count(value)
    if size is not None:  # torch tensors, numpy arrays and scalars
        if size != 1:
            raise BadRecord(f"{where} is a {type(value).__name__} of {size} elements; a tag holds one value "
                            "(use .item(), or dump the tensor itself)")
        return _json_value(value.item(), where, depth + 1, notes)
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value, key=repr) if isinstance(value, (set, frozenset)) else list(value)
        if len(items) > MAX_TAG_ITEMS:
            raise BadRecord(f"{where} has {len(items)} elements (at most {MAX_TAG_ITEMS})")
        return [_json_value(item, where, depth + 1, notes) for item in items]
    if isinstance(value, dict):
        if len(value) > MAX_TAG_ITEMS:
            raise BadRecord(f"{where} has {len(value)} keys (at most {MAX_TAG_ITEMS})")
        return {_text(key, where): _json_value(item, where, depth + 1, notes) for key, item in value.items()}
    return _text(value, where)


def _element_count(value: Any) -> int | None:
    if not hasattr(value, "item"):
        return None
    numel = getattr(value, "numel", None)
    if callable(numel):
        try:
            return int(numel())
        except Exception:  # noqa: BLE001 - a foreign object with a numel attribute: not a tensor
            return None
    size = getattr(value, "size", None)
    return int(size) if isinstance(size, int) else None


def _text(value: Any, where: str) -> str:
    try:
        text = str(value)
    except Exception as exc:  # noqa: BLE001 - user objects can raise anything from __str__
        raise BadRecord(f"{where}: str() of its {type(value).__name__} raised {type(exc).__name__}") from None
    if not isinstance(text, str):
        raise BadRecord(f"{where}: str() of its {type(value).__name__} did not return a string")
    if len(text) > MAX_TAG_TEXT:
        raise BadRecord(f"{where} reads as {len(text)} characters (at most {MAX_TAG_TEXT})")
    return text


def unwritable_tensor(tensor: Any) -> str | None:
    """Why ``tensor`` cannot be written to a run (None when it can)."""
    dtype = str(tensor.dtype).removeprefix("torch.")
    if dtype not in SAFETENSORS_CODES:
        return f"dtype {dtype} cannot be written (the run format has no code for it); dump it converted, e.g. .float()"
    if tensor.is_meta:
        return "a meta tensor has no data to write"
    return None
