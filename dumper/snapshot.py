"""Take a private copy of a tensor on the engine thread, as cheaply as possible.

CPU: a contiguous clone. CUDA: an asynchronous device-to-host copy into pinned
memory on a side stream, with an event the writer thread waits on; the engine
thread never synchronises with the device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(kw_only=True)
class Snapshot:
    tensor: torch.Tensor  # on the host; not safe to read before ready() returns
    event: "torch.cuda.Event | None" = None

    def wait(self) -> torch.Tensor:
        if self.event is not None:
            self.event.synchronize()
            self.event = None
        return self.tensor


class Snapshotter:
    def __init__(self) -> None:
        self._side_streams: dict[int, torch.cuda.Stream] = {}

    def take(self, value: torch.Tensor) -> Snapshot:
        value = value.detach()
        if value.device.type == "cuda":
            return self._take_cuda(value)
        if value.device.type != "cpu":
            return Snapshot(tensor=value.to("cpu"))
        return Snapshot(tensor=value.clone(memory_format=torch.contiguous_format))

    def _take_cuda(self, value: torch.Tensor) -> Snapshot:
        device = value.device
        index = device.index if device.index is not None else torch.cuda.current_device()
        stream = self._side_streams.get(index)
        if stream is None:
            stream = self._side_streams[index] = torch.cuda.Stream(device=index)
        # The copy must see every write the engine queued before the dump call.
        stream.wait_stream(torch.cuda.current_stream(index))
        with torch.cuda.stream(stream):
            # Pinned blocks come from PyTorch's caching host allocator, so steady state
            # allocates nothing new.
            host = torch.empty(value.shape, dtype=value.dtype, pin_memory=True)
            host.copy_(value, non_blocking=True)
            event = torch.cuda.Event()
            event.record(stream)
        # Keep the caching allocator from handing the source memory to the engine
        # before the side stream's copy has read it.
        value.record_stream(stream)
        return Snapshot(tensor=host, event=event)
