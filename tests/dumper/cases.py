"""Tensors covering every dtype and shape class; built identically in test and child."""

from __future__ import annotations

import torch


def make_cases() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1234)
    base = torch.randn(6, 10, generator=generator) * 3
    cases = {
        "f32": base.clone(),
        "f64": base.double(),
        "f16": base.half(),
        "bf16": base.bfloat16(),
        "f8e4m3": base.to(torch.float8_e4m3fn),
        "f8e5m2": base.to(torch.float8_e5m2),
        "i8": (base * 10).to(torch.int8),
        "i16": (base * 1000).to(torch.int16),
        "i32": (base * 1e6).to(torch.int32),
        "i64": torch.randint(-(2**62), 2**62, (5, 3), generator=generator),
        "u8": torch.randint(0, 255, (7,), generator=generator, dtype=torch.uint8),
        "bool": base > 0,
        "scalar": torch.tensor(2.5),
        "scalar_int": torch.tensor(7),
        "empty": torch.empty(0, 16),
        "empty_bf16": torch.empty(3, 0, dtype=torch.bfloat16),
        "transposed": base.t(),  # non-contiguous view
        "sliced": base[:, ::3],
        "nonfinite": torch.tensor([1.0, float("nan"), float("inf"), -float("inf"), -2.0]),
        "all_nan": torch.full((4,), float("nan")),
        "big": torch.randn(1 << 21, generator=generator),  # > one stats chunk
    }
    return cases
