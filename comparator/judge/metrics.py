"""How far a target tensor is from its baseline, in float64, a chunk at a time.

Memory stays bounded: each chunk of ``CHUNK_ELEMENTS`` values is upcast to float64,
reduced to a handful of sums, and dropped, so comparing two tensors needs only a
few chunk-sized buffers on top of the tensors themselves.

Definitions (b = baseline, t = target, over positions finite on both sides):

- ``rel_diff``   = 1 - 2<b,t> / (|b|^2 + |t|^2)   symmetric, 0 when equal, catches scale
- ``rel_l2``     = |t - b| / |b|
- ``cosine``     = <b,t> / (|b| |t|)              reported, never enough alone (t = 2b has 1)
- ``norm_ratio`` = |t| / |b|
- ``max_abs``    = max |t - b|, with its index and both values there
- ``mean_abs``   = mean |t - b|
"""

from __future__ import annotations

import dataclasses
import math
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# NOTE: torch is imported where a tensor is measured, not with this module: judging a
# stats-mode run (the index's stats only) never needs it, and importing it costs 1-2 s
# and ~200 MB of resident memory on the 2-core development box.

# Values per float64 chunk: 256 Ki values = 2 MB per buffer, three buffers. Small
# enough to stay in cache between the passes over a chunk, large enough that Python's
# per-chunk overhead does not show (measured: 1.7x faster than 8 MB buffers).
CHUNK_ELEMENTS = 1 << 18


@dataclass(frozen=True, kw_only=True)
class Metrics:
    rel_diff: float
    rel_l2: float
    cosine: float
    max_abs: float
    max_abs_index: tuple[int, ...]
    max_abs_baseline: float
    max_abs_target: float
    mean_abs: float
    norm_ratio: float
    baseline_norm: float
    target_norm: float
    dot: float
    numel: int
    nan_baseline: int = 0
    inf_baseline: int = 0
    nan_target: int = 0
    inf_target: int = 0
    nonfinite_mismatch: int = 0  # positions where one side is NaN/Inf and the other differs
    token_dim: int | None = None
    per_token_rel_l2: tuple[float, ...] | None = None
    worst_token: tuple[int, float] | None = None  # (token, rel_l2) of the worst token

    @property
    def scale(self) -> float | None:
        """k minimising |t - k b| (least squares), or None when b is zero."""
        squared = self.baseline_norm * self.baseline_norm
        return self.dot / squared if squared > 0 else None

    @property
    def scale_residual(self) -> float:
        """|t - k b| / |t| for the fitted k: 0 when the target is an exact multiple."""
        return math.sqrt(max(0.0, 1.0 - self.cosine * self.cosine)) if math.isfinite(self.cosine) else math.inf

    def as_dict(self) -> dict[str, float]:
        """The six gate metrics of the JSON contract."""
        return {
            "rel_diff": self.rel_diff,
            "rel_l2": self.rel_l2,
            "cosine": self.cosine,
            "max_abs": self.max_abs,
            "mean_abs": self.mean_abs,
            "norm_ratio": self.norm_ratio,
        }


class _Sums:
    __slots__ = ("bb", "tt", "bt", "dd", "abs_sum", "max_abs", "max_index", "max_b", "max_t", "count",
                 "nan_b", "inf_b", "nan_t", "inf_t", "mismatch", "scale")

    def __init__(self, scale: float = 1.0) -> None:
        self.scale = scale
        self.bb = self.tt = self.bt = self.dd = self.abs_sum = 0.0
        self.max_abs = -1.0
        self.max_index = 0
        self.max_b = self.max_t = 0.0
        self.count = 0
        self.nan_b = self.inf_b = self.nan_t = self.inf_t = self.mismatch = 0


