"""The engine: requests, greedy generation, and one ``forward_step`` per step.

``Engine.forward_step`` is the step boundary a patch marks with ``step: true``; the
per-step token metadata the token aligners need is in its local variables right before
``logits = self.model(input_ids, batch)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from examples.moe_engine.batch import ForwardBatch, KVCache, Phase, Request, build_batch
from examples.moe_engine.config import EngineConfig
from examples.moe_engine.model import MoEModel
from examples.moe_engine.parallel import Comm
from examples.moe_engine.weights import generate_weights

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}

# Prompts come from their own seed so that changing the model's seed keeps them.
PROMPT_SEED = 1234


@dataclass(frozen=True, kw_only=True)
class RequestResult:
    req_id: int
    prompt: list[int]
    tokens: list[int]  # one greedy token per step: prefill, then each decode step
    logits: torch.Tensor  # [steps + 1, vocab] float32, on the CPU


def make_prompts(config: EngineConfig) -> list[list[int]]:
    generator = torch.Generator().manual_seed(PROMPT_SEED)
    vocab = config.model.vocab_size
    # Token 0 is the padding token; prompts never use it.
    return [torch.randint(1, vocab, (length,), generator=generator).tolist() for length in config.prompt_lens]


def requests_of_dp_rank(num_requests: int, dp_size: int, dp_rank: int) -> range:
    """Contiguous blocks, so that DP ranks' tokens, concatenated in rank order, keep the request order."""
    per_rank = math.ceil(num_requests / dp_size)
    return range(min(dp_rank * per_rank, num_requests), min((dp_rank + 1) * per_rank, num_requests))


class Engine:
    def __init__(self, config: EngineConfig, comm: Comm, device: torch.device) -> None:
        self.config = config
        self.comm = comm
        self.device = device
        layout = comm.layout
        self.model = MoEModel(config, generate_weights(config.model), comm=comm)
        self.model.to(device=device, dtype=DTYPES[config.dtype]).train(False)
        if config.compile:
            from examples.moe_engine.compiled import compile_model

            compile_model(self.model, comm)
        prompts = make_prompts(config)
        self.dp_rank = layout.attn_dp_rank
        self.dp_size = layout.dp_attention
        self.requests_per_dp_rank = [
            [Request(req_id=req_id, prompt=prompts[req_id], output=[])
             for req_id in requests_of_dp_rank(len(prompts), self.dp_size, dp_rank)]
            for dp_rank in range(self.dp_size)
        ]
        self.requests = self.requests_per_dp_rank[self.dp_rank]
        self.kv_cache = KVCache(
            num_layers=config.model.num_layers,
            num_local_heads=config.model.num_heads // layout.attn_tp_size,
            head_dim=config.model.head_dim,
            dtype=DTYPES[config.dtype],
            device=device,
        )
        for request in self.requests:
            self.kv_cache.allocate(request.req_id, len(request.prompt) + config.steps)
        if config.cuda_graph or config.static_decode:
            from examples.moe_engine.cudagraph import enable_cuda_graphs

            enable_cuda_graphs(self, sizes=config.graph_sizes, capture=config.cuda_graph)

    def close(self) -> None:
        """Free the captured CUDA graphs: they hold NCCL work, and tearing the process group down first hangs."""
        release = getattr(self.model, "release_graphs", None)
        if release is not None:
            release()

    @torch.inference_mode()
    def generate(self) -> list[RequestResult]:
        """Prefill, then ``config.steps`` greedy decode steps; the results of this DP rank's requests.

        With ``max_batch``, the requests run in groups of that many, one group after another.
        """
        logits: dict[int, list[torch.Tensor]] = {request.req_id: [] for request in self.requests}
        for group in self.groups():
            for step in range(self.config.steps + 1):
                batch = self.schedule("prefill" if step == 0 else "decode", group)
                step_logits = self.forward_step(batch).cpu()
                for request, row in zip(group, step_logits):
                    request.output.append(int(row.argmax()))
                    logits[request.req_id].append(row)
        return [
            RequestResult(req_id=request.req_id, prompt=list(request.prompt), tokens=list(request.output),
                          logits=torch.stack(logits[request.req_id]))
            for request in self.requests
        ]

    def groups(self) -> list[list[Request]]:
        """The requests batched together, in the order they run (one group without --max-batch)."""
        size = self.config.max_batch or max(len(self.requests), 1)
        return [self.requests[start:start + size] for start in range(0, len(self.requests), size)] or [[]]

    def schedule(self, forward_mode: Phase, requests: list[Request] | None = None) -> ForwardBatch:
        """This DP rank's batch for the step (``requests``: its group, default all), with every DP rank's real token count.

        NOTE: every rank knows every request's prompt length (the scheduler is
        deterministic), so the counts need no collective. --max-batch runs one DP rank
        only, so its groups need no counterpart on other ranks.
        """
        group = self.requests if requests is None else requests
        per_rank = [group] if self.config.max_batch is not None else self.requests_per_dp_rank
        num_tokens_per_dp_rank = [
            sum(len(r.prompt) for r in requests) if forward_mode == "prefill" else len(requests)
            for requests in per_rank
        ]
        return build_batch(
            group,
            forward_mode=forward_mode,
            num_tokens_per_dp_rank=num_tokens_per_dp_rank,
            dp_rank=self.dp_rank,
            kv_cache=self.kv_cache,
            device=self.device,
        )

    def forward_step(self, batch: ForwardBatch) -> torch.Tensor:
        """One forward pass (a step): logits [this DP rank's requests, vocab] in float32."""
        # Token metadata, one local each, for a patch to dump before the model runs:
        input_ids = batch.input_ids
        positions = batch.positions  # noqa: F841 - for a patch to dump
        token_req_ids = batch.token_req_ids  # noqa: F841 - for a patch to dump
        req_ids = batch.req_ids  # noqa: F841 - for a patch to dump
        seq_lens = batch.seq_lens  # noqa: F841 - for a patch to dump
        extend_lens = batch.extend_lens  # noqa: F841 - for a patch to dump
        num_tokens_per_dp_rank = batch.num_tokens_per_dp_rank  # noqa: F841 - for a patch to dump
        logits = self.model(input_ids, batch)
        return logits
