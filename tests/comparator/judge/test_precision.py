"""A float tensor holding a narrower dtype's values is judged at that dtype's limits."""

from __future__ import annotations

import torch

from comparator.judge.precision import carried_precision, judged_dtypes


def test_upcast_values_are_recognised():
    generator = torch.Generator().manual_seed(0)
    real = torch.randn(1000, generator=generator)
    assert carried_precision(real) is None
    assert carried_precision(real.to(torch.bfloat16).float()) == "bfloat16"
    assert carried_precision(real.to(torch.float16).float()) == "float16"
    assert carried_precision(real.double()) == "float32"
    assert carried_precision(real.to(torch.bfloat16)) is None  # already its own dtype
    assert carried_precision(torch.empty(0)) is None


def test_integer_values_keep_their_own_precision():
    """Counts kept as floats fit bf16 but were never rounded to it: a count off by one must still fail."""
    counts = torch.tensor([100.0, 200.0, 300.0, 0.0])
    assert carried_precision(counts) is None
    assert judged_dtypes("float32", "float32", counts, counts + torch.tensor([1.0, 0, 0, 0])) is None


def test_non_finite_values_and_chunks_do_not_hide_full_precision():
    values = torch.randn(3 << 20, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16).float()
    values[7] = float("nan")
    values[9] = float("inf")
    assert carried_precision(values) == "bfloat16"
    values[-1] = 0.1  # one full-precision value in the last chunk
    assert carried_precision(values) is None


def test_the_pair_is_judged_by_the_narrowed_side_and_says_so():
    real = torch.randn(64, generator=torch.Generator().manual_seed(2))
    narrowed = judged_dtypes("float32", "float32", real.to(torch.bfloat16).float(), real)
    assert narrowed == ("bfloat16", "float32",
                        "baseline float32 holds bfloat16 values (an upcast): judged at bfloat16 limits")
    assert judged_dtypes("float32", "float32", real, real * 2) is None
