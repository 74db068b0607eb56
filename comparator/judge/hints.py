"""Diagnosis hints: why a target tensor differs from its baseline, when the numbers say so.

Each function looks at one kind of evidence and returns a sentence, or None when the
evidence does not support one. Hints are suggestions: the verdict never depends on them.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Callable, Mapping

from comparator.judge.metrics import Metrics, compute_metrics
from comparator.judge.stats_only import StatsComparison

if TYPE_CHECKING:
    import torch

    from dumper.dims import DimsSpec

# A fitted scale k "is" a candidate when within this relative distance.
SCALE_MATCH = 0.02
# The target is a pure multiple of the baseline when |t - k b| / |t| is below this.
# NOTE: bf16 noise alone leaves a residual of about 1e-2: a doubled bf16 moe_output of
# the example engine (seed 12, --ep 2 --bug double_reduce) fitted k = 2.002 with residual
# 1.04e-2, and 1e-2 left it without a hint. Unrelated tensors have residuals near 1.
SCALE_RESIDUAL = 5e-2
BASE_SCALES = (2, 3, 4, 8, 16)
# Stats only: the abs-mean must have moved by the norm's k within this relative distance.
STATS_ABS_MEAN_MATCH = 0.01


def scale_hint(evidence: Metrics | StatsComparison, axis_sizes: Mapping[str, int]) -> str | None:
    """"target = k x baseline", k matched to a group size: a duplicated or missing reduction.

    One hint for both kinds of measurement; only the evidence for k differs: tensors fit
    k by least squares (and the target must be a pure multiple), stats-only comparisons
    take the norm ratio (and the abs-mean must have moved by the same k).
    """
    fit = _tensor_scale(evidence) if isinstance(evidence, Metrics) else _stats_scale(evidence)
    if fit is None:
        return None
    k, how = fit
    if abs(k + 1.0) < SCALE_MATCH:
        return f"target = -1 x baseline ({how}): the sign is flipped"
    sizes = sorted({*BASE_SCALES, *(s for s in axis_sizes.values() if s > 1)})
    for size in sizes:
        axes = sorted(a for a, s in axis_sizes.items() if s == size)
        which = f" (the size of {', '.join(axes)})" if axes else ""
        if abs(k / size - 1.0) < SCALE_MATCH:
            return (f"target = {size} x baseline ({how}): looks like a duplicated reduction over a group of "
                    f"size {size}{which}")
        if abs(k * size - 1.0) < SCALE_MATCH:
            return (f"target = 1/{size} x baseline ({how}): looks like a missing reduction over a group of "
                    f"size {size}{which}, or a mean where a sum belongs")
    return f"target = {k:.4g} x baseline ({how}): a pure scale; check scaling factors (routed scaling, softmax scale, norm weights)"


def _tensor_scale(metrics: Metrics) -> tuple[float, str] | None:
    k = metrics.scale
    if k is None or not math.isfinite(k) or metrics.scale_residual > SCALE_RESIDUAL or abs(k - 1.0) < SCALE_MATCH:
        return None
    return k, f"least-squares k = {k:.4g}, residual {metrics.scale_residual:.1e}"


def _stats_scale(stats: StatsComparison) -> tuple[float, str] | None:
    b, t = stats.baseline, stats.target
    k = stats.norm_ratio
    if not math.isfinite(k) or abs(k - 1.0) < SCALE_MATCH or not b.abs_mean or t.abs_mean is None:
        return None
    if abs(t.abs_mean / b.abs_mean / k - 1.0) > STATS_ABS_MEAN_MATCH:
        return None  # the norm moved, the abs-mean did not follow: not a pure scale
    return k, f"in norm and abs-mean, stats only: norm_ratio {k:.4g}"


def stats_replica_hint(stats: StatsComparison) -> str | None:
    """Copies of a replicated tensor whose stats differ: the stats-only side of :func:`replica_hint`."""
    if not stats.replica_checksum_mismatch or stats.replica_stats_diff <= 0:
        return None
    axes = ", ".join(stats.replica_checksum_mismatch)
    return (f"ranks disagree on a tensor declared replicated over {axes} (their stats differ by up to "
            f"{stats.replica_stats_diff:.3g}): a missing all-reduce over {axes}? "
            "(stats only: dump in tensor mode to check that their sum matches the baseline)")


def nonfinite_hint(metrics: Metrics) -> str | None:
    target_bad = metrics.nan_target + metrics.inf_target
    baseline_bad = metrics.nan_baseline + metrics.inf_baseline
    if target_bad and not baseline_bad:
        return f"NaN/Inf only in target ({metrics.nan_target} NaN, {metrics.inf_target} Inf)"
    if baseline_bad and not target_bad:
        return f"NaN/Inf only in baseline ({metrics.nan_baseline} NaN, {metrics.inf_baseline} Inf)"
    if metrics.nonfinite_mismatch:
        return f"NaN/Inf at different positions ({metrics.nonfinite_mismatch} positions differ)"
    return None


def replica_hint(axis: str, disagreement: float, sum_metrics: Metrics | None, sum_passes: bool, *,
                 same_ranks: tuple[str, ...] = ()) -> str:
    """``same_ranks``: other axes whose all-reduce groups are the same ranks as ``axis``'s here."""
    if sum_metrics is not None and sum_passes:
        also = f" (here the same ranks as {', '.join(same_ranks)})" if same_ranks else ""
        return (f"ranks disagree on a tensor declared replicated over {axis} (rel_diff up to {disagreement:.3g}) and "
                f"their sum matches the baseline (rel_diff {sum_metrics.rel_diff:.3g}): missing all-reduce over "
                f"{axis}{also}")
    return (f"ranks disagree on a tensor declared replicated over {axis} (rel_diff up to {disagreement:.3g}); "
            "their sum does not match the baseline either")


