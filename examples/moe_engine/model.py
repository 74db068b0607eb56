"""The tiny MoE transformer, one small module per stage.

NOTE: this file holds no dump calls. Dumps come from YAML patches
(``patches/presets/example/``) that anchor on single-line statements here, e.g.
``attn_out = self.attention(hidden, batch)`` or ``router_logits = self.router(hidden)``.
Keep those statements on one line and unique within their function; docs/example-engine.md
lists them.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from examples.moe_engine.batch import ForwardBatch
from examples.moe_engine.config import EngineConfig
from examples.moe_engine.cudagraph import StaticBatch, static_attend, static_routed_experts
from examples.moe_engine.parallel import Axis, Comm
from examples.moe_engine.weights import shard


class Linear(nn.Module):
    """``y = x @ weight.T`` with a fixed (already sliced) weight."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("weight", weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)


class RMSNorm(nn.Module):
    def __init__(self, weight: torch.Tensor, eps: float) -> None:
        super().__init__()
        self.register_buffer("weight", weight)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (normed * self.weight.float()).to(x.dtype)


class DeferredReduction(nn.Module):
    """All-reduce fusion: finish the reduction that the previous MoE block skipped.

    Identity when nothing was deferred (no ``--fusion``, or the previous layer is dense).
    """

    def __init__(self, comm: Comm, axes: tuple[Axis, ...]) -> None:
        super().__init__()
        self.comm = comm
        self.axes = axes

    def forward(self, mlp_out: torch.Tensor) -> torch.Tensor:
        for axis in self.axes:
            mlp_out = self.comm.all_reduce(mlp_out, axis)
        return mlp_out


