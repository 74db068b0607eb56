"""Take a private copy of a tensor on the engine thread, as cheaply as possible.

CPU: a copy into a reused host buffer (a fresh multi-MB allocation costs more in
page faults than the copy itself). CUDA: an asynchronous device-to-host copy into
a reused pinned buffer on a side stream, with an event the writer thread waits on;
the engine thread never synchronises with the device.
"""

from __future__ import annotations

import collections
import threading
from dataclasses import dataclass

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
    buffer: torch.Tensor | None = None
    pool: HostBufferPool | None = None

    def wait(self) -> torch.Tensor:
        if self.event is not None:
            self.event.synchronize()
            self.event = None
        return self.tensor

    def release(self) -> None:
        """Return the host buffer for reuse; the tensor must not be used afterwards."""
        if self.pool is not None and self.buffer is not None:
            self.pool.give(self.buffer)
        self.buffer = None
        self.pool = None


def _view_as(buffer: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return buffer.view(like.dtype).view(like.shape)


class Snapshotter:
    def __init__(self, *, pool_bytes: int = 1 << 30) -> None:
        self._side_streams: dict[int, torch.cuda.Stream] = {}
        self._host_pool = HostBufferPool(pinned=False, limit_bytes=pool_bytes)
        self._pinned_pool: HostBufferPool | None = None
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

    def _take_cuda(self, value: torch.Tensor) -> Snapshot:
        device = value.device
        index = device.index if device.index is not None else torch.cuda.current_device()
        stream = self._side_streams.get(index)
        if stream is None:
            stream = self._side_streams[index] = torch.cuda.Stream(device=index)
        if self._pinned_pool is None:
            self._pinned_pool = HostBufferPool(pinned=True, limit_bytes=self._pool_bytes)
        nbytes = value.numel() * value.element_size()
        # The copy must see every write the engine queued before the dump call.
        stream.wait_stream(torch.cuda.current_stream(index))
        with torch.cuda.stream(stream):
            buffer = self._pinned_pool.take(max(nbytes, 1))[:nbytes]
            host = _view_as(buffer, value) if nbytes else torch.empty(value.shape, dtype=value.dtype)
            host.copy_(value, non_blocking=True)
            event = torch.cuda.Event()
            event.record(stream)
        # Keep the caching allocator from handing the source memory to the engine
        # before the side stream's copy has read it.
        value.record_stream(stream)
        return Snapshot(tensor=host, event=event, buffer=buffer if nbytes else None, pool=self._pinned_pool)
