"""Write a random-weight tiny Qwen3-MoE or DeepSeek-V2 checkpoint that vLLM and transformers both load.

    python -m examples.vllm.make_model /tmp/tiny-qwen3-moe
    python -m examples.vllm.make_model /tmp/tiny-deepseek-v2 --arch deepseek_v2

No hub access: the config is built here and the weights are drawn from a seeded
generator, so the same directory comes out on every machine. Sizes are the smallest
vLLM's CPU kernels accept: head_dim 32 (the CPU attention kernel rejects 16), and
head, KV-head and expert counts divisible by 2 so that TP=2 splits them evenly.
The DeepSeek-V2 model (MLA attention, a shared expert, layer 0 dense) keeps the MLA
sizes that vLLM's CPU MLA kernel is built for: see ``tiny_deepseek_v2_config``.
"""

from __future__ import annotations

import argparse
import os

NUM_LAYERS = 2
VOCAB_SIZE = 256
# DeepSeek-V2: layer 0 dense (first_k_dense_replace), layers 1 and 2 MoE.
DEEPSEEK_V2_LAYERS = 3
DEEPSEEK_V2_DENSE_LAYERS = 1
ARCHITECTURES = ("qwen3_moe", "deepseek_v2")


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


def tiny_deepseek_v2_config():
    from transformers import DeepseekV2Config

    return DeepseekV2Config(
        vocab_size=VOCAB_SIZE,
        hidden_size=128,
        intermediate_size=256,           # the dense layer's MLP
        moe_intermediate_size=64,        # each expert's (and, x n_shared_experts, the shared one's)
        num_hidden_layers=DEEPSEEK_V2_LAYERS,
        first_k_dense_replace=DEEPSEEK_V2_DENSE_LAYERS,
        num_attention_heads=4,
        num_key_value_heads=4,
        # MLA. vLLM's CPU MLA backend (v1/attention/backends/mla/cpu_mla.py) accepts one
        # latent cache width, kv_lora_rank + qk_rope_head_dim = 576, and its decode kernel
        # is built for a 512-wide latent: DeepSeek-V2's own 512 + 64. The other sizes are free.
        q_lora_rank=64,
        kv_lora_rank=512,
        qk_rope_head_dim=64,
        qk_nope_head_dim=32,
        v_head_dim=32,
        n_routed_experts=8,
        num_experts_per_tok=2,
        n_shared_experts=1,
        # transformers' router ignores norm_topk_prob and scales the routing weights by
        # routed_scaling_factor; vLLM scales the routed output: 1.0 and False make both
        # engines compute the same routed_expert_output.
        norm_topk_prob=False,
        routed_scaling_factor=1.0,
        topk_method="greedy",
        n_group=1,
        topk_group=1,
        max_position_embeddings=128,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        tie_word_embeddings=False,
        torch_dtype="float32",
    )


def make_model(directory: str | os.PathLike[str], *, seed: int = 0, arch: str = "qwen3_moe") -> str:
    """Save the tiny model of ``arch`` (one of ARCHITECTURES) into ``directory`` (created); returns its path."""
    import torch
    from transformers import DeepseekV2ForCausalLM, Qwen3MoeForCausalLM

    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}: one of {', '.join(ARCHITECTURES)}")
    torch.manual_seed(seed)
    if arch == "deepseek_v2":
        model = DeepseekV2ForCausalLM(tiny_deepseek_v2_config()).to(torch.float32)
    else:
        model = Qwen3MoeForCausalLM(tiny_qwen3_moe_config()).to(torch.float32)
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
    parser.add_argument("--arch", choices=ARCHITECTURES, default="qwen3_moe")
    args = parser.parse_args()
    print(make_model(args.directory, seed=args.seed, arch=args.arch))


if __name__ == "__main__":
    main()
