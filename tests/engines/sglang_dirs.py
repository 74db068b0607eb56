"""Build directories exactly as SGLang's dumper writes them (SGLang does not run here).

One model's tensors, drawn once in float64 and written as float32, laid out as an
SGLang run of any tensor-parallel size dumps them: ``step=..___rank=..___dump_index=..
___name=...___recompute_status=disabled___layer_id=N.pt`` files holding ``{"value",
"meta"}``, with ``sglang_parallel_info`` (``<axis>_rank``/``<axis>_size``) and a
``dims`` string in the meta.
"""

from __future__ import annotations

import os
from typing import Callable

import torch

# The parallel axes a real SGLang run records (DESIGN.md's appendix).
SGLANG_AXES = ("tp", "pp", "moe_ep", "moe_tp", "moe_dp", "attn_tp", "attn_dp", "local_attn_dp", "attn_cp")
TOKENS, HIDDEN, HEADS, HEAD_DIM, LAYERS, STEPS = 5, 8, 4, 2, 2, 2

Mangle = Callable[[str, int, int, torch.Tensor], torch.Tensor]


def model_tensors(*, seed: int = 0) -> dict[tuple[int, int], dict[str, torch.Tensor]]:
    """(step, layer) -> {"attn_heads": [t, heads*head_dim], "moe_output": [t, h]}, float64."""
    generator = torch.Generator().manual_seed(seed)
    return {
        (step, layer): {
            "attn_heads": torch.randn(TOKENS, HEADS * HEAD_DIM, generator=generator, dtype=torch.float64),
            "moe_output": torch.randn(TOKENS, HIDDEN, generator=generator, dtype=torch.float64),
        }
        for step in range(STEPS)
        for layer in range(LAYERS)
    }


def write_sglang_run(root: str | os.PathLike[str], *, tp_size: int, mangle: Mangle | None = None,
                     dp_attention: bool = False, exp_name: str = "sglang_dump_20261122_120000_000001") -> str:
    """Write an SGLang TP=``tp_size`` run of the model under ``root/exp_name``; returns ``root``.

    Per layer and rank: ``attn_heads`` (column-parallel, ``t (num_heads*head_dim)[tp]``),
    ``moe_partial`` (this rank's experts' share, ``t h[tp:partial]``) and ``moe_output``
    (after the all-reduce, ``t h # tp:replicated``). With ``dp_attention`` the ranks are
    also attention-DP ranks (attn_dp size = tp size, attn_tp size 1) and each dumps its
    own block of tokens of ``attn_tokens`` (``t[dp] h # dp:=attn_dp tp:replicated``).
    ``mangle(name, rank, layer, value)`` plants a bug in what a rank writes.
    """
    exp_dir = os.path.join(os.fspath(root), exp_name)
    os.makedirs(exp_dir, exist_ok=True)
    width = HEADS * HEAD_DIM // tp_size
    for rank in range(tp_size):
        dump_index = 0
        for (step, layer), tensors in model_tensors().items():
            values = {
                "attn_heads": (tensors["attn_heads"][:, rank * width:(rank + 1) * width],
                               "t (num_heads*head_dim)[tp]"),
                "moe_partial": (tensors["moe_output"] / tp_size, "t h[tp:partial]"),
                "moe_output": (tensors["moe_output"], "t h # tp:replicated"),
            }
            if dp_attention:
                # The MoE side sees every DP rank's tokens (gathered): the same on each.
                values = {name: (value, dims + (" " if "#" in dims else " # ") + "attn_dp:replicated")
                          for name, (value, dims) in values.items()}
                rows = tensors["moe_output"].tensor_split(tp_size)[rank]
                values["attn_tokens"] = (rows, "t[dp] h # dp:=attn_dp tp:replicated")
            for name, (value, dims) in values.items():
                value = value.to(torch.float32).contiguous()
                if mangle is not None:
                    value = mangle(name, rank, layer, value)
                dump_index += 1
                _write_one(exp_dir, step=step, rank=rank, dump_index=dump_index, name=name, value=value, dims=dims,
                           tp=(rank, tp_size), layer_id=layer, dp_attention=dp_attention)
    return os.fspath(root)


def _write_one(exp_dir: str, *, step: int, rank: int, dump_index: int, name: str, value: torch.Tensor, dims: str,
               tp: tuple[int, int], layer_id: int, dp_attention: bool = False) -> None:
    file_tags = dict(step=step, rank=rank, dump_index=dump_index, name=name, recompute_status="disabled",
                     layer_id=layer_id)
    info: dict[str, object] = {}
    for axis in SGLANG_AXES:
        info[f"{axis}_rank"], info[f"{axis}_size"] = 0, 1
    info["tp_rank"], info["tp_size"] = tp
    if dp_attention:  # every rank its own attention-DP group of one
        info["attn_dp_rank"], info["attn_dp_size"] = tp
    info["enable_dp_attention"] = dp_attention
    meta = dict(file_tags, world_rank=rank, world_size=tp[1], sglang_parallel_info=info, dims=dims)
    file_name = "___".join(f"{key}={value}" for key, value in file_tags.items()) + ".pt"
    torch.save({"value": value, "meta": meta}, os.path.join(exp_dir, file_name))


def write_own_run(path: str | os.PathLike[str], *, dp_attention: bool = False) -> str:
    """The same model as a single-process dumpcmp run, named and tagged as our presets do
    (tag ``layer``), with a transformers-style batch dim of 1 on ``moe_output`` (and
    ``attn_tokens`` to meet an SGLang ``dp_attention`` run)."""
    from dumper.api import Dumper

    dumper = Dumper()
    dumper.configure(dir=os.fspath(path))
    try:
        for step in range(STEPS):
            for layer in range(LAYERS):
                tensors = model_tensors()[(step, layer)]
                with dumper.tags(layer=layer):
                    dumper.dump("attn_heads", tensors["attn_heads"].to(torch.float32), dims="t (num_heads head_dim)")
                    dumper.dump("moe_partial", tensors["moe_output"].to(torch.float32), dims="t h")
                    dumper.dump("moe_output", tensors["moe_output"].to(torch.float32)[None], dims="1 t h")
                    if dp_attention:
                        dumper.dump("attn_tokens", tensors["moe_output"].to(torch.float32), dims="t h")
            dumper.step()
    finally:
        dumper.close()
    return os.fspath(path)
