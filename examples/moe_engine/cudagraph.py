"""CUDA-graph decode (``--cuda-graph``), as engines do it.

Decode batches are padded up to the next of a few captured batch sizes and replayed
from a CUDA graph captured for that size; the prefill stays eager. A graph cannot
contain host synchronisation or shapes that change, so the decode path here is
static: one KV-cache arena per layer indexed by request slot (``StaticKVCache``),
attention over the whole arena with a causal mask (``static_attend``), and routed
experts computed on a sorted, fixed-size list of (token, expert) slots
(``static_routed_experts``). ``--static-decode`` runs the same path without capture,
at the real batch size: the kernels a graph replays, for bit-for-bit comparisons.

The graph-only bug ``graph_padding_counts``: the tokens-per-expert counts that lay out
the sorted slots include the padding rows of the captured batch, so real tokens are
computed by the wrong experts. Eager runs have no padding rows and cannot show it.

The engine's dumps (patches/presets/example) fire during capture and are recorded by
the dumper into the graph (dumper/cudagraph.py); before each replay the runner tells
the dumper the real batch size (``dumper.set_real_tokens``), so the records keep only
the real rows.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F

from dumper import dumper
from examples.moe_engine.batch import PADDING_TOKEN_ID, ForwardBatch, KVCache

DEFAULT_GRAPH_SIZES = (1, 2, 4, 8)


class StaticKVCache(KVCache):
    """One [slots + 1, max_len, heads, head_dim] arena per layer; each request's cache is a view of its slot.

    The last slot is scratch: padding rows of a captured batch write there.
    """

    def __init__(self, *, num_layers: int, num_local_heads: int, head_dim: int, dtype: torch.dtype,
                 device: torch.device, num_slots: int, max_len: int) -> None:
        super().__init__(num_layers=num_layers, num_local_heads=num_local_heads, head_dim=head_dim, dtype=dtype,
                         device=device)
        shape = (num_slots + 1, max_len, num_local_heads, head_dim)
        self.key_arenas = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.value_arenas = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.scratch_slot = num_slots
        self.max_len = max_len
        self.slots: dict[int, int] = {}

    def allocate(self, req_id: int, max_len: int) -> None:
        if max_len > self.max_len or len(self.slots) >= self.scratch_slot:
            raise ValueError(f"request {req_id} does not fit the static KV cache ({self.scratch_slot} slots "
                             f"of {self.max_len} tokens)")
        slot = self.slots[req_id] = len(self.slots)
        for layer_id in range(self._num_layers):
            self._keys[layer_id, req_id] = self.key_arenas[layer_id][slot, :max_len]
            self._values[layer_id, req_id] = self.value_arenas[layer_id][slot, :max_len]


@dataclass(kw_only=True)
class StaticBatch:
    """A decode batch of fixed size for the static path: views of the runner's static buffers."""

    positions: torch.Tensor  # [rows] int64
    slot_ids: torch.Tensor  # [rows] int64; padding rows: the scratch slot
    # [dp_attention] int64: each DP rank's real rows (the first of its rows; the rest is padding)
    num_real_per_dp: torch.Tensor
    last_token_rows: torch.Tensor  # [rows] int64: every row is its request's last token
    kv_cache: StaticKVCache
    padding_counts_bug: bool
    dp_rank: int = 0
    # Rows each DP rank contributes to the gathered MoE input: the captured size under a
    # graph (every DP rank replays the same size), else the largest DP rank's rows.
    padded_rows_per_dp_rank: int

    @property
    def num_rows(self) -> int:
        return int(self.positions.shape[0])

    def real_row_mask(self, rows: int) -> torch.Tensor:
        """[rows] bool: which rows of ``rows`` (local, or gathered from every DP rank) hold real tokens."""
        per_rank = rows // self.num_real_per_dp.numel()
        row_in_rank = torch.arange(rows, device=self.positions.device) % per_rank
        return row_in_rank < self.num_real_per_dp.repeat_interleave(per_rank)


def static_attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, batch: StaticBatch, *, layer_id: int,
                  head_dim: int) -> torch.Tensor:
    """Decode attention of each row over its slot of the arena; positions after its own are masked."""
    cache = batch.kv_cache
    key_arena, value_arena = cache.key_arenas[layer_id], cache.value_arenas[layer_id]
    key_arena[batch.slot_ids, batch.positions] = k
    value_arena[batch.slot_ids, batch.positions] = v
    keys, values = key_arena[batch.slot_ids], value_arena[batch.slot_ids]  # [rows, max_len, heads, head_dim]
    scores = torch.einsum("bhd,blhd->bhl", q.float(), keys.float()) * head_dim ** -0.5
    key_pos = torch.arange(keys.shape[1], device=q.device)
    scores = scores.masked_fill(key_pos[None, None, :] > batch.positions[:, None, None], float("-inf"))
    probs = scores.softmax(dim=-1)
    return torch.einsum("bhl,blhd->bhd", probs, values.float()).to(v.dtype)


