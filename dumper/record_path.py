"""A dump call's way from the engine thread to the writer: filtering, refusals, the snapshot,
graph capture routing, and the queue.

Functions of the owning :class:`dumper.api.Dumper` (split from dumper/api.py to keep it small).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import TYPE_CHECKING, Any

from dumper.record_check import BadRecord, check_tags, unwritable_tensor
from dumper.torch_state import capturing as _capturing, is_tensor as _is_tensor

if TYPE_CHECKING:
    from dumper.api import Dumper

log = logging.getLogger("dumper.api")


def dump(owner: "Dumper", name: str, value: Any, dims: str | None, tags: dict[str, Any], *, graft: str | None = None) -> None:
    if getattr(owner._local, "suppressed", 0):
        return
    sticky = getattr(owner._local, "tags", None)
    all_tags = {**sticky, **tags} if sticky else tags
    info = owner._parallel.current()
    # NOTE: what the writer cannot encode is refused here, record by record: in the
    # writer it cost the whole batch, and a record the reader refuses is lost too.
    if not isinstance(name, str):
        owner._refuse(repr(name)[:80], f"the name must be a string, not {type(name).__name__}", info)
        return
    if dims is not None and not isinstance(dims, str):
        owner._warn_once(f"dims-type:{name}", f"dumpcmp: dims of {name!r} must be a string like 't h', not "
                        f"{type(dims).__name__}; dumped without dims")
        dims = None
    try:
        checked = check_tags(all_tags)
    except BadRecord as exc:
        owner._refuse(name, str(exc), info)
        return
    for note in checked.notes:
        owner._warn_once(f"tag-note:{name}:{note}", f"dumpcmp: {name!r}: {note}")
    all_tags = checked.tags
    dump_filter = owner._config.filter
    # NOTE: a grafted record is always written: compare needs its flag to tell the graft
    # point, whatever --filter keeps.
    if graft is None and not dump_filter.keeps(name=name, step=owner._step, rank=info.rank, tags=all_tags):
        # Under capture the step is not known yet: each replay is filtered by its own.
        if dump_filter.steps is None or not _capturing() or not dataclasses.replace(dump_filter, steps=None).keeps(
                name=name, step=owner._step, rank=info.rank, tags=all_tags):
            return
    if callable(value) and not _is_tensor(value):
        if _capturing():
            from dumper.cudagraph import LOST_CALLABLE
            from dumper.graph_replay import lose_under_capture

            lose_under_capture(owner, name, LOST_CALLABLE)
            return
        value = value()
    owner._dump_value(name, value, dims, all_tags, info, graft)



def dump_value(owner: "Dumper", name: str, value: Any, dims: str | None, tags: dict[str, Any], info,
                graft: str | None = None) -> None:
    import torch

    if isinstance(value, torch.Tensor):
        owner._enqueue(name, value, dims, tags, info, graft)
    elif isinstance(value, (tuple, list)):
        for position, item in enumerate(value):
            if item is not None:
                owner._dump_value(f"{name}.{position}", item, dims, tags, info)
    elif isinstance(value, dict):
        for key, item in value.items():
            if item is not None:
                owner._dump_value(f"{name}.{key}", item, dims, tags, info)
    elif isinstance(value, (bool, int, float)):
        owner._enqueue(name, torch.tensor(value), dims, tags, info)
    elif value is None:
        return
    else:
        owner._warn_once(
            f"type:{name}",
            f"dumpcmp: not dumping {name!r}: a {type(value).__name__} is not a tensor "
            "(pass a tensor, a tuple/list/dict of tensors, a number, or a callable returning one)",
        )



def enqueue(owner: "Dumper", name: str, tensor: Any, dims: str | None, tags: dict[str, Any], info,
             graft: str | None = None) -> None:
    import torch

    if tensor.is_complex() or tensor.layout != torch.strided:
        owner._warn_once(
            f"dtype:{name}",
            f"dumpcmp: not dumping {name!r}: {tensor.dtype} / {tensor.layout} tensors are not supported "
            "(dump .real/.imag or .to_dense())",
        )
        return
    unwritable = unwritable_tensor(tensor)
    if unwritable is None and tensor.numel() * tensor.element_size() > owner._config.queue_bytes:
        storage = tensor.untyped_storage().nbytes() if not tensor.is_meta else 0
        if tensor.numel() * tensor.element_size() > storage:
            # An expanded (stride-0) or overlapping view: copying it would allocate its whole
            # logical size (gigabytes from a few bytes) on the engine's device.
            unwritable = (f"an expanded view of {tensor.numel() * tensor.element_size()} bytes over "
                          f"{storage} bytes of storage, more than the queue ({owner._config.queue_bytes} "
                          "bytes, DUMPCMP_QUEUE_MB); dump the unexpanded tensor")
    if unwritable is not None:
        owner._refuse(name, unwritable, info)
        return
    writer = owner._writer or owner._start_writer(info)
    snapshotter = owner._snapshotter
    if writer is None or snapshotter is None:
        return
    if (tensor.is_cuda or owner._graphs is not None) and _capturing():
        # A copy enqueued now runs at every replay: it goes into a buffer of the
        # graph, emitted after each replay (dumper/graph_replay.py).
        from dumper.graph_replay import record_under_capture

        record_under_capture(owner, name, tensor, dims, tags, info)
        return
    if tensor.is_cuda and not owner._graph_hooked:
        owner._graph_dumps()  # hook CUDAGraph before the first capture with dumps in it
    owner._submit(writer, name, tensor, dims, tags, info, graft)



def submit(owner: "Dumper", writer, name: str, tensor: Any, dims: str | None, tags: dict[str, Any], info,
            graft: str | None = None):
    """Snapshot ``tensor`` and queue it; returns the snapshot's completion event (None on the CPU)."""
    from dumper.writer import PendingRecord

    with owner._lock:
        seq = owner._seq
        owner._seq += 1
    snapshotter = owner._snapshotter
    if snapshotter is None:
        raise RuntimeError("dumpcmp: internal error: a record reached the writer before its snapshotter existed")
    snapshot = snapshotter.take(tensor)
    event = snapshot.event  # read before the writer thread can take it
    record = PendingRecord(
            seq=seq,
            step=owner._step,
            name=name,
            tags=dict(tags),
            rank=info.rank,
            world_size=info.world_size,
            parallel=dict(info.axes),
            dims=dims,
            time=time.time(),
            snapshot=snapshot,
            nbytes=tensor.numel() * tensor.element_size(),
            graft=graft,
        )
    # NOTE: close() on another thread may have closed this writer since it was read; the
    # record then goes to the next writer instead of being dropped without a word.
    for _ in range(3):
        if writer.submit(record) is not False:
            break
        writer = owner._writer or owner._start_writer(info)
        if writer is None:
            break
    return event
