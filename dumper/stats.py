"""Per-tensor statistics and checksum, computed on the writer thread in float64."""

from __future__ import annotations

import math
import zlib

import torch

from dumper.format import TensorStats

# Elements per float64 chunk: bounds the writer's scratch memory to 8 MB per tensor.
_CHUNK = 1 << 20


def raw_bytes(tensor: torch.Tensor) -> memoryview:
    """The tensor's bytes in C order (the same bytes safetensors stores)."""
    flat = tensor.contiguous().reshape(-1)
    if flat.dtype == torch.bool:
        flat = flat.view(torch.uint8)
    return memoryview(flat.view(torch.uint8).numpy()).cast("B")


def checksum(tensor: torch.Tensor) -> str:
    return f"crc32:{zlib.crc32(raw_bytes(tensor)) & 0xFFFFFFFF:08x}"


def tensor_stats(tensor: torch.Tensor) -> TensorStats:
    """min, max, mean, abs-mean, std and L2 over the finite values; NaN/Inf counted apart."""
    flat = tensor.detach().reshape(-1)
    numel = flat.numel()
    count = 0
    nan = inf = 0
    low, high = math.inf, -math.inf
    mean = 0.0
    m2 = 0.0  # sum of squared deviations (Chan et al. merge of chunk moments)
    abs_sum = 0.0
    # L2 kept as scale * sqrt(scaled_squares) so squares of huge values never overflow.
    norm_scale = 0.0
    scaled_squares = 0.0
    for start in range(0, numel, _CHUNK):
        chunk = flat[start : start + _CHUNK]
        if chunk.dtype == torch.bool or chunk.dtype.is_floating_point and chunk.element_size() == 1:
            chunk = chunk.to(torch.float32)
        chunk = chunk.to(torch.float64)
        finite_mask = torch.isfinite(chunk)
        n_finite = int(finite_mask.sum())
        if n_finite != chunk.numel():
            nan += int(torch.isnan(chunk).sum())
            inf += int(torch.isinf(chunk).sum())
            chunk = chunk[finite_mask]
        if n_finite == 0:
            continue
        low = min(low, float(chunk.min()))
        high = max(high, float(chunk.max()))
        chunk_mean = float(chunk.mean())
        chunk_m2 = float(((chunk - chunk_mean) ** 2).sum())
        total = count + n_finite
        delta = chunk_mean - mean
        mean += delta * n_finite / total
        m2 += chunk_m2 + delta * delta * count * n_finite / total
        count = total
        abs_sum += float(chunk.abs().sum())
        chunk_scale = float(chunk.abs().max())
        if chunk_scale > 0:
            chunk_squares = float(((chunk / chunk_scale) ** 2).sum())
            if chunk_scale > norm_scale:
                scaled_squares = scaled_squares * (norm_scale / chunk_scale) ** 2 + chunk_squares
                norm_scale = chunk_scale
            else:
                scaled_squares += chunk_squares * (chunk_scale / norm_scale) ** 2
    if count == 0:
        return TensorStats(numel=numel, min=None, max=None, mean=None, abs_mean=None, std=None, l2=None, nan=nan, inf=inf)
    l2 = norm_scale * math.sqrt(scaled_squares)
    return TensorStats(
        numel=numel,
        min=low,
        max=high,
        mean=mean,
        abs_mean=abs_sum / count,
        std=math.sqrt(m2 / count),
        l2=l2 if math.isfinite(l2) else None,
        nan=nan,
        inf=inf,
    )