class ResidualAddNorm(nn.Module):
    """``residual += hidden; return norm(residual), residual``: the (fused) add + RMSNorm.

    ``reduces_layer_id`` names the layer whose MoE output this add + norm reduces under
    ``--fusion`` (``None`` when it reduces nothing).
    """

    def __init__(self, weight: torch.Tensor, eps: float, *, layer_id: int, deferred: DeferredReduction,
                 reduces_layer_id: int | None) -> None:
        super().__init__()
        self.norm = RMSNorm(weight, eps)
        self.layer_id = layer_id
        self.finish_deferred_reduction = deferred
        self.reduces_layer_id = reduces_layer_id

    def forward(self, hidden: torch.Tensor, residual: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        if residual is None:
            return self.norm(hidden), hidden
        hidden = self.finish_deferred_reduction(hidden)
        residual = hidden + residual
        return self.norm(residual), residual


def apply_rotary(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotary position embedding (rotate-half form) on ``x``: [tokens, heads, head_dim]."""
    half = x.shape[-1] // 2
    inv_freq = 1.0 / (theta ** (torch.arange(0, half, device=x.device, dtype=torch.float32) / half))
    freqs = positions.float()[:, None] * inv_freq[None, :]
    cos, sin = freqs.cos()[:, None, :], freqs.sin()[:, None, :]
    x1, x2 = x.float()[..., :half], x.float()[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)


class Attention(nn.Module):
    """Heads split over attention-TP; row-parallel ``o_proj`` then an all-reduce over attn_tp."""

    def __init__(self, config: EngineConfig, weights: dict[str, torch.Tensor], *, layer_id: int, comm: Comm) -> None:
        super().__init__()
        model, layout = config.model, comm.layout
        prefix = f"layers.{layer_id}.attention"
        tp_rank, tp_size = layout.attn_tp_rank, layout.attn_tp_size
        self.layer_id = layer_id
        self.comm = comm
        self.num_local_heads = model.num_heads // tp_size
        self.head_dim = model.head_dim
        self.rope_theta = model.rope_theta
        self.q_proj = Linear(shard(weights[f"{prefix}.q_proj"], 0, tp_rank, tp_size))
        self.k_proj = Linear(shard(weights[f"{prefix}.k_proj"], 0, tp_rank, tp_size))
        self.v_proj = Linear(shard(weights[f"{prefix}.v_proj"], 0, tp_rank, tp_size))
        self.o_proj = Linear(shard(weights[f"{prefix}.o_proj"], 1, tp_rank, tp_size))

    def forward(self, hidden: torch.Tensor, batch: ForwardBatch) -> torch.Tensor:
        shape = (hidden.shape[0], self.num_local_heads, self.head_dim)
        q = self.q_proj(hidden).view(shape)
        k = self.k_proj(hidden).view(shape)
        v = self.v_proj(hidden).view(shape)
        q = apply_rotary(q, batch.positions, self.rope_theta)
        k = apply_rotary(k, batch.positions, self.rope_theta)
        attn = self.attend(q, k, v, batch)
        attn_out = self.o_proj(attn.flatten(1))
        attn_out = self.comm.all_reduce(attn_out, "attn_tp")
        return attn_out

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, batch: ForwardBatch) -> torch.Tensor:
        """Causal attention of each request over its cached tokens; a padding row attends to itself."""
        if isinstance(batch, StaticBatch):  # --cuda-graph decode (examples/moe_engine/cudagraph.py)
            return static_attend(q, k, v, batch, layer_id=self.layer_id, head_dim=self.head_dim)
        out = v.clone()
        scale = self.head_dim ** -0.5
        for segment in batch.iter_segments():
            keys, values = batch.kv_cache.store(self.layer_id, segment, k[segment.rows], v[segment.rows])
            scores = torch.einsum("qhd,khd->hqk", q[segment.rows].float(), keys.float()) * scale
            query_pos = batch.positions[segment.rows]
            key_pos = torch.arange(segment.seq_len, device=q.device)
            scores = scores.masked_fill(key_pos[None, None, :] > query_pos[None, :, None], float("-inf"))
            probs = scores.softmax(dim=-1)
            out[segment.rows] = torch.einsum("hqk,khd->qhd", probs, values.float()).to(v.dtype)
        return out


class DenseMLP(nn.Module):
    """SwiGLU MLP of the first layers: replicated, or with ``--dense-tp`` split over the attention-TP group."""

    def __init__(self, config: EngineConfig, weights: dict[str, torch.Tensor], *, layer_id: int, comm: Comm) -> None:
        super().__init__()
        prefix = f"layers.{layer_id}.mlp"
        layout = comm.layout
        self.layer_id = layer_id
        self.comm = comm
        self.tensor_parallel = config.dense_tp and layout.attn_tp_size > 1
        rank, size = (layout.attn_tp_rank, layout.attn_tp_size) if self.tensor_parallel else (0, 1)
        self.gate_proj = Linear(shard(weights[f"{prefix}.gate_proj"], 0, rank, size))
        self.up_proj = Linear(shard(weights[f"{prefix}.up_proj"], 0, rank, size))
        self.down_proj = Linear(shard(weights[f"{prefix}.down_proj"], 1, rank, size))
        # Seed 4: the dense-TP path needs its own all-reduce; the bug drops it.
        self.skip_reduction_bug = config.has_bug("dense_tp_missing_reduce")

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        gate = self.gate_proj(hidden)
        up = self.up_proj(hidden)
        mlp_out = self.down_proj(F.silu(gate) * up)
        mlp_out = self.reduce_output(mlp_out)
        return mlp_out

    def reduce_output(self, mlp_out: torch.Tensor) -> torch.Tensor:
        if not self.tensor_parallel or self.skip_reduction_bug:
            return mlp_out
        return self.comm.all_reduce(mlp_out, "attn_tp")


class Router(nn.Module):
    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.gate = Linear(weight)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.gate(hidden).float()


class RoutedExperts(nn.Module):
    """This rank's experts (split over EP), each expert's weights split over moe-TP.

    The output is a partial sum: over the EP group (other ranks' experts) and over the
    moe-TP group (row-parallel ``down_proj``).
    """

    def __init__(self, config: EngineConfig, weights: dict[str, torch.Tensor], *, layer_id: int, comm: Comm) -> None:
        super().__init__()
        prefix = f"layers.{layer_id}.mlp.experts"
        layout = comm.layout
        per_rank = config.model.num_experts // layout.ep
        self.first_expert = layout.ep_rank * per_rank
        self.num_local_experts = per_rank
        local = slice(self.first_expert, self.first_expert + per_rank)
        tp_rank, tp_size = layout.moe_tp_rank, layout.tp
        self.register_buffer("gate_proj", shard(weights[f"{prefix}.gate_proj"][local], 1, tp_rank, tp_size))
        self.register_buffer("up_proj", shard(weights[f"{prefix}.up_proj"][local], 1, tp_rank, tp_size))
        self.register_buffer("down_proj", shard(weights[f"{prefix}.down_proj"][local], 2, tp_rank, tp_size))
        # --nondeterministic: a fresh seed per run, so no two runs share the summation order.
        self.shuffle = (torch.Generator().manual_seed(int.from_bytes(os.urandom(8), "little") >> 1)
                        if config.nondeterministic else None)
        # Set by the CUDA-graph runner while it runs the static decode path (cudagraph.py).
        self.static_batch = None

    def forward(self, hidden: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor) -> torch.Tensor:
        if self.static_batch is not None:
            return static_routed_experts(self, hidden, topk_weights, topk_ids, self.static_batch)
        routed = torch.zeros_like(hidden)
        for local_index in range(self.num_local_experts):
            rows, slots = (topk_ids == self.first_expert + local_index).nonzero(as_tuple=True)
            if rows.numel() == 0:
                continue
            x = hidden[rows]
            h = F.silu(F.linear(x, self.gate_proj[local_index])) * F.linear(x, self.up_proj[local_index])
            y = self.down_project(h, self.down_proj[local_index])
            routed.index_add_(0, rows, y * topk_weights[rows, slots, None])
        return routed

    def down_project(self, h: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        if self.shuffle is None:
            return F.linear(h, weight)
        # NOTE: a split-K GEMM whose partial sums land in a run-dependent order (atomics
        # on a GPU): the result differs between runs at rounding level only.
        chunks = torch.arange(h.shape[-1]).chunk(SPLIT_K)
        order = torch.randperm(len(chunks), generator=self.shuffle).tolist()
        out = torch.zeros(h.shape[0], weight.shape[0], dtype=torch.float32, device=h.device)
        for index in order:
            out += F.linear(h[:, chunks[index]].float(), weight[:, chunks[index]].float())
        return out.to(h.dtype)


SPLIT_K = 8


class SharedExperts(nn.Module):
    """The shared expert, applied to every token, its hidden dim split over the whole MoE group.

    Its output is a partial sum over all ranks, added to the routed partial sum before
    the MoE block's one reduction.
    """

    def __init__(self, config: EngineConfig, weights: dict[str, torch.Tensor], *, layer_id: int, comm: Comm) -> None:
        super().__init__()
        prefix = f"layers.{layer_id}.mlp.shared_experts"
        layout = comm.layout
        rank, size = layout.rank, layout.world_size
        self.comm = comm
        self.gate_proj = Linear(shard(weights[f"{prefix}.gate_proj"], 0, rank, size))
        self.up_proj = Linear(shard(weights[f"{prefix}.up_proj"], 0, rank, size))
        self.down_proj = Linear(shard(weights[f"{prefix}.down_proj"], 1, rank, size))
        # Seed 3: a stale "not reduced yet" flag makes the shared experts reduce their
        # own output, and the MoE block then reduces it again with the routed output.
        self.reduce_own_output_bug = config.has_bug("shared_expert_double_reduce")

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        shared = self.down_proj(F.silu(self.gate_proj(hidden)) * self.up_proj(hidden))
        if self.reduce_own_output_bug:
            shared = self.comm.all_reduce(shared, "world")
        return shared


class MoEBlock(nn.Module):
    """Router, top-k routed experts (EP x moe-TP), shared expert, one reduction of their sum."""

    def __init__(self, config: EngineConfig, weights: dict[str, torch.Tensor], *, layer_id: int, comm: Comm) -> None:
        super().__init__()
        self.layer_id = layer_id
        self.comm = comm
        self.top_k = config.model.top_k
        router_weight = weights[f"layers.{layer_id}.mlp.router"]
        if config.perturb_router and comm.layout.rank == 0 and layer_id == config.model.num_dense_layers:
            router_weight = perturbed(router_weight)
        self.router = Router(router_weight)
        self.experts = RoutedExperts(config, weights, layer_id=layer_id, comm=comm)
        self.shared_experts = SharedExperts(config, weights, layer_id=layer_id, comm=comm)
        # --fusion: the next ResidualAddNorm reduces this block's output (see DeferredReduction).
        self.defer_reduction = config.fusion
        self.double_reduce_bug = config.has_bug("double_reduce")

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        router_logits = self.router(hidden)
        topk_weights, topk_ids = self.select_experts(router_logits)
        routed = self.experts(hidden, topk_weights, topk_ids)
        shared = self.shared_experts(hidden)
        moe_out = routed + shared
        moe_out = self.reduce_output(moe_out)
        return moe_out

    def select_experts(self, router_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        probs = router_logits.softmax(dim=-1)
        topk_weights, topk_ids = probs.topk(self.top_k, dim=-1)
        topk_weights = topk_weights / topk_weights.sum(dim=-1, keepdim=True)
        return topk_weights.to(self.router.gate.weight.dtype), topk_ids

    def reduce_output(self, moe_out: torch.Tensor) -> torch.Tensor:
        # The predicate seed 1 fixed: `if ep_size > 1 and not should_allreduce_fusion: all_reduce(ep)`.
        if self.defer_reduction:
            return moe_out
        moe_out = self.comm.all_reduce(moe_out, "ep")
        # Seed 2: the TP copy of the predicate was written when the TP group was the whole
        # MoE group; with EP on, reducing over it again after the EP reduction doubles it.
        tp_axis: Axis = "world" if self.double_reduce_bug else "moe_tp"
        moe_out = self.comm.all_reduce(moe_out, tp_axis)
        return moe_out


def perturbed(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` plus seeded noise of half its spread (``--perturb-router``: a planted router bug)."""
    generator = torch.Generator().manual_seed(1234)
    noise = torch.randn(weight.shape, generator=generator) * weight.float().std() * 0.5
    return (weight.float() + noise).to(weight.dtype)


class DecoderLayer(nn.Module):
    def __init__(self, config: EngineConfig, weights: dict[str, torch.Tensor], *, layer_id: int, comm: Comm) -> None:
        super().__init__()
        model = config.model
        self.layer_id = layer_id
        self.is_moe = model.is_moe_layer(layer_id)
        self.comm = comm
        # DP-attention: the MoE block runs on the tokens of every DP rank.
        self.gathers_dp_tokens = self.is_moe and comm.size("attn_dp") > 1
        self.input_norm = ResidualAddNorm(
            weights[f"layers.{layer_id}.input_norm"], model.rms_norm_eps, layer_id=layer_id,
            **deferred_reduction_of(config, comm, previous_layer_id=layer_id - 1),
        )
        self.attention = Attention(config, weights, layer_id=layer_id, comm=comm)
        self.post_attention_norm = ResidualAddNorm(
            weights[f"layers.{layer_id}.post_attention_norm"], model.rms_norm_eps, layer_id=layer_id,
            deferred=DeferredReduction(comm, ()), reduces_layer_id=None,
        )
        mlp_class = MoEBlock if self.is_moe else DenseMLP
        self.mlp = mlp_class(config, weights, layer_id=layer_id, comm=comm)

    def forward(self, hidden: torch.Tensor, residual: torch.Tensor | None, batch: ForwardBatch
                ) -> tuple[torch.Tensor, torch.Tensor]:
        hidden, residual = self.input_norm(hidden, residual)
        attn_out = self.attention(hidden, batch)
        hidden, residual = self.post_attention_norm(attn_out, residual)
        hidden = self.gather_dp_tokens(hidden, batch)
        mlp_out = self.mlp(hidden)
        mlp_out = self.scatter_dp_tokens(mlp_out, batch)
        return mlp_out, residual

    def gather_dp_tokens(self, hidden: torch.Tensor, batch: ForwardBatch) -> torch.Tensor:
        """[local rows, h] -> [dp_attention * padded rows, h]: every DP rank's rows, each padded to the largest."""
        if not self.gathers_dp_tokens:
            return hidden
        padded_rows = batch.padded_rows_per_dp_rank
        padded = F.pad(hidden, (0, 0, 0, padded_rows - hidden.shape[0]))
        return self.comm.all_gather(padded, "attn_dp")

    def scatter_dp_tokens(self, mlp_out: torch.Tensor, batch: ForwardBatch) -> torch.Tensor:
        """Keep this DP rank's own rows of the gathered output."""
        if not self.gathers_dp_tokens:
            return mlp_out
        start = batch.dp_rank * batch.padded_rows_per_dp_rank
        return mlp_out[start:start + batch.num_rows]


def deferred_reduction_of(config: EngineConfig, comm: Comm, *, previous_layer_id: int) -> dict:
    """What an add + norm must reduce: the previous layer's MoE output under ``--fusion``."""
    if not (config.fusion and previous_layer_id >= 0 and config.model.is_moe_layer(previous_layer_id)):
        return {"deferred": DeferredReduction(comm, ()), "reduces_layer_id": None}
    # Seed 1: the fused all-reduce only knows the TP group; the EP reduction that the
    # MoE block skipped under fusion is then done by nobody.
    axes: tuple[Axis, ...] = ("moe_tp",) if config.has_bug("ep_reduce_skipped_under_fusion") else ("ep", "moe_tp")
    return {"deferred": DeferredReduction(comm, axes), "reduces_layer_id": previous_layer_id}


class MoEModel(nn.Module):
    def __init__(self, config: EngineConfig, weights: dict[str, torch.Tensor], *, comm: Comm) -> None:
        super().__init__()
        model = config.model
        self.embed_tokens = nn.Embedding.from_pretrained(weights["embed_tokens"], freeze=True)
        self.layers = nn.ModuleList(
            DecoderLayer(config, weights, layer_id=layer_id, comm=comm) for layer_id in range(model.num_layers)
        )
        self.final_norm = ResidualAddNorm(
            weights["final_norm"], model.rms_norm_eps, layer_id=model.num_layers,
            **deferred_reduction_of(config, comm, previous_layer_id=model.num_layers - 1),
        )
        self.lm_head = Linear(weights["lm_head"])

    def forward(self, input_ids: torch.Tensor, batch: ForwardBatch) -> torch.Tensor:
        hidden = self.embed_tokens(input_ids)
        residual = None
        for layer in self.layers:
            hidden, residual = layer(hidden, residual, batch)
        hidden, residual = self.final_norm(hidden, residual)
        last_hidden = hidden[batch.last_token_rows]
        logits = self.lm_head(last_hidden).float()
        return logits