class _Scratch(threading.local):
    """Float64 buffers reused across chunks and tensors (one set per thread).

    NOTE: allocating fresh multi-megabyte buffers per chunk costs page faults that
    dwarf the arithmetic; reusing three buffers keeps the comparison memory-bound.
    """

    def __init__(self) -> None:
        self.size = 0
        self.buffers: "tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None" = None

    def views(self, numel: int) -> "tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]":
        import torch

        if numel > self.size or self.buffers is None:
            self.size = max(numel, CHUNK_ELEMENTS)
            self.buffers = (torch.empty(self.size, dtype=torch.float64), torch.empty(self.size, dtype=torch.float64),
                            torch.empty(self.size, dtype=torch.float64), torch.empty(self.size, dtype=torch.float64))
        b, t, d, s = self.buffers
        return b[:numel], t[:numel], d[:numel], s[:numel]


_scratch = _Scratch()


def _upcast_into(out: torch.Tensor, chunk: torch.Tensor) -> torch.Tensor:
    import torch

    if chunk.dtype == torch.bool:
        chunk = chunk.to(torch.uint8)
    out.view(chunk.shape).copy_(chunk)
    return out.view(chunk.shape)


def _row_squares(rows: torch.Tensor, scratch: torch.Tensor) -> torch.Tensor:
    import torch

    """Sum of squares of each row (faster than linalg.vecdot on CPU)."""
    squared = scratch.view(rows.shape)
    torch.mul(rows, rows, out=squared)
    return squared.sum(dim=1)


