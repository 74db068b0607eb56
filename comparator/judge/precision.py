"""The precision a float tensor's values really carry, when it is less than its dtype's.

Engines upcast bf16 results before dumping them (router logits, final logits, a sum
over bf16 values): such a float32 tensor carries bf16 rounding error, and judging it at
float32 limits fails healthy runs. The eager run's bf16 Linear followed by ``.float()``
against inductor's fused version, which keeps the float32 accumulator, measured rel_diff
1.2e-5 against the float32 limit of 1e-6. Values that all survive a round trip through a
narrower dtype were, with near certainty, computed in it (a float32 drawn from real data
fits bf16 with chance 2^-16), so the pair is judged at that dtype's limits, and the
report says why.

Integer values fit every narrower dtype without having been rounded to it: a tensor
whose values are all integers (counts, ids or masks kept as floats) keeps its own
dtype's limits, where a count off by one still fails.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

CHUNK_ELEMENTS = 1 << 20
# Narrower dtypes a wider float tensor may hold, most to least precise (judged by the last that fits).
NARROWER = {"float64": ("float32",), "float32": ("float16", "bfloat16")}


def carried_precision(tensor: "torch.Tensor") -> str | None:
    """The least precise narrower dtype every value fits; None if none fits, or no value has a fraction."""
    import torch

    candidates = [getattr(torch, name) for name in NARROWER.get(str(tensor.dtype).removeprefix("torch."), ())]
    if not candidates or tensor.numel() == 0:
        return None
    flat = tensor.reshape(-1)
    fitting = candidates
    fraction = False
    for start in range(0, flat.numel(), CHUNK_ELEMENTS):
        chunk = flat[start:start + CHUNK_ELEMENTS]
        finite = chunk[torch.isfinite(chunk)]
        fitting = [dtype for dtype in fitting if torch.equal(finite.to(dtype).to(chunk.dtype), finite)]
        if not fitting:
            return None
        fraction = fraction or not torch.equal(finite, finite.round())
    # NOTE: values that fit both fp16 and bf16 are judged at bf16, the less precise.
    return str(fitting[-1]).removeprefix("torch.") if fraction else None


def judged_dtypes(baseline_dtype: str, target_dtype: str, baseline: "torch.Tensor", target: "torch.Tensor"
                  ) -> tuple[str, str, str] | None:
    """(baseline dtype, target dtype, a note) to judge the pair by, when a side holds narrower values; else None."""
    sides = []
    for side, dtype, tensor in (("baseline", baseline_dtype, baseline), ("target", target_dtype, target)):
        carried = carried_precision(tensor) if str(tensor.dtype).removeprefix("torch.") == dtype else None
        sides.append((side, dtype, carried))
    if all(carried is None for _, _, carried in sides):
        return None
    said = "; ".join(f"{side} {dtype} holds {carried} values" for side, dtype, carried in sides if carried)
    return (sides[0][2] or baseline_dtype, sides[1][2] or target_dtype,
            f"{said} (an upcast): judged at {' / '.join(dict.fromkeys(c for _, _, c in sides if c))} limits")
