"""The dumper's side of CUDA graphs: a dump under capture, and the records after a replay.

``dumper.api.Dumper`` calls these (they use its writer, snapshotter and counters);
the bookkeeping they drive (static buffers, budget, trimming, coverage) is
dumper/cudagraph.py, and dumper/graph_hooks.py reports captures and replays.
"""

from __future__ import annotations

from typing import Any

from dumper.cudagraph import (
    LOST_BUDGET,
    LOST_NOT_CUDA,
    POOL_CHECKING_CAPTURERS,
    GraphDumps,
)


def lose_under_capture(owner: Any, name: str, reason: str) -> None:
    """A dump under capture that cannot be recorded: counted, warned once with its reason."""
    owner._graph_dumps().lose(name, reason)
    writer = owner._writer
    if writer is not None:
        writer.note_lost(name, f"under CUDA graph capture: {reason}")
    owner._warn_once(f"graph:{name}:{reason}", f"dumpcmp: not dumping {name!r} under CUDA graph capture: {reason}")


def record_under_capture(owner: Any, name: str, tensor: Any, dims: str | None, tags: dict[str, Any],
                         parallel: Any) -> None:
    graphs = owner._graph_dumps()
    if not tensor.is_cuda:
        lose_under_capture(owner, name, LOST_NOT_CUDA)
        return
    refused = graphs.refusal(captured_by=_capturer)
    if refused is not None:
        lose_under_capture(owner, name, refused)
        return
    if graphs.record(name, tensor, dims=dims, tags=dict(tags), parallel=parallel):
        return
    writer = owner._writer
    if writer is not None:
        writer.note_lost(name, f"under CUDA graph capture: {LOST_BUDGET}")


def _capturer() -> str | None:
    """The module among our callers that runs the capture, if it is one we know (see POOL_CHECKING_CAPTURERS)."""
    import sys
    import types

    frame: types.FrameType | None = sys._getframe(1)
    while frame is not None:
        module = frame.f_globals.get("__name__")
        if module in POOL_CHECKING_CAPTURERS:
            return module
        frame = frame.f_back
    return None


def on_graph_event(owner: Any, event: str, graph: Any) -> None:
    """``capture_begin`` / ``capture_end`` / ``reset`` / ``replay`` of a hooked CUDAGraph."""
    graphs = owner._graphs
    if graphs is None:
        return
    if event == "capture_begin":
        graphs.begin()
    elif event == "capture_end":
        graphs.end(graph)
    elif event == "reset":
        graphs.discard(graph)
    elif event == "replay" and owner.enabled and graphs.knows(graph):
        emit_replay(owner, graphs, graph)


def emit_replay(owner: Any, graphs: GraphDumps, graph: Any) -> None:
    """After ``graph.replay()``: each static buffer, trimmed, through the eager dumps' async D2H path.

    All buffers of the replay are copied together (one stream switch, one event) and
    queued together. The next replay rewrites the buffers, so the engine's stream
    waits (on the device, never the host) for those copies before running anything else.
    NOTE: this is the dumper's own submit path (Dumper._submit) for many records at once.
    """
    import time

    import torch

    from dumper.writer import PendingRecord

    writer = owner._writer
    if writer is None:
        return
    sticky = getattr(owner._local, "tags", None)
    keep = owner._config.filter.keeps
    step = owner._step
    chosen = []
    for slot, rows in graphs.replayed(graph):
        tags = {**sticky, **slot.tags} if sticky else slot.tags
        if keep(name=slot.key.name, step=step, rank=slot.parallel.rank, tags=tags):
            chosen.append((slot, rows, tags))
    if not chosen:
        return
    with owner._lock:
        first_seq = owner._seq
        owner._seq += len(chosen)
    snapshots = owner._snapshotter.take_many([rows for _, rows, _ in chosen])
    event = next((snapshot.event for snapshot in snapshots if snapshot.event is not None), None)
    now = time.time()
    records = []
    for offset, ((slot, rows, tags), snapshot) in enumerate(zip(chosen, snapshots)):
        info = slot.parallel
        records.append(PendingRecord(
            seq=first_seq + offset, step=step, name=slot.key.name, tags=dict(tags), rank=info.rank,
            world_size=info.world_size, parallel=dict(info.axes), dims=slot.dims, time=now, snapshot=snapshot,
            nbytes=rows.numel() * rows.element_size(),
        ))
        graphs.emitted(slot.key.name, step)
    writer.submit_many(records)
    if event is not None:
        torch.cuda.current_stream().wait_event(event)
