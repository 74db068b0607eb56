"""Take a private copy of a tensor on the engine thread, as cheaply as possible.

CPU: a copy into a reused host buffer (a fresh multi-MB allocation costs more in
page faults than the copy itself). CUDA: an asynchronous device-to-host copy into
a reused pinned buffer on a side stream, with an event the writer thread waits on;
the engine thread never synchronises with the device.
"""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass
from typing import Any

import torch


class HostBufferPool:
    """Free lists of byte buffers by exact size; engines dump the same shapes every step."""

    def __init__(self, *, pinned: bool, limit_bytes: int) -> None:
        self._pinned = pinned
        self._limit = limit_bytes
        self._free: dict[int, list[torch.Tensor]] = collections.defaultdict(list)
        self._free_bytes = 0
        self._lock = threading.Lock()

    def take(self, nbytes: int) -> torch.Tensor:
        with self._lock:
            free = self._free.get(nbytes)
            if free:
                self._free_bytes -= nbytes
                return free.pop()
        return torch.empty(nbytes, dtype=torch.uint8, pin_memory=self._pinned)

    def give(self, buffer: torch.Tensor) -> None:
        nbytes = buffer.numel()
        with self._lock:
            if self._free_bytes + nbytes > self._limit:
                # Keep the pool bounded: drop the largest idle size class first.
                for size in sorted(self._free, reverse=True):
                    while self._free[size] and self._free_bytes + nbytes > self._limit:
                        self._free[size].pop()
                        self._free_bytes -= size
                if self._free_bytes + nbytes > self._limit:
                    return
            self._free[nbytes].append(buffer)
            self._free_bytes += nbytes


@dataclass(kw_only=True)
class Snapshot:
    tensor: torch.Tensor  # on the host; not safe to read before wait() returns
    event: "torch.cuda.Event | None" = None
    buffer: Any = None  # the pool's handle for the host memory
    pool: "HostBufferPool | PinnedRing | None" = None
    spare_events: list | None = None  # where a completed copy event goes back for reuse
    _completed: object = None

    def wait(self) -> torch.Tensor:
        # NOTE: called from the writer and its digest workers alike; read the event once.
        event = self.event
        if event is not None:
            # NOTE: poll rather than Event.synchronize(): a thread that waits must never
            # hold the GIL while the engine thread wants it, and sleeping gives it back.
            delay = 2e-5
            while not event.query():
                time.sleep(delay)
                delay = min(delay * 2, 1e-3)
            self._completed = event
            self.event = None
        return self.tensor

    def release(self) -> None:
        """Return the host buffer for reuse; the tensor must not be used afterwards."""
        if self.pool is not None and self.buffer is not None:
            self.pool.give(self.buffer)
        if self._completed is not None and self.spare_events is not None:
            self.spare_events.append(self._completed)
        self._completed = None
        self.buffer = None
        self.pool = None


