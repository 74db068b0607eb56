"""Requests, the per-step batch each DP rank runs, and the KV cache."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Literal

import torch

ForwardMode = Literal["prefill", "decode", "idle"]
# What the engine scheduled: an idle DP rank's batch keeps it (graph mode replays idle decode batches).
Phase = Literal["prefill", "decode"]

# The token an idle DP rank runs so that it still joins every collective (seed 5).
PADDING_TOKEN_ID = 0


@dataclass(kw_only=True)
class Request:
    req_id: int
    prompt: list[int]
    output: list[int]

    @property
    def seq_len(self) -> int:
        """Tokens whose keys and values are (or are about to be) in the cache."""
        return len(self.prompt) + len(self.output)


@dataclass(frozen=True, kw_only=True)
class Segment:
    """One request's rows in a batch."""

    req_id: int
    start_row: int
    extend_len: int  # new tokens this step
    seq_len: int  # tokens in the cache after this step

    @property
    def rows(self) -> slice:
        return slice(self.start_row, self.start_row + self.extend_len)

    @property
    def start_pos(self) -> int:
        return self.seq_len - self.extend_len


@dataclass(kw_only=True)
class ForwardBatch:
    """What one rank runs in one step: this DP rank's requests, packed row after row.

    An idle DP rank (no requests) runs one padding token, as SGLang's idle batches do,
    so that every collective still has all its ranks.
    """

    forward_mode: ForwardMode
    phase: Phase
    input_ids: torch.Tensor  # [num_rows] int64
    positions: torch.Tensor  # [num_rows] int64
    token_req_ids: torch.Tensor  # [num_rows] int64, -1 on the padding row
    req_ids: torch.Tensor  # [num_requests] int64
    extend_lens: torch.Tensor  # [num_requests] int64
    seq_lens: torch.Tensor  # [num_requests] int64
    num_tokens_per_dp_rank: torch.Tensor  # [dp_attention] int64, real tokens only
    dp_rank: int
    segments: tuple[Segment, ...]
    kv_cache: "KVCache"

    @property
    def num_rows(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def padded_rows_per_dp_rank(self) -> int:
        """Rows each DP rank contributes to the gathered MoE input: the largest rank's count."""
        return max(int(self.num_tokens_per_dp_rank.max()), 1)

    @property
    def last_token_rows(self) -> torch.Tensor:
        """The row of each request's last token (whose logits pick the next token)."""
        rows = [segment.start_row + segment.extend_len - 1 for segment in self.segments]
        return torch.tensor(rows, dtype=torch.long, device=self.input_ids.device)

    def iter_segments(self) -> Iterator[Segment]:
        return iter(self.segments)


def build_batch(
    requests: list[Request],
    *,
    forward_mode: Phase,
    num_tokens_per_dp_rank: list[int],
    dp_rank: int,
    kv_cache: "KVCache",
    device: torch.device,
) -> ForwardBatch:
    """Pack ``requests`` (this DP rank's) into one batch: the whole prompt, or the last output token."""
    input_ids: list[int] = []
    positions: list[int] = []
    token_req_ids: list[int] = []
    segments: list[Segment] = []
    for request in requests:
        new_tokens = request.prompt if forward_mode == "prefill" else request.output[-1:]
        seq_len = request.seq_len
        segments.append(Segment(req_id=request.req_id, start_row=len(input_ids), extend_len=len(new_tokens),
                                seq_len=seq_len))
        input_ids.extend(new_tokens)
        positions.extend(range(seq_len - len(new_tokens), seq_len))
        token_req_ids.extend([request.req_id] * len(new_tokens))
    phase, mode = forward_mode, forward_mode  # type: tuple[Phase, ForwardMode]
    if not requests:
        mode = "idle"
        input_ids, positions, token_req_ids = [PADDING_TOKEN_ID], [0], [-1]

    def longs(values: list[int]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.long, device=device)

    return ForwardBatch(
        forward_mode=mode,
        phase=phase,
        input_ids=longs(input_ids),
        positions=longs(positions),
        token_req_ids=longs(token_req_ids),
        req_ids=longs([s.req_id for s in segments]),
        extend_lens=longs([s.extend_len for s in segments]),
        seq_lens=longs([s.seq_len for s in segments]),
        num_tokens_per_dp_rank=longs(num_tokens_per_dp_rank),
        dp_rank=dp_rank,
        segments=tuple(segments),
        kv_cache=kv_cache,
    )


class KVCache:
    """Per layer and request, keys and values of this rank's heads: [max_len, heads, head_dim]."""

    def __init__(self, *, num_layers: int, num_local_heads: int, head_dim: int, dtype: torch.dtype,
                 device: torch.device) -> None:
        self._shape = (num_local_heads, head_dim)
        self._dtype = dtype
        self._device = device
        self._num_layers = num_layers
        self._keys: dict[tuple[int, int], torch.Tensor] = {}
        self._values: dict[tuple[int, int], torch.Tensor] = {}

    def allocate(self, req_id: int, max_len: int) -> None:
        for layer_id in range(self._num_layers):
            shape = (max_len, *self._shape)
            self._keys[layer_id, req_id] = torch.zeros(shape, dtype=self._dtype, device=self._device)
            self._values[layer_id, req_id] = torch.zeros(shape, dtype=self._dtype, device=self._device)

    def store(self, layer_id: int, segment: Segment, keys: torch.Tensor, values: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write this step's keys and values; return all of the request's so far."""
        cached_keys = self._keys[layer_id, segment.req_id]
        cached_values = self._values[layer_id, segment.req_id]
        cached_keys[segment.start_pos:segment.seq_len] = keys
        cached_values[segment.start_pos:segment.seq_len] = values
        return cached_keys[:segment.seq_len], cached_values[:segment.seq_len]
