"""The full weights, generated from one seed, identically in every process.

Each rank generates all of them (the model is tiny) and keeps only its slice, so a
healthy parallel run computes the same function as the 1-process baseline and differs
only by the order of floating-point sums.
"""

from __future__ import annotations

import torch

from examples.moe_engine.config import ModelConfig


def generate_weights(model: ModelConfig) -> dict[str, torch.Tensor]:
    """``{name: fp32 tensor}`` in a fixed generation order that no parallel setting changes."""
    generator = torch.Generator().manual_seed(model.seed)
    weights: dict[str, torch.Tensor] = {}

    def normal(name: str, *shape: int, std: float) -> None:
        weights[name] = torch.randn(*shape, generator=generator) * std

    def norm_weight(name: str) -> None:
        # Not all ones, so a norm applied to the wrong tensor shows.
        weights[name] = 1.0 + 0.1 * torch.randn(model.hidden_size, generator=generator)

    hidden, heads, head_dim = model.hidden_size, model.num_heads, model.head_dim
    normal("embed_tokens", model.vocab_size, hidden, std=1.0)
    for layer_id in range(model.num_layers):
        prefix = f"layers.{layer_id}"
        norm_weight(f"{prefix}.input_norm")
        norm_weight(f"{prefix}.post_attention_norm")
        for proj in ("q_proj", "k_proj", "v_proj"):
            normal(f"{prefix}.attention.{proj}", heads * head_dim, hidden, std=hidden ** -0.5)
        normal(f"{prefix}.attention.o_proj", hidden, heads * head_dim, std=(heads * head_dim) ** -0.5)
        if not model.is_moe_layer(layer_id):
            inter = model.dense_intermediate_size
            normal(f"{prefix}.mlp.gate_proj", inter, hidden, std=hidden ** -0.5)
            normal(f"{prefix}.mlp.up_proj", inter, hidden, std=hidden ** -0.5)
            normal(f"{prefix}.mlp.down_proj", hidden, inter, std=inter ** -0.5)
            continue
        experts, inter, shared = model.num_experts, model.expert_intermediate_size, model.shared_intermediate_size
        normal(f"{prefix}.mlp.router", experts, hidden, std=hidden ** -0.5)
        normal(f"{prefix}.mlp.experts.gate_proj", experts, inter, hidden, std=hidden ** -0.5)
        normal(f"{prefix}.mlp.experts.up_proj", experts, inter, hidden, std=hidden ** -0.5)
        normal(f"{prefix}.mlp.experts.down_proj", experts, hidden, inter, std=inter ** -0.5)
        normal(f"{prefix}.mlp.shared_experts.gate_proj", shared, hidden, std=hidden ** -0.5)
        normal(f"{prefix}.mlp.shared_experts.up_proj", shared, hidden, std=hidden ** -0.5)
        normal(f"{prefix}.mlp.shared_experts.down_proj", hidden, shared, std=shared ** -0.5)
    norm_weight("final_norm")
    normal("lm_head", model.vocab_size, hidden, std=hidden ** -0.5)
    return weights


def shard(tensor: torch.Tensor, dim: int, rank: int, size: int) -> torch.Tensor:
    """The ``rank``-th of ``size`` equal slices of ``tensor`` along ``dim``."""
    if size == 1:
        return tensor
    return tensor.chunk(size, dim=dim)[rank].contiguous()