def _accumulate(sums: _Sums, b_raw: torch.Tensor, t_raw: torch.Tensor, offset: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Fold one chunk (same shape, 1-D or 2-D rows, any dtype) into ``sums``.

    Returns per-row (|t-b|^2, |b|^2) for 2-D chunks, for the per-token error.
    """
    import torch

    buf_b, buf_t, buf_d, buf_s = _scratch.views(b_raw.numel())
    b = _upcast_into(buf_b, b_raw)
    t = _upcast_into(buf_t, t_raw)
    if sums.scale != 1.0:
        b.div_(sums.scale)
        t.div_(sums.scale)
    flat_b, flat_t = buf_b, buf_t
    rows_bb = _row_squares(b, buf_s) if b.dim() == 2 else None
    bb = float(rows_bb.sum()) if rows_bb is not None else float(torch.dot(flat_b, flat_b))
    tt = float(torch.dot(flat_t, flat_t))
    if not (math.isfinite(bb) and math.isfinite(tt)):
        # NOTE: finite sums prove the chunk holds no NaN/Inf, so the masks below are
        # only paid for when something is non-finite.
        finite_b, finite_t = torch.isfinite(b), torch.isfinite(t)
        sums.nan_b += int(torch.isnan(b).sum())
        sums.inf_b += int(torch.isinf(b).sum())
        sums.nan_t += int(torch.isnan(t).sum())
        sums.inf_t += int(torch.isinf(t).sum())
        same_nonfinite = (b == t) | (torch.isnan(b) & torch.isnan(t))
        sums.mismatch += int(((~finite_b | ~finite_t) & ~same_nonfinite).sum())
        both = finite_b & finite_t
        b.masked_fill_(~both, 0.0)
        t.masked_fill_(~both, 0.0)
        rows_bb = _row_squares(b, buf_s) if b.dim() == 2 else None
        bb = float(torch.dot(flat_b, flat_b))
        tt = float(torch.dot(flat_t, flat_t))
        sums.count += int(both.sum())
    else:
        sums.count += flat_b.numel()
    sums.bb += bb
    sums.tt += tt
    sums.bt += float(torch.dot(flat_b, flat_t))
    torch.sub(flat_t, flat_b, out=buf_d)
    diff = buf_d.view(b.shape)
    rows = None
    if rows_bb is not None:  # 2-D chunk: per-row sums for the per-token error
        rows = (_row_squares(diff, buf_s), rows_bb)
        sums.dd += float(rows[0].sum())
    else:
        sums.dd += float(torch.dot(buf_d, buf_d))
    flat_diff = buf_d.abs_()
    sums.abs_sum += float(flat_diff.sum())
    if flat_diff.numel():
        # NOTE: numpy's argmax is several times faster than torch's on CPU.
        index = int(flat_diff.numpy().argmax())
        value = float(flat_diff[index])
        if value > sums.max_abs:
            sums.max_abs = value
            sums.max_index = offset + index
            sums.max_b = float(flat_b[index])
            sums.max_t = float(flat_t[index])
    return rows


def compute_metrics(baseline: torch.Tensor, target: torch.Tensor, *, token_dim: int | None = None) -> Metrics:
    """Compare two tensors of the same shape (any dtypes); see the module docstring."""
    if tuple(baseline.shape) != tuple(target.shape):
        raise ValueError(f"shapes differ: {tuple(baseline.shape)} vs {tuple(target.shape)}")
    metrics = _compute(baseline, target, token_dim=token_dim, scale=1.0)
    sums_overflowed = not all(map(math.isfinite, (metrics.baseline_norm, metrics.target_norm, metrics.dot)))
    if not sums_overflowed:
        return metrics
    # NOTE: values near the float64 limit overflow in their squares (non-finite
    # inputs are masked out before summing, so an infinite sum means overflow).
    # Redo the pass on values divided by the largest magnitude: the ratios are
    # scale-free, and the absolute metrics are scaled back.
    scale = max(_max_finite_abs(baseline), _max_finite_abs(target))
    if not (math.isfinite(scale) and scale > 0):
        return metrics
    scaled = _compute(baseline, target, token_dim=token_dim, scale=scale)
    return dataclasses.replace(
        scaled,
        max_abs=scaled.max_abs * scale,
        max_abs_baseline=scaled.max_abs_baseline * scale,
        max_abs_target=scaled.max_abs_target * scale,
        mean_abs=scaled.mean_abs * scale,
        baseline_norm=scaled.baseline_norm * scale,
        target_norm=scaled.target_norm * scale,
        dot=scaled.dot * scale * scale,
    )


def _max_finite_abs(tensor: torch.Tensor) -> float:
    import torch

    largest = 0.0
    flat = tensor.reshape(-1)
    for start in range(0, flat.numel(), CHUNK_ELEMENTS):
        chunk = flat[start : start + CHUNK_ELEMENTS].to(torch.float64).abs()
        chunk = chunk[torch.isfinite(chunk)]
        if chunk.numel():
            largest = max(largest, float(chunk.max()))
    return largest


def _compute(baseline: torch.Tensor, target: torch.Tensor, *, token_dim: int | None, scale: float) -> Metrics:
    import torch

    shape = tuple(baseline.shape)
    numel = baseline.numel()
    sums = _Sums(scale)
    per_token: tuple[float, ...] | None = None
    if token_dim is not None and baseline.dim() >= 1 and 0 <= token_dim < baseline.dim() and numel > 0:
        tokens = shape[token_dim]
        rows_b = baseline.movedim(token_dim, 0).reshape(tokens, -1)
        rows_t = target.movedim(token_dim, 0).reshape(tokens, -1)
        width = max(1, rows_b.shape[1])
        step = max(1, CHUNK_ELEMENTS // width)
        token_dd: list[torch.Tensor] = []
        token_bb: list[torch.Tensor] = []
        for start in range(0, tokens, step):
            rows = _accumulate(sums, rows_b[start : start + step], rows_t[start : start + step], start * width)
            if rows is None:
                raise RuntimeError("a 2-D chunk returned no row sums")
            token_dd.append(rows[0])
            token_bb.append(rows[1])
        dd_rows = torch.cat(token_dd).sqrt_()
        bb_rows = torch.cat(token_bb).sqrt_()
        ratio = torch.where(bb_rows > 0, dd_rows / bb_rows.clamp_min(1e-300),
                            torch.where(dd_rows > 0, math.inf, 0.0))
        per_token = tuple(ratio.tolist())
        worst = int(torch.nan_to_num(ratio, nan=-math.inf).argmax()) if tokens else None
        moved_shape = (tokens,) + shape[:token_dim] + shape[token_dim + 1 :]
        moved_index = _unravel(sums.max_index, moved_shape) if sums.max_abs >= 0 else ()
        max_index = moved_index[1 : token_dim + 1] + moved_index[:1] + moved_index[token_dim + 1 :] if moved_index else ()
    else:
        worst = None
        flat_b = baseline.reshape(-1)
        flat_t = target.reshape(-1)
        for start in range(0, numel, CHUNK_ELEMENTS):
            _accumulate(sums, flat_b[start : start + CHUNK_ELEMENTS], flat_t[start : start + CHUNK_ELEMENTS], start)
        max_index = _unravel(sums.max_index, shape) if sums.max_abs >= 0 else ()
        token_dim = None
    result = _finish(sums, numel=numel, max_index=max_index, token_dim=token_dim, per_token=per_token)
    if worst is not None and per_token is not None:
        result = dataclasses.replace(result, worst_token=(worst, per_token[worst]))
    return result


def _finish(sums: _Sums, *, numel: int, max_index: tuple[int, ...], token_dim: int | None,
            per_token: tuple[float, ...] | None) -> Metrics:
    norm_b = math.sqrt(sums.bb)
    norm_t = math.sqrt(sums.tt)
    denominator = sums.bb + sums.tt
    rel_diff = 1.0 - 2.0 * sums.bt / denominator if denominator > 0 else 0.0
    # Rounding can push the float64 result a hair below zero for identical inputs.
    rel_diff = max(0.0, rel_diff)
    if norm_b > 0 and norm_t > 0:
        cosine = max(-1.0, min(1.0, sums.bt / (norm_b * norm_t)))
    else:
        cosine = 1.0 if norm_b == norm_t else 0.0
    return Metrics(
        rel_diff=rel_diff,
        rel_l2=_ratio(math.sqrt(sums.dd), norm_b),
        cosine=cosine,
        max_abs=max(0.0, sums.max_abs),
        max_abs_index=max_index,
        max_abs_baseline=sums.max_b,
        max_abs_target=sums.max_t,
        mean_abs=sums.abs_sum / sums.count if sums.count else 0.0,
        norm_ratio=_ratio(norm_t, norm_b, both_zero=1.0),
        baseline_norm=norm_b,
        target_norm=norm_t,
        dot=sums.bt,
        numel=numel,
        nan_baseline=sums.nan_b,
        inf_baseline=sums.inf_b,
        nan_target=sums.nan_t,
        inf_target=sums.inf_t,
        nonfinite_mismatch=sums.mismatch,
        token_dim=token_dim,
        per_token_rel_l2=per_token,
    )


def identical_metrics(*, numel: int, norm: float, shape: tuple[int, ...], token_dim: int | None,
                      nan: int = 0, inf: int = 0) -> Metrics:
    """Metrics of two bitwise-identical tensors, known without reading them (equal checksums)."""
    tokens = shape[token_dim] if token_dim is not None and token_dim < len(shape) else None
    return Metrics(
        rel_diff=0.0, rel_l2=0.0, cosine=1.0, max_abs=0.0, max_abs_index=tuple(0 for _ in shape) if numel else (),
        max_abs_baseline=0.0, max_abs_target=0.0, mean_abs=0.0, norm_ratio=1.0, baseline_norm=norm,
        target_norm=norm, dot=norm * norm, numel=numel, nan_baseline=nan, inf_baseline=inf, nan_target=nan,
        inf_target=inf, token_dim=token_dim if tokens is not None else None,
        per_token_rel_l2=tuple(0.0 for _ in range(tokens)) if tokens is not None else None,
        worst_token=(0, 0.0) if tokens else None,
    )


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """Symmetric relative difference of two same-shape tensors (replica checks)."""
    return compute_metrics(a, b).rel_diff


def _ratio(numerator: float, denominator: float, *, both_zero: float = 0.0) -> float:
    if denominator > 0:
        return numerator / denominator
    return both_zero if numerator == 0 else math.inf


def _unravel(index: int, shape: tuple[int, ...]) -> tuple[int, ...]:
    coords = []
    for size in reversed(shape):
        coords.append(index % size if size else 0)
        index = index // size if size else 0
    return tuple(reversed(coords))
