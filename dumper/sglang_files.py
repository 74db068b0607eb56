"""SGLang's dump files, one at a time: their names and their safe loading.

SGLang writes one ``.pt`` file per dumped value, named by its tags::

    DUMPER_DIR/<exp_name>/step=0___rank=0___dump_index=15___name=mlp_output___layer_id=3.pt

holding ``{"value": tensor, "meta": {... "sglang_parallel_info": {...}, "dims": "t h"}}``.
Files are opened only with ``torch.load(weights_only=True, mmap=True)``: a file
holding anything but tensors and plain containers is refused, never unpickled,
and the tensor data is memory-mapped, not read, until it is compared.
"""

from __future__ import annotations

import os
import re
from typing import Any

from dumper.errors import RunFormatError, RunNotFoundError
from dumper.safeio import open_regular
from dumper.format import AxisInfo

SUFFIX = ".pt"
_TAG_SEPARATOR = "___"
_PARALLEL_INFO_KEYS = ("sglang_parallel_info", "megatron_parallel_info")
_FILE_NAME = re.compile(r"^(?:[A-Za-z_]\w*=[^/]*)(?:___[A-Za-z_]\w*=[^/]*)*\.pt$")


def looks_like_sglang_file(name: str) -> bool:
    return name.endswith(SUFFIX) and "name=" in name and "step=" in name and bool(_FILE_NAME.match(name))


def find_experiment_dir(path: str) -> str | None:
    """``path`` itself if it holds SGLang files, else its one experiment subdirectory."""
    try:
        entries = os.listdir(path)
    except OSError:
        return None
    if any(looks_like_sglang_file(e) for e in entries):
        return path
    candidates = []
    for entry in sorted(entries):
        sub = os.path.join(path, entry)
        if os.path.isdir(sub):
            try:
                if any(looks_like_sglang_file(e) for e in os.listdir(sub)):
                    candidates.append(sub)
            except OSError:
                continue
    if len(candidates) > 1:
        names = ", ".join(os.path.basename(c) for c in candidates)
        raise RunNotFoundError(f"{path} holds several SGLang experiments ({names}); give one of them")
    return candidates[0] if candidates else None


def parse_file_name(name: str) -> dict[str, Any]:
    tags: dict[str, Any] = {}
    for part in name[: -len(SUFFIX)].split(_TAG_SEPARATOR):
        key, _, value = part.partition("=")
        tags[key] = _parse_scalar(value)
    return tags


def _parse_scalar(text: str) -> Any:
    try:
        return int(text)
    except ValueError:
        return text


def parallel_axes(meta: dict[str, Any]) -> dict[str, AxisInfo]:
    """``{"tp_rank": 1, "tp_size": 2, ...}`` blocks -> ``{"tp": AxisInfo(1, 2)}``."""
    axes: dict[str, AxisInfo] = {}
    for key in _PARALLEL_INFO_KEYS:
        info = meta.get(key)
        if not isinstance(info, dict):
            continue
        for field, value in info.items():
            if not field.endswith("_rank"):
                continue
            axis = field[: -len("_rank")]
            size = info.get(f"{axis}_size")
            if isinstance(value, int) and isinstance(size, int) and size >= 1:
                axes[axis] = AxisInfo(rank=value, size=size)
    return axes


def load_file(path: str) -> dict[str, Any]:
    import pickle

    import torch

    open_regular(path, limit=MAX_PT_FILE_BYTES, what="SGLang dump").close()  # a FIFO would hang torch.load
    try:
        try:
            data = torch.load(path, weights_only=True, mmap=True, map_location="cpu")
        except RuntimeError as exc:
            if "mmap can only be used" not in str(exc):
                raise
            # A legacy (non-zip) file: no memory mapping, still weights_only.
            data = torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else "unsupported content"
        raise RunFormatError(f"{path}: refused: holds objects other than tensors ({first_line})") from None
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds on a corrupt file
        raise RunFormatError(f"{path}: unreadable SGLang dump ({type(exc).__name__}: {exc})") from None
    if not isinstance(data, dict) or "value" not in data:
        raise RunFormatError(f"{path}: not an SGLang dump (expected a dict with 'value' and 'meta')")
    return data


def as_tensor(value: Any, path: str):
    import torch

    if isinstance(value, torch.Tensor):
        return value
    _check_materialised_size(value, path)
    try:
        return torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError):
        raise RunFormatError(f"{path}: value is a {type(value).__name__}, not a tensor") from None


# Numbers one SGLang value may expand to when it is a nested list rather than a tensor.
MAX_LIST_ELEMENTS = 1 << 22
MAX_PT_FILE_BYTES = 1 << 40


def _check_materialised_size(value: Any, path: str) -> None:
    """Count what converting ``value`` would create, visiting shared lists every time.

    NOTE: ``weights_only`` allows plain lists, and the pickle memo lets a tiny file
    hold a list that refers to one inner list a thousand times, three levels deep: a
    billion floats once converted. The walk stops as soon as the budget is spent.
    """
    budget = MAX_LIST_ELEMENTS
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, (list, tuple)):
            budget -= len(item) or 1
            if budget < 0:
                raise RunFormatError(f"{path}: value is a nested list of more than {MAX_LIST_ELEMENTS} elements; "
                                     "not converted (SGLang writes tensors)")
            stack.extend(item)
        else:
            budget -= 1
    if budget < 0:
        raise RunFormatError(f"{path}: value holds more than {MAX_LIST_ELEMENTS} elements; not converted")
