"""Token metadata: which rows of a step's tensor hold real tokens, and which tokens they are.

The planners read a run's per-step token metadata (small integer tensors the presets
dump at the engine's step entry) into one :class:`StepTokens` per step. The executors
then need nothing but the tensors.

The token dim of a step's tensor (after unsharding) is in one of three layouts, told
apart by its row count:

``packed``
    only the real tokens, in batch order (a run without DP-attention).
``dp_local``
    every DP rank's own rows, in DP-rank order, like the token metadata itself: an idle
    DP rank runs one padding token (attention-side tensors under DP-attention).
``dp_gathered``
    every DP rank's rows, each padded to the largest rank's count (at least 1), in
    DP-rank order: what the MoE block sees after the DP gather (seed 5).

In all three the real tokens come in the same order (DP-rank order, then batch order),
so one list of token keys serves every tensor of a step.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, Literal

from aligners.base import AuxLoader, Side, TokenKey
from aligners.errors import AlignerError, MissingMetadataError

if TYPE_CHECKING:
    import torch

Layout = Literal["packed", "dp_local", "dp_gathered"]

PRESET = "patches/presets/example/moe_engine.yaml"


@dataclass(frozen=True, kw_only=True)
class MetadataNames:
    """The dump names token aligners read; the defaults cover the presets and SGLang's own dumps.

    ``req_ids`` lists alternatives, tried in order (SGLang calls them ``rids``).
    """

    input_ids: str = "input_ids"  # [tokens] token ids
    positions: str = "positions"  # [tokens] position of each token in its sequence
    position_ids: str = "position_ids"  # the same, under transformers' name: read when no 'positions' is dumped
    token_req_ids: str = "token_req_ids"  # [tokens] request id of each token, -1 on a padding row
    req_ids: tuple[str, ...] = ("req_ids", "rids")  # [requests] request ids, in batch order
    seq_lens: str = "seq_lens"  # [requests] tokens in the cache after the step
    extend_lens: str = "extend_lens"  # [requests] new tokens this step
    num_tokens_per_dp_rank: str = "num_tokens_per_dp_rank"  # [dp ranks] real tokens of each DP rank

    @classmethod
    def parse(cls, text: str | None) -> "MetadataNames":
        """From ``"token_req_ids=my_rids,positions=pos"`` (the CLI's ``--aligner-meta``)."""
        if not text:
            return cls()
        valid = [f.name for f in fields(cls)]
        values: dict[str, Any] = {}
        for item in text.split(","):
            key, sep, name = (part.strip() for part in item.partition("="))
            if not sep or not key or not name:
                raise AlignerError(f"--aligner-meta {text!r}: expected KEY=NAME[,KEY=NAME...], e.g. 'token_req_ids=rid_per_token'")
            if key not in valid:
                raise AlignerError(f"--aligner-meta: unknown key {key!r}; valid keys: {', '.join(valid)}")
            values[key] = (name,) if key == "req_ids" else name
        return cls(**values)


@dataclass(frozen=True, kw_only=True)
class StepTokens:
    """The real tokens of one step of one run, and where each layout keeps them."""

    step: int
    num_real: int
    num_tokens_per_dp_rank: tuple[int, ...] | None = None
    local_rows: int | None = None  # rows of the dp_local layout (the token metadata's own length)
    local_real_rows: tuple[int, ...] | None = None  # which of them hold real tokens
    keys: tuple[TokenKey, ...] | None = None  # (request id, position) of each real token, in order
    request_rows: tuple[TokenKey, ...] | None = None  # per request row ('r' dims): (request id, last position)

    def layouts(self) -> dict[int, tuple[Layout, tuple[int, ...]]]:
        """Row count -> (layout, rows holding real tokens), for every layout this metadata explains.

        NOTE: two layouts with the same row count always keep the same rows (equal
        counts mean no DP rank is padded differently), so a row count decides.
        """
        found: dict[int, tuple[Layout, tuple[int, ...]]] = {}
        counts = self.num_tokens_per_dp_rank
        if counts is not None:
            block = max(max(counts, default=0), 1)
            gathered = tuple(rank * block + row for rank, count in enumerate(counts) for row in range(count))
            found[len(counts) * block] = ("dp_gathered", gathered)
        if self.local_rows is not None and self.local_real_rows is not None:
            found[self.local_rows] = ("dp_local", self.local_real_rows)
        found[self.num_real] = ("packed", tuple(range(self.num_real)))
        return found

    def real_rows(self, num_rows: int) -> tuple[Layout, tuple[int, ...]] | None:
        return self.layouts().get(num_rows) or self._gathered_in_larger_blocks(num_rows)

    def _gathered_in_larger_blocks(self, num_rows: int) -> tuple[Layout, tuple[int, ...]] | None:
        """DP-gathered rows in equal blocks larger than the largest DP rank's tokens.

        A CUDA graph pads every DP rank to the captured batch size, not to the largest
        rank's count (SGLang's DP attention under graphs does this too).
        """
        counts = self.num_tokens_per_dp_rank
        if not counts or num_rows % len(counts):
            return None
        block = num_rows // len(counts)
        if block < max(max(counts), 1):
            return None
        return "dp_gathered", tuple(rank * block + row for rank, count in enumerate(counts) for row in range(count))

    def explain(self) -> str:
        """'5 (packed), 6 (dp_local)': the row counts this metadata accounts for."""
        return ", ".join(f"{rows} ({layout})" for rows, (layout, _) in sorted(self.layouts().items()))


def _ints(tensor: "torch.Tensor | None") -> list[int] | None:
    if tensor is None:
        return None
    return [int(v) for v in tensor.reshape(-1).tolist()]


def _how_to_dump(name: str, dims: str) -> str:
    return (f"dump it at the engine's step entry (a patch line `- dump: {name}` with dims \"{dims}\", "
            f"as {PRESET} does), or name your own dump with --aligner-meta")


def read_step_tokens(aux: AuxLoader | None, step: int, *, names: MetadataNames, side: Side, aligner: str,
                     need_keys: bool) -> StepTokens:
    """One step's token table from ``side``'s metadata dumps; raises MissingMetadataError naming what is missing.

    ``need_keys``: also identify every token by (request id, position) (``by_request``).
    """
    if aux is None:
        raise MissingMetadataError(f"{aligner} needs the {side} run's token metadata, and none can be read "
                                   "(call it through comparator.compare, which loads the metadata dumps)")

    def fetch(name: str) -> list[int] | None:
        return _ints(aux(name, step, {}))

    counts = fetch(names.num_tokens_per_dp_rank)
    token_req_ids = fetch(names.token_req_ids)
    input_ids = fetch(names.input_ids)
    positions = fetch(names.positions)
    if positions is None:
        positions = fetch(names.position_ids)
    where = f"{side} run, step {step}"
    per_token = {n: v for n, v in ((names.token_req_ids, token_req_ids), (names.input_ids, input_ids),
                                   (names.positions, positions)) if v is not None}
    if len({len(v) for v in per_token.values()}) > 1:
        sizes = ", ".join(f"{n} has {len(v)}" for n, v in per_token.items())
        raise AlignerError(f"{where}: the per-token metadata disagree on the number of rows ({sizes})")
    local_rows = len(next(iter(per_token.values()))) if per_token else None

    local_real: tuple[int, ...] | None = None
    if token_req_ids is not None:
        local_real = tuple(row for row, req in enumerate(token_req_ids) if req >= 0)
    elif counts is not None and local_rows is not None:
        if local_rows == sum(counts):
            local_real = tuple(range(local_rows))
        elif local_rows == sum(max(c, 1) for c in counts):
            # An idle DP rank's one padding row sits where its tokens would be.
            local_real = tuple(start + row for start, count in zip(_starts([max(c, 1) for c in counts]), counts)
                               for row in range(count))
        else:
            raise AlignerError(f"{where}: {names.num_tokens_per_dp_rank} {counts} does not account for the "
                               f"{local_rows} rows of {next(iter(per_token))}")
    elif local_rows is not None:
        # NOTE: without a padding mark (token_req_ids -1) or per-rank counts, every metadata row is a real token.
        local_real = tuple(range(local_rows))

    if counts is not None:
        num_real = sum(counts)
        if local_real is not None and len(local_real) != num_real:
            raise AlignerError(f"{where}: {names.num_tokens_per_dp_rank} {counts} sums to {num_real} real tokens, "
                               f"but {names.token_req_ids} marks {len(local_real)} rows as real")
    elif local_real is not None:
        num_real = len(local_real)
    else:
        raise MissingMetadataError(
            f"{aligner} needs the number of real tokens per step of the {side} run, but step {step} has none of "
            f"{names.num_tokens_per_dp_rank!r}, {names.token_req_ids!r}, {names.input_ids!r}, {names.positions!r}: "
            + _how_to_dump(names.input_ids, "t[attn_dp]")
            + f"; under DP-attention also dump {names.num_tokens_per_dp_rank!r} to trim the gathered MoE rows"
        )

    keys: tuple[TokenKey, ...] | None = None
    request_rows: tuple[TokenKey, ...] | None = None
    if need_keys:
        keys, request_rows = _token_keys(fetch, where=where, step=step, side=side, aligner=aligner, names=names,
                                         positions=positions, token_req_ids=token_req_ids, local_real=local_real)
    return StepTokens(
        step=step, num_real=num_real, num_tokens_per_dp_rank=tuple(counts) if counts is not None else None,
        local_rows=local_rows, local_real_rows=local_real, keys=keys, request_rows=request_rows,
    )


def _starts(sizes: list[int]) -> list[int]:
    starts, total = [], 0
    for size in sizes:
        starts.append(total)
        total += size
    return starts


def _token_keys(fetch, *, where: str, step: int, side: Side, aligner: str, names: MetadataNames,
                positions: list[int] | None, token_req_ids: list[int] | None,
                local_real: tuple[int, ...] | None) -> tuple[tuple[TokenKey, ...], tuple[TokenKey, ...]]:
    if positions is None or local_real is None:
        raise MissingMetadataError(
            f"{aligner} needs the position of every token of the {side} run, but step {step} has no "
            f"{names.positions!r} dump: " + _how_to_dump(names.positions, "t[attn_dp]")
        )
    real_positions = [positions[row] for row in local_real]
    request_ids: list[int] | None = None
    for name in names.req_ids:
        request_ids = fetch(name)
        if request_ids is not None:
            break
    seq_lens = fetch(names.seq_lens)
    if token_req_ids is not None:
        token_requests = [token_req_ids[row] for row in local_real]
    elif request_ids is not None:
        extend_lens = fetch(names.extend_lens)
        if extend_lens is not None:
            if len(extend_lens) != len(request_ids) or sum(extend_lens) != len(real_positions):
                raise AlignerError(f"{where}: {names.extend_lens} {extend_lens} does not cover the "
                                   f"{len(real_positions)} real tokens of {len(request_ids)} requests")
            token_requests = [req for req, count in zip(request_ids, extend_lens) for _ in range(count)]
        elif seq_lens is not None:
            token_requests = _requests_from_positions(where, request_ids, seq_lens, real_positions)
        else:
            raise MissingMetadataError(
                f"{aligner} needs how many tokens each request has in each step of the {side} run, but step {step} "
                f"has neither {names.extend_lens!r} nor {names.seq_lens!r}: " + _how_to_dump(names.seq_lens, "r[attn_dp]")
            )
    else:
        raise MissingMetadataError(
            f"{aligner} needs the request of every token of the {side} run, but step {step} has neither "
            f"{names.token_req_ids!r} nor {' / '.join(repr(n) for n in names.req_ids)}: "
            + _how_to_dump(names.token_req_ids, "t[attn_dp]")
        )
    keys = tuple(zip(token_requests, real_positions))
    if request_ids is not None and seq_lens is not None and len(request_ids) == len(seq_lens):
        request_rows = tuple(zip(request_ids, (length - 1 for length in seq_lens)))
    else:
        last: dict[int, int] = {}
        for req, position in keys:
            last[req] = max(position, last.get(req, position))
        request_rows = tuple(last.items())
    return keys, request_rows


def _requests_from_positions(where: str, request_ids: list[int], seq_lens: list[int], positions: list[int]) -> list[int]:
    """Each token's request, when only per-request seq lens are known: a request's tokens end at seq_len - 1."""
    token_requests: list[int] = []
    index = 0
    for position in positions:
        if index >= len(request_ids):
            raise AlignerError(f"{where}: more tokens than the seq lens {seq_lens} of requests {request_ids} account for")
        token_requests.append(request_ids[index])
        if position == seq_lens[index] - 1:
            index += 1
    if index != len(request_ids):
        raise AlignerError(f"{where}: the tokens' positions do not end each request at its seq len {seq_lens}")
    return token_requests