def static_routed_experts(experts, hidden: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor,
                          batch: StaticBatch) -> torch.Tensor:
    """This rank's experts on a sorted list of (token, expert) slots, with no data-dependent shape.

    Slots are sorted by local expert (other ranks' experts and padding rows go to a
    dropped bucket at the end); the counts of tokens per expert give each sorted slot
    its expert. ``graph_padding_counts``: the counts include the padding rows.
    """
    rows, top_k = topk_ids.shape
    num_local = experts.num_local_experts
    local = topk_ids - experts.first_expert
    is_local = (local >= 0) & (local < num_local)
    real = batch.real_row_mask(rows)[:, None]
    bucket = torch.where(is_local & real, local, num_local).flatten()
    order = torch.sort(bucket, stable=True).indices
    counted = torch.where(is_local, local, num_local).flatten() if batch.padding_counts_bug else bucket
    counts = (counted[:, None] == torch.arange(num_local, device=hidden.device)[None, :]).sum(dim=0)
    expert_of_slot = torch.searchsorted(counts.cumsum(0), torch.arange(rows * top_k, device=hidden.device),
                                        right=True)
    valid = expert_of_slot < num_local
    expert = expert_of_slot.clamp(max=num_local - 1)
    token, which = order // top_k, order % top_k
    x = hidden[token]
    gate = torch.einsum("sh,sih->si", x, experts.gate_proj[expert])
    up = torch.einsum("sh,sih->si", x, experts.up_proj[expert])
    y = torch.einsum("si,shi->sh", F.silu(gate) * up, experts.down_proj[expert])
    weight = topk_weights[token, which] * valid.to(topk_weights.dtype)
    return torch.zeros_like(hidden).index_add_(0, token, y * weight[:, None])


@contextlib.contextmanager
def dumps_paused() -> Iterator[None]:
    """Warm-up runs before a capture compute nothing real: keep them out of the dump."""
    was = dumper.enabled
    dumper.enabled = False
    try:
        yield
    finally:
        dumper.enabled = was


