"""A tiny stand-in for an engine's batching, for the aligner tests.

Every token (request id, position) has a fixed feature vector. A *schedule* says which
tokens each step runs on each DP rank; :func:`build_side` turns it into what a run would
dump after unsharding: per step, the attention-side tensor (``dp_local``: each DP rank's
own rows, an idle rank's one padding row), the MoE-side tensor (``dp_gathered``: every
rank's rows padded to the largest), per-request rows, and the token metadata the
presets dump, with an aux loader over them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from aligners import AlignContext, StepPair

HIDDEN = 4
PADDING_VALUE = 7.5  # what a padding row computes: anything but a real token's feature

Key = tuple[int, int]
# A step: per DP rank, the segments it runs: (request id, first position, number of tokens).
Step = list[list[tuple[int, int, int]]]


def feature(key: Key) -> torch.Tensor:
    generator = torch.Generator().manual_seed(key[0] * 1000 + key[1])
    return torch.randn(HIDDEN, generator=generator, dtype=torch.float64)


def token_id(key: Key) -> int:
    return 1 + (key[0] * 31 + key[1] * 7) % 97  # never 0, the padding token


@dataclass
class Side:
    local: list[torch.Tensor] = field(default_factory=list)  # [rows, HIDDEN] per step, dims "t h"
    gathered: list[torch.Tensor] = field(default_factory=list)
    per_request: list[torch.Tensor] = field(default_factory=list)  # [requests, HIDDEN]: the last token's feature
    aux: dict[tuple[str, int], torch.Tensor] = field(default_factory=dict)
    steps: list[int] = field(default_factory=list)

    def loader(self, drop: frozenset[str] = frozenset()):  # type: ignore[no-untyped-def]
        def load(name: str, step: int, tags: dict[str, Any]) -> torch.Tensor | None:
            return None if name in drop else self.aux.get((name, step))
        return load


def build_side(schedule: list[Step]) -> Side:
    side = Side()
    longs = lambda values: torch.tensor(values, dtype=torch.long)  # noqa: E731
    for step, ranks in enumerate(schedule):
        counts = [sum(n for _, _, n in segments) for segments in ranks]
        block = max(max(counts), 1)
        local_rows: list[torch.Tensor] = []
        gathered_rows: list[torch.Tensor] = []
        request_rows: list[torch.Tensor] = []
        input_ids, positions, token_req_ids, req_ids, seq_lens, extend_lens = [], [], [], [], [], []
        for segments in ranks:
            rows = [feature((req, pos)) for req, start, n in segments for pos in range(start, start + n)]
            for req, start, n in segments:
                input_ids += [token_id((req, p)) for p in range(start, start + n)]
                positions += list(range(start, start + n))
                token_req_ids += [req] * n
                req_ids.append(req)
                seq_lens.append(start + n)
                extend_lens.append(n)
                request_rows.append(feature((req, start + n - 1)))
            if not rows:
                padding = torch.full((HIDDEN,), PADDING_VALUE, dtype=torch.float64)
                local_rows.append(padding)
                input_ids.append(0)
                positions.append(0)
                token_req_ids.append(-1)
                rows_padded = [padding] + [torch.zeros(HIDDEN, dtype=torch.float64)] * (block - 1)
            else:
                local_rows += rows
                rows_padded = rows + [torch.zeros(HIDDEN, dtype=torch.float64)] * (block - len(rows))
            gathered_rows += rows_padded
        side.local.append(torch.stack(local_rows))
        side.gathered.append(torch.stack(gathered_rows))
        side.per_request.append(torch.stack(request_rows) if request_rows else torch.zeros(0, HIDDEN, dtype=torch.float64))
        for name, values in (("input_ids", input_ids), ("positions", positions), ("token_req_ids", token_req_ids),
                             ("req_ids", req_ids), ("seq_lens", seq_lens), ("extend_lens", extend_lens),
                             ("num_tokens_per_dp_rank", counts)):
            side.aux[name, step] = longs(values)
        side.steps.append(step)
    return side


def context(baseline: Side, target: Side, *, name: str = "hidden", dims: str = "t h",
            baseline_dims: str | None = None, drop_baseline: frozenset[str] = frozenset(),
            drop_target: frozenset[str] = frozenset()) -> AlignContext:
    from aligners.axes import dim_index
    from dumper.dims import parse_dims

    b_spec, t_spec = parse_dims(baseline_dims or dims), parse_dims(dims)
    return AlignContext(
        name=name, tags={}, baseline_token_dim=dim_index(b_spec, "t"), target_token_dim=dim_index(t_spec, "t"),
        baseline_aux=baseline.loader(drop_baseline), target_aux=target.loader(drop_target),
        baseline_dims=b_spec, target_dims=t_spec,
    )


def step_pairs(baseline: Side, target: Side) -> list[StepPair]:
    """Paired in order, as the comparator pairs steps; the longer run's extra steps unpaired."""
    count = max(len(baseline.steps), len(target.steps))
    return [StepPair(baseline_step=s if s < len(baseline.steps) else None,
                     target_step=s if s < len(target.steps) else None) for s in range(count)]


def stream_features(keys: list[Key]) -> torch.Tensor:
    return torch.stack([feature(k) for k in keys])
