"""Write a random-weight tiny Qwen3-MoE checkpoint that vLLM and transformers both load.

    python -m examples.vllm.make_model /tmp/tiny-qwen3-moe

No hub access: the config is built here and the weights are drawn from a seeded
generator, so the same directory comes out on every machine. Sizes are the smallest
vLLM's CPU kernels accept: head_dim 32 (the CPU attention kernel rejects 16), and
head, KV-head and expert counts divisible by 2 so that TP=2 splits them evenly.
"""

from __future__ import annotations

import argparse
import os

NUM_LAYERS = 2
VOCAB_SIZE = 256


def tiny_qwen3_moe_config():
    from transformers import Qwen3MoeConfig

    return Qwen3MoeConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=128,
        intermediate_size=256,
        moe_intermediate_size=64,
        num_hidden_layers=NUM_LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        num_experts=8,
        num_experts_per_tok=2,
        norm_topk_prob=True,
        decoder_sparse_step=1,
        mlp_only_layers=[],
        max_position_embeddings=128,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        torch_dtype="float32",
    )


def make_model(directory: str | os.PathLike[str], *, seed: int = 0) -> str:
    """Save the tiny model into ``directory`` (created); returns its path."""
    import torch
    from transformers import Qwen3MoeForCausalLM

    torch.manual_seed(seed)
    config = tiny_qwen3_moe_config()
    model = Qwen3MoeForCausalLM(config).to(torch.float32)
    # NOTE: the default init (std 0.02) gives near-zero activations after two layers;
    # larger weights keep every tensor well above float32 rounding, so the comparison
    # thresholds test the engines' arithmetic, not noise.
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() >= 2:
                parameter.normal_(0.0, 0.08)
    model.save_pretrained(os.fspath(directory), safe_serialization=True)
    return os.fspath(directory)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", help="where to write config.json and model.safetensors")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(make_model(args.directory, seed=args.seed))


if __name__ == "__main__":
    main()