def shape_hint(baseline_shape: tuple[int, ...], target_shape: tuple[int, ...], *, axis_sizes: Mapping[str, int]) -> str | None:
    """A hint from shapes alone (no data): a missing or extra split."""
    if len(baseline_shape) != len(target_shape):
        if math.prod(baseline_shape) == math.prod(target_shape):
            return "same number of values in another layout: a flattened or reshaped tensor (annotate '(h d)' dims)"
        return None
    differing = [d for d, (b, t) in enumerate(zip(baseline_shape, target_shape)) if b != t]
    if len(differing) != 1:
        return None
    dim = differing[0]
    b, t = baseline_shape[dim], target_shape[dim]
    for axis, size in sorted(axis_sizes.items()):
        if size > 1 and t * size == b:
            return (f"target dim {dim} is 1/{size} of the baseline's: looks like one shard of a split over {axis} "
                    f"(size {size}); annotate the dim as '[{axis}]' in dims or use --override-dims")
        if size > 1 and b * size == t:
            return (f"target dim {dim} is {size} x the baseline's: looks like shards gathered over {axis} twice, "
                    f"or a dim annotated '[{axis}]' that is already whole")
    return None


def batching_hint(step: int, baseline_shape: tuple[int, ...], target_shape: tuple[int, ...],
                  token_dim: int | None) -> str | None:
    """"step N has 10 tokens in the baseline and 7 in the target": runs compared step by step, batched differently."""
    if token_dim is None or len(baseline_shape) != len(target_shape) or token_dim >= len(baseline_shape):
        return None
    differing = [d for d, (b, t) in enumerate(zip(baseline_shape, target_shape)) if b != t]
    if differing != [token_dim]:
        return None
    return (f"step {step} has {baseline_shape[token_dim]} tokens in the baseline and {target_shape[token_dim]} in the "
            "target: the runs were batched differently; dump the request metadata (the presets' metadata entries: "
            "input_ids, positions, token_req_ids, seq_lens) or use --aligner by_request")