class GraphRunner:
    """Pads decode batches to a captured size and replays its graph; prefill goes to the model eagerly."""

    def __init__(self, model, kv_cache: StaticKVCache, *, sizes: tuple[int, ...], capture: bool,
                 padding_counts_bug: bool, dp_size: int = 1, dp_rank: int = 0) -> None:
        self.model = model
        self.kv_cache = kv_cache
        self.sizes = tuple(sorted(sizes))
        self.capture = capture
        self.padding_counts_bug = padding_counts_bug
        device = kv_cache.key_arenas[0].device
        largest = self.sizes[-1]
        self.input_ids = torch.full((largest,), PADDING_TOKEN_ID, dtype=torch.long, device=device)
        self.positions = torch.zeros(largest, dtype=torch.long, device=device)
        self.slot_ids = torch.full((largest,), kv_cache.scratch_slot, dtype=torch.long, device=device)
        self.num_real_per_dp = torch.zeros(dp_size, dtype=torch.long, device=device)
        self.dp_rank = dp_rank
        self.rows = torch.arange(largest, dtype=torch.long, device=device)
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}

    def __call__(self, input_ids: torch.Tensor, batch: ForwardBatch) -> torch.Tensor:
        if batch.phase != "decode":
            return self.model(input_ids, batch)
        # An idle DP rank's padding row counts as real here: it is dumped, as in eager mode;
        # its logits are not (one row per request, none for a padding row).
        real, requests = batch.num_rows, len(batch.segments)
        # NOTE: every DP rank must run the same size: the MoE gathers equal blocks from each.
        largest = batch.padded_rows_per_dp_rank
        size = real if not self.capture else next((s for s in self.sizes if s >= largest), None)
        if size is None:
            raise ValueError(f"a decode batch of {largest} rows is larger than every captured size {self.sizes}")
        self._load(input_ids, batch, size)
        if not self.capture:
            static = self._static_batch(size, block=largest)
            with self._static_experts(static):
                return self.model(self.input_ids[:size], static)[:requests]
        if not self.graphs:
            self._capture_all()
        graph, logits = self.graphs[size]
        dumper.set_real_tokens(real)
        graph.replay()
        # NOTE: a copy: the next replay overwrites the graph's output buffer.
        return logits[:requests].clone()

    def release_graphs(self) -> None:
        if self.graphs:
            torch.cuda.synchronize()
            self.graphs.clear()

    def _load(self, input_ids: torch.Tensor, batch: ForwardBatch, size: int) -> None:
        real = batch.num_rows
        scratch = self.kv_cache.scratch_slot
        slots = [self.kv_cache.slots[segment.req_id] for segment in batch.iter_segments()]
        slots += [scratch] * (real - len(slots))  # an idle DP rank's padding row
        self.input_ids[:real].copy_(input_ids)
        self.input_ids[real:size].fill_(PADDING_TOKEN_ID)
        self.positions[:real].copy_(batch.positions)
        self.positions[real:size].fill_(0)
        self.slot_ids[:real].copy_(torch.tensor(slots, dtype=torch.long), non_blocking=False)
        self.slot_ids[real:size].fill_(scratch)
        self.num_real_per_dp.copy_(batch.num_tokens_per_dp_rank)

    def _static_batch(self, size: int, *, block: int | None = None) -> StaticBatch:
        return StaticBatch(padded_rows_per_dp_rank=size if block is None else block,positions=self.positions[:size], slot_ids=self.slot_ids[:size],
                           num_real_per_dp=self.num_real_per_dp, last_token_rows=self.rows[:size],
                           kv_cache=self.kv_cache, padding_counts_bug=self.padding_counts_bug, dp_rank=self.dp_rank)

    @contextlib.contextmanager
    def _static_experts(self, batch: StaticBatch) -> Iterator[None]:
        """The routed experts take the static path while ``batch`` runs (or is captured)."""
        experts = [module for module in self.model.modules() if hasattr(module, "static_batch")]
        for module in experts:
            module.static_batch = batch
        try:
            yield
        finally:
            for module in experts:
                module.static_batch = None

    def _capture_all(self) -> None:
        """Capture every size, largest first, sharing one memory pool (as vLLM and SGLang do)."""
        saved = (self.input_ids.clone(), self.positions.clone(), self.slot_ids.clone(), self.num_real_per_dp.clone())
        # Capture on padding only: a real row's KV write would land in its cache at capture.
        self.input_ids.fill_(PADDING_TOKEN_ID)
        self.positions.zero_()
        self.slot_ids.fill_(self.kv_cache.scratch_slot)
        # NOTE: the dumper's writer thread must be idle before a capture (it polls CUDA
        # events; with global capture mode no other thread may touch CUDA meanwhile).
        dumper.flush()
        pool = None
        for size in reversed(self.sizes):
            batch = self._static_batch(size)
            self.num_real_per_dp.fill_(size)
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side), dumps_paused(), self._static_experts(batch):
                self.model(self.input_ids[:size], batch)
            torch.cuda.current_stream().wait_stream(side)
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            dumper.set_real_tokens(size)
            with self._static_experts(batch), torch.cuda.graph(graph, pool=pool):
                logits = self.model(self.input_ids[:size], batch)
            pool = graph.pool()
            self.graphs[size] = (graph, logits)
        for target, value in zip((self.input_ids, self.positions, self.slot_ids, self.num_real_per_dp), saved):
            target.copy_(value)


def enable_cuda_graphs(engine, *, sizes: tuple[int, ...], capture: bool = True) -> GraphRunner:
    """Give ``engine`` a static KV cache and a graph runner in place of its model's decode path."""
    config = engine.config
    old = engine.kv_cache
    max_len = max(len(r.prompt) for r in engine.requests) + config.steps if engine.requests else 1
    cache = StaticKVCache(num_layers=old._num_layers, num_local_heads=old._shape[0], head_dim=old._shape[1],
                          dtype=old._dtype, device=old._device, num_slots=max(len(engine.requests), 1),
                          max_len=max_len)
    for request in engine.requests:
        cache.allocate(request.req_id, len(request.prompt) + config.steps)
    engine.kv_cache = cache
    runner = GraphRunner(engine.model, cache, sizes=sizes, capture=capture,
                         padding_counts_bug=config.has_bug("graph_padding_counts"),
                         dp_size=engine.dp_size, dp_rank=engine.dp_rank)
    engine.model = runner
    return runner
