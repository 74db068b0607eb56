"""``--compile``: every decoder layer under ``torch.compile(fullgraph=True, dynamic=True)``.

As vLLM does, the parts a compiler cannot trace are custom operators, opaque to it:

* the collectives (``Comm.all_reduce`` / ``all_gather``): ``moe_engine::all_reduce``;
  they run eagerly between the compiled kernels, with the same process groups;
* attention over the KV cache (a Python loop over the batch's requests):
  ``moe_engine::attend``, reading the step's batch from a forward context (vLLM's
  ``set_forward_context``), as a compiled graph cannot take a Python batch object;
* the routed experts (which tokens go to which expert is data-dependent):
  ``moe_engine::routed_experts``.

Everything else of a layer (norms, projections, RoPE, router, top-k, shared expert,
the residual stream) and the layer's dump calls are traced: the dumps become
``dumpcmp::`` operators of the graph (dumper/compiled.py). Each layer is its own graph
(its ``layer`` tag is a constant of it); the token count is dynamic, so a layer
compiles once for the prefill and every decode step.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from examples.moe_engine.batch import ForwardBatch
from examples.moe_engine.parallel import Axis, Comm


class _ForwardContext:
    """What the opaque operators need besides tensors: one engine per process."""

    def __init__(self) -> None:
        self.comm: Comm | None = None
        self.batch: ForwardBatch | None = None
        self.attention: dict[int, Any] = {}  # layer id -> the eager Attention.attend
        self.experts: dict[int, Any] = {}  # layer id -> the eager RoutedExperts.forward


_context = _ForwardContext()


@torch.library.custom_op("moe_engine::all_reduce", mutates_args=())
def _all_reduce(tensor: torch.Tensor, axis: str) -> torch.Tensor:
    # A new tensor (the eager collective clones before reducing): operator outputs never alias inputs.
    return _EAGER_ALL_REDUCE(_current_comm(), tensor, axis)


@_all_reduce.register_fake
def _(tensor: torch.Tensor, axis: str) -> torch.Tensor:
    return torch.empty_like(tensor)


@torch.library.custom_op("moe_engine::all_gather", mutates_args=())
def _all_gather(tensor: torch.Tensor, axis: str, size: int) -> torch.Tensor:
    return _EAGER_ALL_GATHER(_current_comm(), tensor, axis)


@_all_gather.register_fake
def _(tensor: torch.Tensor, axis: str, size: int) -> torch.Tensor:
    return tensor.new_empty((tensor.shape[0] * size, *tensor.shape[1:]))


@torch.library.custom_op("moe_engine::attend", mutates_args=())
def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer_id: int) -> torch.Tensor:
    return _context.attention[layer_id](q, k, v, _context.batch)


@_attend.register_fake
def _(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer_id: int) -> torch.Tensor:
    return torch.empty_like(v)


@torch.library.custom_op("moe_engine::routed_experts", mutates_args=())
def _routed_experts(hidden: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor,
                    layer_id: int) -> torch.Tensor:
    return _context.experts[layer_id](hidden, topk_weights, topk_ids)


@_routed_experts.register_fake
def _(hidden: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor, layer_id: int) -> torch.Tensor:
    return torch.empty_like(hidden)


def _current_comm() -> Comm:
    if _context.comm is None:
        raise RuntimeError("moe_engine: a compiled collective ran before compile_model() set the engine's Comm")
    return _context.comm


_EAGER_ALL_REDUCE = Comm.all_reduce
_EAGER_ALL_GATHER = Comm.all_gather


def compile_model(model: torch.nn.Module, comm: Comm) -> None:
    """Switch ``model`` (a MoEModel) to compiled mode, in place."""
    _context.comm = comm
    _context.attention = {}
    _context.experts = {}
    # The instance's collectives become the operators (identity over axes of size 1, as eagerly).
    comm.all_reduce = functools.partial(_traced_all_reduce, comm)  # type: ignore[method-assign]
    comm.all_gather = functools.partial(_traced_all_gather, comm)  # type: ignore[method-assign]
    for layer in model.layers:
        attention = layer.attention
        _context.attention[layer.layer_id] = attention.attend
        attention.attend = functools.partial(_traced_attend, layer.layer_id)
        if layer.is_moe:
            experts = layer.mlp.experts
            _context.experts[layer.layer_id] = experts.forward
            experts.forward = functools.partial(_routed_experts_op, layer.layer_id)
        layer.forward = torch.compile(layer.forward, fullgraph=True, dynamic=True)
    eager_forward = model.forward
    model.forward = functools.partial(_forward_with_context, eager_forward)


def _forward_with_context(eager_forward, input_ids: torch.Tensor, batch: ForwardBatch) -> torch.Tensor:
    _context.batch = batch
    try:
        return eager_forward(input_ids, batch)
    finally:
        _context.batch = None


def _traced_all_reduce(comm: Comm, tensor: torch.Tensor, axis: Axis) -> torch.Tensor:
    if comm.size(axis) == 1:
        return tensor
    return torch.ops.moe_engine.all_reduce(tensor, axis)


def _traced_all_gather(comm: Comm, tensor: torch.Tensor, axis: Axis) -> torch.Tensor:
    size = comm.size(axis)
    if size == 1:
        return tensor
    return torch.ops.moe_engine.all_gather(tensor.contiguous(), axis, size)


def _traced_attend(layer_id: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, batch: Any) -> torch.Tensor:
    return torch.ops.moe_engine.attend(q, k, v, layer_id)


def _routed_experts_op(layer_id: int, hidden: torch.Tensor, topk_weights: torch.Tensor,
                       topk_ids: torch.Tensor) -> torch.Tensor:
    return torch.ops.moe_engine.routed_experts(hidden, topk_weights, topk_ids, layer_id)
