"""Where each rank sits, and the collectives the model uses.

Two views of the same ``world = tp * ep`` ranks, as in SGLang:

* attention: ``attn_dp`` groups of ``attn_tp`` ranks; rank = attn_dp_rank * attn_tp + attn_tp_rank.
  Ranks of one attention-TP group serve the same requests and split the heads.
* MoE: ``ep`` groups of ``moe_tp`` ranks; rank = ep_rank * moe_tp + moe_tp_rank.
  Ranks of one EP group hold different experts; ranks of one moe-TP group hold slices
  of the same experts.

Axes of size 1 need no process group: every collective over them is the identity.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.distributed as dist

Axis = Literal["world", "attn_tp", "attn_dp", "ep", "moe_tp"]
AXES: tuple[Axis, ...] = ("world", "attn_tp", "attn_dp", "ep", "moe_tp")


@dataclass(frozen=True, kw_only=True)
class ParallelLayout:
    rank: int
    tp: int
    ep: int
    dp_attention: int

    @property
    def world_size(self) -> int:
        return self.tp * self.ep

    @property
    def attn_tp_size(self) -> int:
        return self.world_size // self.dp_attention

    @property
    def attn_tp_rank(self) -> int:
        return self.rank % self.attn_tp_size

    @property
    def attn_dp_rank(self) -> int:
        return self.rank // self.attn_tp_size

    @property
    def moe_tp_rank(self) -> int:
        return self.rank % self.tp

    @property
    def ep_rank(self) -> int:
        return self.rank // self.tp

    def size(self, axis: Axis) -> int:
        return {"world": self.world_size, "attn_tp": self.attn_tp_size, "attn_dp": self.dp_attention,
                "ep": self.ep, "moe_tp": self.tp}[axis]

    def axis_rank(self, axis: Axis) -> int:
        return {"world": self.rank, "attn_tp": self.attn_tp_rank, "attn_dp": self.attn_dp_rank,
                "ep": self.ep_rank, "moe_tp": self.moe_tp_rank}[axis]

    def dumper_axes(self) -> dict[str, tuple[int, int]]:
        """``{axis: (rank, size)}`` for ``dumper.set_parallel``.

        NOTE: no ``tp`` axis: the world is already described twice (attn_dp x attn_tp and
        ep x moe_tp), and a world-sized ``tp`` axis would be one more axis every dims
        annotation has to name without telling the comparator anything new.
        """
        return {axis: (self.axis_rank(axis), self.size(axis)) for axis in ("attn_tp", "attn_dp", "ep", "moe_tp")}

    def group_ranks(self, axis: Axis) -> list[list[int]]:
        """Every group of ``axis``, each a list of global ranks (creation order matters)."""
        world, attn_tp, moe_tp = self.world_size, self.attn_tp_size, self.tp
        if axis == "world":
            return [list(range(world))]
        if axis == "attn_tp":
            return [[dp * attn_tp + t for t in range(attn_tp)] for dp in range(self.dp_attention)]
        if axis == "attn_dp":
            return [[dp * attn_tp + t for dp in range(self.dp_attention)] for t in range(attn_tp)]
        if axis == "moe_tp":
            return [[e * moe_tp + t for t in range(moe_tp)] for e in range(self.ep)]
        if axis == "ep":
            return [[e * moe_tp + t for e in range(self.ep)] for t in range(moe_tp)]
        raise ValueError(f"unknown axis {axis!r}")


class Comm:
    """The collectives of one rank; identity over axes of size 1 (and without a process group)."""

    def __init__(self, layout: ParallelLayout) -> None:
        self.layout = layout
        self._groups: dict[str, object] = {}
        if layout.world_size == 1:
            return
        for axis in AXES:
            if layout.size(axis) == 1:
                continue
            if axis == "world":
                self._groups[axis] = dist.group.WORLD
                continue
            # NOTE: every rank must create every group, in the same order.
            for ranks in layout.group_ranks(axis):
                group = dist.new_group(ranks)
                if layout.rank in ranks:
                    self._groups[axis] = group

    @property
    def groups(self) -> dict[str, object]:
        """``{axis: process group}`` for every axis of size > 1 this rank belongs to."""
        return dict(self._groups)

    def size(self, axis: Axis) -> int:
        return self.layout.size(axis)

    def all_reduce(self, tensor: torch.Tensor, axis: Axis) -> torch.Tensor:
        """Sum over the ranks of ``axis``; returns a new tensor (the input is left as it was)."""
        if self.size(axis) == 1:
            return tensor
        reduced = tensor.clone()
        dist.all_reduce(reduced, group=self._groups[axis])
        return reduced

    def all_gather(self, tensor: torch.Tensor, axis: Axis) -> torch.Tensor:
        """Concatenate equal-shaped tensors of the ranks of ``axis`` along dim 0, in rank order."""
        size = self.size(axis)
        if size == 1:
            return tensor
        tensor = tensor.contiguous()
        parts = [torch.empty_like(tensor) for _ in range(size)]
        dist.all_gather(parts, tensor, group=self._groups[axis])
        return torch.cat(parts, dim=0)
