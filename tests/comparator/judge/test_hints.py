from __future__ import annotations

import dataclasses

import torch

from comparator.judge.hints import padding_hint, replica_hint, scale_hint, shape_hint
from comparator.judge.metrics import compute_metrics


def test_scale_hint_matches_group_sizes_and_axis_names():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(100, generator=generator)
    assert "target = 4 x baseline" in scale_hint(compute_metrics(x, 4 * x), {"ep": 4})
    assert "(the size of ep)" in scale_hint(compute_metrics(x, 4 * x), {"ep": 4})
    assert "target = 1/2 x baseline" in scale_hint(compute_metrics(x, x / 2), {})
    assert "missing reduction" in scale_hint(compute_metrics(x, x / 2), {})
    assert "sign is flipped" in scale_hint(compute_metrics(x, -x), {})
    assert "1.37 x baseline" in scale_hint(compute_metrics(x, 1.37 * x), {})
    assert scale_hint(compute_metrics(x, x + torch.randn(100, generator=generator)), {}) is None


def test_scale_hint_holds_through_bf16_noise():
    """A doubled bf16 tensor whose two runs also differ by bf16 rounding (1-2% per element)."""
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(17, 64, generator=generator)
    noisy = (2 * x * (1 + 0.015 * torch.randn(17, 64, generator=generator))).to(torch.bfloat16)
    metrics = compute_metrics(x.to(torch.bfloat16), noisy)
    assert metrics.scale_residual > 1e-2
    assert "target = 2 x baseline" in scale_hint(metrics, {"ep": 2})
    assert scale_hint(compute_metrics(x, 2 * x + 0.2 * torch.randn(17, 64, generator=generator)), {}) is None


def test_shape_hint_spots_an_unannotated_split():
    assert "1/2 of the baseline's" in shape_hint((5, 16), (5, 8), axis_sizes={"tp": 2})
    assert shape_hint((5, 16), (5, 7), axis_sizes={"tp": 2}) is None


def test_padding_hint_names_the_aligner():
    generator = torch.Generator().manual_seed(1)
    baseline = torch.randn(5, 8, generator=generator)
    padded = torch.cat([baseline, torch.zeros(1, 8)])
    hint = padding_hint(baseline, padded, token_dim=0, passes=lambda m: m.rel_diff < 1e-6)
    assert "target has 1 extra rows along dim 0" in hint and "--aligner concat_steps" in hint
    middle = torch.cat([baseline[:2], torch.zeros(1, 8), baseline[2:]])
    assert "all-zero rows" in padding_hint(baseline, middle, token_dim=0, passes=lambda m: m.rel_diff < 1e-6)
    assert padding_hint(baseline, torch.randn(6, 8, generator=generator), token_dim=0, passes=lambda m: m.rel_diff < 1e-6) is None


def test_replica_hint_names_axes_over_the_same_ranks():
    x = torch.randn(100, generator=torch.Generator().manual_seed(2))
    matched = compute_metrics(x, x)
    assert replica_hint("attn_tp", 1.05, matched, True, same_ranks=("ep",)).endswith(
        "missing all-reduce over attn_tp (here the same ranks as ep)")
    assert replica_hint("ep", 1.05, matched, True).endswith("missing all-reduce over ep")
    assert replica_hint("ep", 1.05, None, False).endswith("their sum does not match the baseline either")


def test_one_scale_hint_for_tensors_and_stats():
    """Stats-only comparisons get the same scale hint, from the norm ratio and the abs-mean."""
    from comparator.judge.stats_only import PooledStats, StatsComparison

    def pooled(scale: float) -> PooledStats:
        return PooledStats(numel=8, finite=8, mean=0.1 * scale, abs_mean=0.7 * scale, std=1.0 * scale, l2=3.0 * scale,
                           min=-2.0 * scale, max=2.0 * scale, nan=0, inf=0, checksums=("0",), layout="")

    def stats(scale: float, abs_mean_scale: float) -> StatsComparison:
        baseline, target = pooled(1.0), dataclasses.replace(pooled(scale), abs_mean=0.7 * abs_mean_scale)
        return StatsComparison(baseline=baseline, target=target, norm_ratio=scale, mean_diff=0.0, abs_mean_diff=0.0,
                               checksum_match=False)

    doubled = scale_hint(stats(2.0, 2.0), {"ep": 2})
    assert doubled.startswith("target = 2 x baseline (in norm and abs-mean, stats only: norm_ratio 2)")
    assert doubled.endswith("duplicated reduction over a group of size 2 (the size of ep)")
    assert "missing reduction over a group of size 4" in scale_hint(stats(0.25, 0.25), {})
    assert scale_hint(stats(2.0, 1.0), {}) is None  # the abs-mean did not follow the norm: not a pure scale