def padding_hint(baseline: "torch.Tensor", target: "torch.Tensor", *, token_dim: int | None,
                 passes: Callable[[Metrics], bool]) -> str | None:
    """"target has N extra rows and the rest match": padding a token aligner would trim."""
    if baseline.dim() != target.dim() or baseline.dim() == 0:
        return None
    differing = [d for d in range(baseline.dim()) if baseline.shape[d] != target.shape[d]]
    if len(differing) != 1:
        return None
    dim = differing[0]
    if token_dim is not None and dim != token_dim:
        return None
    rows_b, rows_t = baseline.shape[dim], target.shape[dim]
    if rows_t <= rows_b:
        return None
    extra = rows_t - rows_b
    candidates = [("at the end", target.narrow(dim, 0, rows_b)), ("at the start", target.narrow(dim, extra, rows_b))]
    moved = target.movedim(dim, 0).reshape(rows_t, -1)
    nonzero = (moved != 0).any(dim=1)
    if int(nonzero.sum()) == rows_b:
        candidates.append(("as all-zero rows", target.index_select(dim, nonzero.nonzero().reshape(-1))))
    for where, kept in candidates:
        metrics = compute_metrics(baseline, kept)
        if passes(metrics):
            return (f"target has {extra} extra rows along dim {dim} ({where}) and the rest match: looks like "
                    "padding, try --aligner concat_steps")
    return None


def replayed_steps(run: Any) -> dict[str, tuple[int, int]]:
    """Name -> (first, last) step a run dumped it from CUDA-graph replays (rank.json ``graphs``)."""
    spans: dict[str, tuple[int, int]] = {}
    for rank in run.ranks:
        graphs = getattr(rank.info, "graphs", None) or {}
        for name, site in (graphs.get("sites") or {}).items():
            steps = site.get("steps") if isinstance(site, dict) else None
            if isinstance(steps, list) and len(steps) == 2:
                low, high = spans.get(name, (steps[0], steps[1]))
                spans[name] = (min(low, steps[0]), max(high, steps[1]))
    return spans


def graph_replay_hint(name: str, step: int, baseline: Mapping[str, tuple[int, int]],
                      target: Mapping[str, tuple[int, int]]) -> str | None:
    """"one side replayed this tensor from a CUDA graph, the other ran it eagerly"."""
    def replayed(spans: Mapping[str, tuple[int, int]]) -> bool:
        span = spans.get(name)
        return span is not None and span[0] <= step <= span[1]

    in_target, in_baseline = replayed(target), replayed(baseline)
    if in_target == in_baseline:
        return None
    side, other = ("target", "baseline") if in_target else ("baseline", "target")
    return (f"the {side} ran this step from a CUDA graph and the {other} eagerly: suspect graph-only state, "
            "e.g. padding rows of the captured batch leaking into real rows (routing counts, reductions), "
            "stale static buffers, or a collective captured with another group")


def _axis_roles(spec: "DimsSpec | None") -> dict[str, str]:
    """Run axis -> what the annotation says its ranks hold: "partial", "replicated" or "split dim N"."""
    if spec is None:
        return {}
    roles = {axis: f"split dim {index}" for axis, index in spec.sharded.items()}
    roles.update({spec.run_axis(axis): "partial" for axis in spec.partial})
    roles.update({spec.run_axis(axis): "replicated" for axis in spec.replicated})
    return roles


def layout_hint(baseline_dims: "DimsSpec | None", target_dims: "DimsSpec | None", scale: float | None,
                axis_sizes: Mapping[str, int]) -> str | None:
    """"the dims annotations disagree": one side says partial where the other says replicated (or splits
    another axis), and the values differ by that axis's group size. A stale annotation or a layout
    change, not a doubled reduction: the data is summed (or not) because the annotation says so."""
    if scale is None or not math.isfinite(scale) or scale <= 0 or abs(scale - 1.0) < SCALE_MATCH:
        return None
    baseline_roles, target_roles = _axis_roles(baseline_dims), _axis_roles(target_dims)
    for axis in sorted(set(baseline_roles) | set(target_roles)):
        size = axis_sizes.get(axis, 1)
        b_role, t_role = baseline_roles.get(axis, "not mentioned"), target_roles.get(axis, "not mentioned")
        if size <= 1 or b_role == t_role:
            continue
        if abs(scale / size - 1.0) < SCALE_MATCH or abs(scale * size - 1.0) < SCALE_MATCH:
            factor = f"{size}" if scale > 1 else f"1/{size}"
            return (f"the dims annotations disagree on {axis}: the baseline's say {b_role} "
                    f"({baseline_dims.text if baseline_dims else 'none'!r}), the target's {t_role} "
                    f"({target_dims.text if target_dims else 'none'!r}), and target = {factor} x baseline, the {axis} "
                    f"group size: a layout change or a stale annotation on one side, not a doubled reduction; "
                    f"make the dims agree (or --override-dims) and compare again")
    return None
