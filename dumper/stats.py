"""Per-tensor statistics (in float64) and checksum, computed on the writer thread.

Speed matters here: the writer must keep up with the disk. Each chunk is copied
once into a reused float64 scratch buffer (fresh allocations cost more than the
arithmetic: page faults), and the common all-finite case takes a few BLAS-speed
passes; NaN/Inf or values too large to square fall back to a careful path.
"""

from __future__ import annotations

import math
import threading

import torch

from dumper.format import TensorStats, finite_or_none

# Elements per float64 chunk: bounds the scratch memory to 2 x 8 MB per thread.
_CHUNK = 1 << 20
_scratch = threading.local()
# Below this share of sum(x^2), sum(x^2) - n mean^2 has lost too many digits: two passes.
_CANCELLATION = 1e-3


def raw_bytes(tensor: torch.Tensor) -> memoryview:
    """The tensor's bytes in C order (the same bytes safetensors stores)."""
    flat = tensor.contiguous().reshape(-1)
    if flat.dtype == torch.bool:
        flat = flat.view(torch.uint8)
    return flat.view(torch.uint8).numpy().data.cast("B")


def checksum(tensor: torch.Tensor) -> str:
    """``ALGORITHM:hex`` of the tensor's bytes, in the writer's algorithm (dumper/checksums.py)."""
    from dumper.checksums import compute

    return compute(raw_bytes(tensor))


def _buffers(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    buffers = getattr(_scratch, "buffers", None)
    if buffers is None:
        buffers = _scratch.buffers = (torch.empty(_CHUNK, dtype=torch.float64), torch.empty(_CHUNK, dtype=torch.float64))
    return buffers[0][:n], buffers[1][:n]


class _Moments:
    """Chunk-wise merge of count, mean and M2 (Chan et al.), plus min/max/abs/L2."""

    def __init__(self) -> None:
        self.count = 0
        self.mean = 0.0
        self.m2 = 0.0
        self.low = math.inf
        self.high = -math.inf
        self.abs_sum = 0.0
        # L2 kept as scale * sqrt(scaled_squares) so huge values never overflow.
        self.norm_scale = 0.0
        self.scaled_squares = 0.0

    def add(self, n: int, chunk_mean: float, chunk_m2: float, low: float, high: float, abs_sum: float,
            chunk_scale: float, chunk_squares: float) -> None:
        total = self.count + n
        delta = chunk_mean - self.mean
        self.mean += delta * n / total
        self.m2 += chunk_m2
        if self.count:
            self.m2 += delta * delta * (self.count * n / total)
        self.count = total
        self.low = min(self.low, low)
        self.high = max(self.high, high)
        self.abs_sum += abs_sum
        if chunk_scale > 0:
            if chunk_scale > self.norm_scale:
                self.scaled_squares = self.scaled_squares * (self.norm_scale / chunk_scale) ** 2 + chunk_squares
                self.norm_scale = chunk_scale
            else:
                self.scaled_squares += chunk_squares * (chunk_scale / self.norm_scale) ** 2


def _add_chunk(moments: _Moments, x: torch.Tensor, scratch: torch.Tensor) -> tuple[int, int]:
    """Fold one float64 chunk into ``moments``; returns its (nan, inf) counts."""
    n = x.numel()
    squares = float(torch.dot(x, x))
    total = float(x.sum())
    if math.isfinite(squares) and math.isfinite(total):
        # Fast path: every value finite and small enough to square.
        chunk_mean = total / n
        # NOTE: sum((x - mean)^2) = sum(x^2) - n mean^2 saves two passes over the chunk; it
        # loses precision when the mean dwarfs the spread (the difference cancels), and
        # then the two-pass sum is taken instead.
        chunk_m2 = squares - total * chunk_mean
        if not chunk_m2 > _CANCELLATION * squares:
            torch.sub(x, chunk_mean, out=scratch)
            chunk_m2 = float(torch.dot(scratch, scratch))
        low, high = (float(v) for v in torch.aminmax(x))
        abs_sum = float(torch.linalg.vector_norm(x, 1))  # one pass, no temporary
        moments.add(n, chunk_mean, chunk_m2, low, high, abs_sum, 1.0, squares)
        return 0, 0
    nan = int(torch.isnan(x).sum())
    inf = int(torch.isinf(x).sum())
    finite = x[torch.isfinite(x)]
    if finite.numel() == 0:
        return nan, inf
    chunk_mean = float(finite.mean())
    chunk_m2 = float(((finite - chunk_mean) ** 2).sum())
    low, high = (float(v) for v in torch.aminmax(finite))
    magnitudes = finite.abs()
    chunk_scale = float(magnitudes.max())
    chunk_squares = float(((finite / chunk_scale) ** 2).sum()) if chunk_scale > 0 else 0.0
    moments.add(finite.numel(), chunk_mean, chunk_m2, low, high, float(magnitudes.sum()), chunk_scale, chunk_squares)
    return nan, inf


def tensor_stats(tensor: torch.Tensor) -> TensorStats:
    """min, max, mean, abs-mean, std and L2 over the finite values; NaN/Inf counted apart."""
    flat = tensor.detach().reshape(-1)
    numel = flat.numel()
    if flat.dtype == torch.bool or (flat.dtype.is_floating_point and flat.element_size() == 1):
        flat = flat.to(torch.float32)  # bool and fp8 have no direct float64 copy kernels
    moments = _Moments()
    nan = inf = 0
    for start in range(0, numel, _CHUNK):
        chunk = flat[start : start + _CHUNK]
        x, scratch = _buffers(chunk.numel())
        x.copy_(chunk)
        chunk_nan, chunk_inf = _add_chunk(moments, x, scratch)
        nan += chunk_nan
        inf += chunk_inf
    if moments.count == 0:
        return TensorStats(numel=numel, min=None, max=None, mean=None, abs_mean=None, std=None, l2=None, nan=nan, inf=inf)
    l2 = moments.norm_scale * math.sqrt(moments.scaled_squares)
    # Sums of values near the float64 limit can still overflow: such a statistic is
    # recorded as unknown (None), never as a non-JSON inf/nan.
    return TensorStats(
        numel=numel,
        min=finite_or_none(moments.low),
        max=finite_or_none(moments.high),
        mean=finite_or_none(moments.mean),
        abs_mean=finite_or_none(moments.abs_sum / moments.count),
        std=finite_or_none(math.sqrt(max(moments.m2, 0.0) / moments.count)) if math.isfinite(moments.m2) else None,
        l2=finite_or_none(l2),
        nan=nan,
        inf=inf,
    )
