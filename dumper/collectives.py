"""A light trace of the torch.distributed collectives a dumping process makes.

A missing or doubled all-reduce is a collective bug, so the comparator shows the
collectives each rank ran between the last passing and the first failing tensor. This
module records, per call: the op, the group (its global ranks and the parallel axis it
is, when known), the local input's shape and dtype, the step, the ``seq`` of the last
dump record before it (``after_seq``: it sits between two tensors in execution order)
and the calling function. No tensor data.

Installing wraps the module-level functions of ``torch.distributed`` (and a few of its
functional collectives); ``installed()`` is a context manager that restores them. The
wrappers never break the engine: any failure inside the tracer warns once and turns it
off, and the real collective always runs. Records go to ``collectives.jsonl`` beside
the rank's ``index.jsonl``, appended in batches (see docs/format.md).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import sys
import threading
import time
import types
from typing import Any, Callable, Iterator

from dumper.errors import DumpcmpError
from dumper.safeio import INDEX_LIMIT, read_text

log = logging.getLogger(__name__)

COLLECTIVES_FILE = "collectives.jsonl"

# op -> (positional index of the input tensor (or tensor list), of the group argument)
_C10D_OPS: dict[str, tuple[int, int]] = {
    "all_reduce": (0, 2),
    "broadcast": (0, 2),
    "all_gather": (1, 2),
    "all_gather_into_tensor": (1, 2),
    "reduce_scatter": (1, 3),
    "reduce_scatter_tensor": (1, 3),
    "all_to_all": (1, 2),
    "all_to_all_single": (1, 4),
}
# torch.distributed._functional_collectives: op -> (input index, group index)
_FUNCTIONAL_OPS: dict[str, tuple[int, int]] = {
    "all_reduce": (0, 2),
    "all_gather_tensor": (0, 2),
    "reduce_scatter_tensor": (0, 3),
    "all_to_all_single": (0, 3),
}
_TENSOR_KWARGS = ("tensor", "input_tensor", "input", "input_tensor_list", "input_list", "self")
_FLUSH_EVERY = 512  # records buffered before an append to collectives.jsonl

# Process groups the engine named (``dumper.name_group(group, "ep")``), by id; the group
# object is kept alive with its name so that its id cannot be reused.
_named_groups: dict[int, tuple[Any, str]] = {}


def name_group(group: Any, axis: str) -> None:
    """Say which parallel axis a process group is (two axes can have the same ranks)."""
    _named_groups[id(group)] = (group, str(axis))


class CollectiveTracer:
    """Buffers collective records of one process and appends them to its rank directory."""

    def __init__(self, *, owner: Any) -> None:
        self._owner = owner  # the Dumper: its step, last seq and parallel info
        self._path: str | None = None
        self._buffer: list[str] = []
        self._lock = threading.Lock()
        self._count = 0
        self._groups: dict[tuple[int, int], dict[str, Any]] = {}
        self.active = False
        self._pid = os.getpid()
        self._warned = False

    def attach(self, rank_dir: str) -> None:
        """Start recording into ``rank_dir`` (called once the rank directory exists)."""
        self._path = os.path.join(rank_dir, COLLECTIVES_FILE)
        self._pid = os.getpid()
        # An empty file says "traced, and there were none"; a process without a process
        # group makes no collectives and gets no file.
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            with open(self._path, "a", encoding="utf-8"):
                pass
        self.active = True

    def reset_after_fork(self) -> None:
        self._path = None
        self._buffer = []
        self._lock = threading.Lock()
        self._count = 0
        self._groups = {}
        self.active = False

    # ---------------------------------------------------------------- recording
    def record(self, op: str, tensor: Any, group: Any) -> None:
        if not self.active or self._pid != os.getpid() or not self._owner.enabled:
            return
        try:
            self._record(op, tensor, group)
        except Exception as exc:  # noqa: BLE001 - never break the engine
            self.active = False
            if not self._warned:
                self._warned = True
                log.warning("dumpcmp: collective tracing disabled after an error (%s: %s); the engine continues",
                            type(exc).__name__, exc)

    def _record(self, op: str, tensor: Any, group: Any) -> None:
        owner = self._owner
        if isinstance(tensor, (list, tuple)):
            tensor = tensor[0] if tensor else None
        shape = list(tensor.shape) if tensor is not None and hasattr(tensor, "shape") else None
        dtype = str(tensor.dtype).removeprefix("torch.") if tensor is not None and hasattr(tensor, "dtype") else None
        record = {
            "n": self._count,
            "op": op,
            "step": owner.current_step,
            "after_seq": owner._seq - 1,
            "group": self._group_info(group),
            "shape": shape,
            "dtype": dtype,
            "caller": _caller(),
            "time": time.time(),
        }
        line = json.dumps(record, separators=(",", ":"))
        with self._lock:
            self._count += 1
            self._buffer.append(line)
            full = len(self._buffer) >= _FLUSH_EVERY
        if full:
            self.flush()

    def _group_info(self, group: Any) -> dict[str, Any]:
        parallel = self._owner._parallel
        # NOTE: the cached answer (valid until the next step) skips current()'s torch.distributed queries.
        info = parallel._cached or parallel.current()
        key = (id(group), id(info))
        found = self._groups.get(key)
        if found is None:
            if len(self._groups) > 1024:  # one entry per group per step's parallel info
                self._groups.clear()
            ranks = _group_ranks(group)
            found = {"ranks": ranks, "axis": _axis_of(group, ranks, info)}
            self._groups[key] = found
        return found

    # ------------------------------------------------------------------ writing
    def flush(self) -> None:
        with self._lock:
            lines, self._buffer = self._buffer, []
            path = self._path
        if not lines or path is None:
            return
        try:
            with open(path, "a", encoding="utf-8") as handle:
                handle.write("\n".join(lines) + "\n")
        except OSError as exc:
            self.active = False
            if not self._warned:
                self._warned = True
                log.warning("dumpcmp: collective tracing disabled: cannot write %s (%s)", path, exc.strerror)


def _group_ranks(group: Any) -> list[int] | None:
    import torch.distributed as dist

    if isinstance(group, (list, tuple)) and all(isinstance(r, int) for r in group):
        return list(group)
    if not (dist.is_available() and dist.is_initialized()):
        return None
    try:
        if group is None:
            return list(range(dist.get_world_size()))
        return [int(r) for r in dist.get_process_group_ranks(group)]
    except Exception:  # noqa: BLE001 - a device mesh, a tag string, ...: ranks unknown
        return None


def _axis_of(group: Any, ranks: list[int] | None, info: Any) -> str | None:
    """The parallel axis of a group: its given name, else the axes its ranks fit.

    An axis fits when its size is the group's size and this rank's place in the group is
    its rank on that axis; several fitting axes are joined with ``|`` (e.g. ``attn_tp|ep``
    when both are the whole world).
    """
    named = _named_groups.get(id(group))
    if named is not None:
        return named[1]
    if ranks is None or info.rank not in ranks:
        return None
    position = ranks.index(info.rank)
    fits = [axis for axis, a in info.axes.items() if a.size == len(ranks) and a.rank == position]
    if len(ranks) == info.world_size and position == info.rank:
        fits.insert(0, "world")
    return "|".join(fits) or None


def _caller(depth: int = 3) -> list[str]:
    """``module.qualname`` of the nearest ``depth`` frames outside torch and this module, innermost first.

    NOTE: more than one frame: engines call collectives through thin wrappers (a
    ``Comm.all_reduce``); the frame above it says which block asked for the reduction.
    """
    found: list[str] = []
    frame: types.FrameType | None = sys._getframe(1)
    while frame is not None and len(found) < depth:
        module = frame.f_globals.get("__name__", "")
        if not (module.startswith("torch.") or module == __name__):
            code = frame.f_code
            found.append(f"{module}.{getattr(code, 'co_qualname', code.co_name)}")
        frame = frame.f_back
    return found


# -------------------------------------------------------------------- install
_install_lock = threading.Lock()
_tracer: CollectiveTracer | None = None


def _wrap(op: str, original: Callable[..., Any], tensor_at: int, group_at: int) -> Callable[..., Any]:
    @functools.wraps(original)
    def traced(*args: Any, **kwargs: Any) -> Any:
        tracer = _tracer
        if tracer is not None and tracer.active:
            tensor = args[tensor_at] if len(args) > tensor_at else next(
                (kwargs[k] for k in _TENSOR_KWARGS if k in kwargs), None)
            group = args[group_at] if len(args) > group_at else kwargs.get("group")
            tracer.record(op, tensor, group)
        return original(*args, **kwargs)

    traced.__dumpcmp_original__ = original  # type: ignore[attr-defined]
    return traced


def _targets() -> list[tuple[Any, str, str, int, int]]:
    """(module, attribute, op name, tensor index, group index) for every function to wrap."""
    import torch.distributed as dist

    found: list[tuple[Any, str, str, int, int]] = []
    modules = [dist]
    c10d = sys.modules.get("torch.distributed.distributed_c10d")
    if c10d is not None:
        modules.append(c10d)
    for module in modules:
        for op, (tensor_at, group_at) in _C10D_OPS.items():
            if callable(getattr(module, op, None)):
                found.append((module, op, op, tensor_at, group_at))
    try:
        import torch.distributed._functional_collectives as functional
    except Exception:  # noqa: BLE001 - older or stripped torch builds
        functional = None  # type: ignore[assignment]
    if functional is not None:
        for op, (tensor_at, group_at) in _FUNCTIONAL_OPS.items():
            if callable(getattr(functional, op, None)):
                found.append((functional, op, f"functional.{op}", tensor_at, group_at))
    return found


def install(tracer: CollectiveTracer) -> Callable[[], None]:
    """Wrap torch.distributed's collectives so that ``tracer`` sees them; returns the undo."""
    global _tracer
    import torch.distributed as dist

    if not dist.is_available():
        return lambda: None
    restored: list[tuple[Any, str, Any]] = []
    with _install_lock:
        previous = _tracer
        _tracer = tracer
        for module, attribute, op, tensor_at, group_at in _targets():
            current = getattr(module, attribute)
            if hasattr(current, "__dumpcmp_original__"):
                continue  # already wrapped (by an earlier install in this process or its parent)
            restored.append((module, attribute, current))
            setattr(module, attribute, _wrap(op, current, tensor_at, group_at))

    def undo() -> None:
        global _tracer
        with _install_lock:
            for module, attribute, original in restored:
                setattr(module, attribute, original)
            _tracer = previous

    return undo


@contextlib.contextmanager
def installed(tracer: CollectiveTracer) -> Iterator[CollectiveTracer]:
    """``with installed(tracer):`` traces the collectives made inside, then restores torch."""
    undo = install(tracer)
    try:
        yield tracer
    finally:
        tracer.flush()
        undo()


# -------------------------------------------------------------------- reading
def read_collectives(rank_dir: str) -> list[dict[str, Any]]:
    """The collective records of one rank directory; ``[]`` for runs written without them.

    A torn last line (a killed process) is skipped.
    """
    path = os.path.join(rank_dir, COLLECTIVES_FILE)
    try:
        lines = read_text(path, limit=INDEX_LIMIT, what="collective trace").splitlines()
    except (FileNotFoundError, NotADirectoryError):
        return []
    except (DumpcmpError, OSError) as exc:
        log.warning("dumpcmp: %s; collective trace ignored", exc)
        return []
    records = []
    for line in lines:
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):
            continue
        if isinstance(record, dict) and isinstance(record.get("op"), str) and isinstance(record.get("after_seq"), int):
            records.append(record)
    return records