class PinnedRing:
    """One pinned host arena, handed out in allocation order and freed (mostly) in order.

    Pinning host memory costs about 0.6 ms per MB and can stall the device, so it must
    not happen per dump on the engine thread: the arena is pinned once, at the first
    CUDA dump, and sized like the writer's queue, which already bounds the bytes in
    flight. ``take`` returns None when the arena has no room; the caller then falls
    back to a per-size pinned pool (correct, only slower).
    """

    _ALIGN = 512

    def __init__(self, capacity: int, *, pinned: bool = True) -> None:
        self._arena = torch.empty(capacity, dtype=torch.uint8, pin_memory=pinned)
        self._capacity = capacity
        self._head = 0
        # [start, end, released], oldest first; freed from the left.
        self._live: collections.deque[list] = collections.deque()
        self._lock = threading.Lock()

    def take(self, nbytes: int) -> tuple[torch.Tensor, list] | None:
        size = -(-max(nbytes, 1) // self._ALIGN) * self._ALIGN
        with self._lock:
            live = self._live
            if not live:
                start = 0
            else:
                tail = live[0][0]
                wrapped = live[-1][0] < tail
                if not wrapped and self._head + size <= self._capacity:
                    start = self._head
                elif not wrapped and size <= tail:
                    start = 0
                elif wrapped and self._head + size <= tail:
                    start = self._head
                else:
                    return None
            if start + size > self._capacity:
                return None
            entry = [start, start + size, False]
            live.append(entry)
            self._head = start + size
        return self._arena[start : start + nbytes], entry

    def give(self, entry: list) -> None:
        with self._lock:
            entry[2] = True
            live = self._live
            while live and live[0][2]:
                live.popleft()


def _view_as(buffer: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return buffer.view(like.dtype).view(like.shape)


class Snapshotter:
    def __init__(self, *, pool_bytes: int = 1 << 30) -> None:
        self._copiers: dict[int, _DeviceCopier] = {}
        self._host_pool = HostBufferPool(pinned=False, limit_bytes=pool_bytes)
        self._pinned_pool: HostBufferPool | None = None
        self._pinned_ring: PinnedRing | None = None
        self._pool_bytes = pool_bytes

    def take(self, value: torch.Tensor) -> Snapshot:
        value = value.detach()
        if value.device.type == "cuda":
            return self._take_cuda(value)
        if value.device.type != "cpu":
            return Snapshot(tensor=value.to("cpu"))
        nbytes = value.numel() * value.element_size()
        if nbytes == 0:
            return Snapshot(tensor=value.clone(memory_format=torch.contiguous_format))
        buffer = self._host_pool.take(nbytes)
        copy = _view_as(buffer, value)
        copy.copy_(value)
        return Snapshot(tensor=copy, buffer=buffer, pool=self._host_pool)

    def take_many(self, values: list[torch.Tensor]) -> list[Snapshot]:
        """Snapshots of several tensors of one CUDA device, taken together.

        One stream switch and one completion event for all of them: after a CUDA-graph
        replay the dumper copies every buffer of the graph at once (dumper/cudagraph.py).
        """
        if not values or values[0].device.type != "cuda":
            return [self.take(value) for value in values]
        index = values[0].get_device()
        copier, ring, pinned = self._device(index)
        engine_stream = torch.cuda.current_stream(index)
        side = copier.stream
        done = copier.spare_events.pop() if copier.spare_events else torch.cuda.Event()
        with copier.lock:
            copier.ready.record(engine_stream)
            side.wait_event(copier.ready)
        taken: list[tuple[torch.Tensor, Any, HostBufferPool | PinnedRing | None]] = []
        torch.cuda.set_stream(side)
        try:
            for value in values:
                value = value.detach()
                nbytes = value.numel() * value.element_size()
                if nbytes == 0:
                    taken.append((torch.empty(value.shape, dtype=value.dtype), None, None))
                    continue
                buffer, token, pool = _pinned_buffer(ring, pinned, nbytes)
                host = _view_as(buffer, value)
                host.copy_(value, non_blocking=True)
                value.record_stream(side)
                taken.append((host, token, pool))
        finally:
            torch.cuda.set_stream(engine_stream)
        done.record(side)
        snapshots = [Snapshot(tensor=host, event=done if pool is not None else None, buffer=token, pool=pool)
                     for host, token, pool in taken]
        # NOTE: the shared event goes back for reuse once, with the last snapshot: the
        # writer releases records in order, after every earlier one has waited on it.
        last = next((snap for snap in reversed(snapshots) if snap.event is not None), None)
        if last is not None:
            last.spare_events = copier.spare_events
        return snapshots

    def _device(self, index: int) -> tuple["_DeviceCopier", PinnedRing, HostBufferPool]:
        """This device's copier, and the pinned pools every CUDA snapshot draws from (made once)."""
        copier = self._copiers.get(index)
        if copier is None:
            copier = self._copiers[index] = _DeviceCopier(index)
        if self._pinned_pool is None or self._pinned_ring is None:
            self._pinned_pool = HostBufferPool(pinned=True, limit_bytes=self._pool_bytes)
            self._pinned_ring = PinnedRing(self._pool_bytes)
        return copier, self._pinned_ring, self._pinned_pool

    def _take_cuda(self, value: torch.Tensor) -> Snapshot:
        index = value.get_device()
        copier, ring, pinned = self._device(index)
        nbytes = value.numel() * value.element_size()
        if nbytes == 0:
            return Snapshot(tensor=torch.empty(value.shape, dtype=value.dtype))
        buffer, token, pool = _pinned_buffer(ring, pinned, nbytes)
        host = _view_as(buffer, value)
        # NOTE: the per-call cost here is engine time; the stream switch and the events
        # are done with the cheapest calls torch offers (StreamContext and a fresh
        # event per call cost about 45 us a dump).
        engine_stream = torch.cuda.current_stream(index)
        side = copier.stream
        done = copier.spare_events.pop() if copier.spare_events else torch.cuda.Event()
        with copier.lock:
            # The copy must see every write the engine queued before the dump call.
            copier.ready.record(engine_stream)
            side.wait_event(copier.ready)
        torch.cuda.set_stream(side)
        try:
            host.copy_(value, non_blocking=True)
        finally:
            torch.cuda.set_stream(engine_stream)
        done.record(side)
        # Keep the caching allocator from handing the source memory to the engine
        # before the side stream's copy has read it.
        value.record_stream(side)
        return Snapshot(tensor=host, event=done, buffer=token, pool=pool, spare_events=copier.spare_events)


class _DeviceCopier:
    """Per device: the side stream, the event ordering it after the engine, spare completion events."""

    def __init__(self, index: int) -> None:
        self.stream = torch.cuda.Stream(device=index)
        self.ready = torch.cuda.Event()
        self.lock = threading.Lock()
        self.spare_events: list = []  # completed events, recycled by Snapshot.release


def _pinned_buffer(ring: PinnedRing, pinned: HostBufferPool, nbytes: int) -> tuple[Any, Any, HostBufferPool | PinnedRing]:
    """(buffer, token the pool takes back in give(), pool): the ring first, else a pooled pinned block."""
    slot = ring.take(nbytes)
    if slot is not None:
        buffer, token = slot
        return buffer, token, ring
    buffer = pinned.take(nbytes)
    return buffer, buffer, pinned
