"""Request ids as the token aligners read them: one int64 per token, -1 on a padding row.

Engines name requests with strings (vLLM's ``"0-1a2b3c4d"``: the caller's id plus 8
random hex characters; SGLang's uuid ``rid``), which are not tensors. The presets dump
``token_req_ids``, each token's request as an integer (aligners/metadata.py):

- an integer id (or a string of decimal digits) is kept as that number, so the ids a
  caller gives (vLLM's ``LLM.generate`` numbers its requests 0, 1, ...) mean the same
  request in every run that submits the same prompts in the same order;
- any other string becomes a stable 63-bit hash (blake2b, not Python's per-process
  ``hash``): the same id in every process, never negative;
- ``strip`` (a regular expression) removes a per-run random part first (vLLM's
  ``-[0-9a-f]{8}$`` suffix), so that the caller's id is what is numbered.

Runs whose ids still differ (random ids, another engine) are matched by their input
ids by ``--aligner auto`` (aligners/requests.py). Nothing here raises into the engine
on its own: the presets call these from guarded dump sites (dumper/patch_sites.py).
"""

from __future__ import annotations

import hashlib
import re
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    import torch

PADDING = -1  # a row that holds no request's token
_INT64_MAX = (1 << 63) - 1


def request_number(request_id: Any, strip: str | None = None) -> int:
    """The int64 (>= 0) that stands for ``request_id`` in dumps."""
    if isinstance(request_id, bool):
        request_id = str(request_id)
    if isinstance(request_id, int) or (hasattr(request_id, "__index__") and not isinstance(request_id, str)):
        number = int(request_id)
        if 0 <= number <= _INT64_MAX:
            return number
        request_id = str(number)
    text = request_id if isinstance(request_id, str) else str(request_id)
    if strip:
        text = _pattern(strip).sub("", text)
    if text.isascii() and text.isdigit() and int(text) <= _INT64_MAX:
        return int(text)
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") & _INT64_MAX


@lru_cache(maxsize=16)
def _pattern(strip: str) -> "re.Pattern[str]":
    return re.compile(strip)


def token_request_ids(request_ids: Sequence[Any], *, counts: Sequence[int] | None = None,
                      starts: Sequence[int] | None = None, rows: int | None = None,
                      strip: str | None = None) -> "torch.Tensor":
    """Each row's request number: request ``i`` holds ``counts[i]`` consecutive rows, in batch order.

    ``starts`` instead of ``counts``: cumulative row offsets, one more than there are
    requests (vLLM's ``query_start_loc``). ``counts`` None and ``starts`` None: one row
    per request (a decode batch). ``rows``: the tensor's row count; rows past the last
    request's (the engine's padding) are -1. Raises ValueError when the counts do not fit.
    """
    import torch

    if counts is not None and starts is not None:
        raise ValueError("token_request_ids: give counts or starts, not both")
    numbers = [request_number(r, strip) for r in request_ids]
    if starts is not None:
        offsets = [int(s) for s in starts]
        if len(offsets) != len(numbers) + 1:
            raise ValueError(f"token_request_ids: {len(offsets)} starts for {len(numbers)} requests")
        sizes = [end - begin for begin, end in zip(offsets, offsets[1:])]
        if offsets and offsets[0] != 0:
            raise ValueError(f"token_request_ids: starts begin at {offsets[0]}, not 0")
    else:
        sizes = [1] * len(numbers) if counts is None else [int(c) for c in counts]
    if len(sizes) != len(numbers) or any(size < 0 for size in sizes):
        raise ValueError(f"token_request_ids: token counts {sizes} for {len(numbers)} requests")
    used = sum(sizes)
    total = used if rows is None else int(rows)
    if used > total:
        raise ValueError(f"token_request_ids: the requests hold {used} tokens, more than the {total} rows")
    values = [number for number, size in zip(numbers, sizes) for _ in range(size)]
    values.extend([PADDING] * (total - used))
    return torch.tensor(values, dtype=torch.int64)


def sequence_request_ids(owner: Any, positions: "torch.Tensor") -> "torch.Tensor":
    """Request numbers for an engine that runs a batch of whole sequences (transformers' generate).

    ``positions``: [batch, tokens]. A forward whose first position is 0 starts ``batch``
    new requests, numbered on from the ones ``owner`` (the model) started before: the
    k-th prompt generated on its own is request k, as vLLM's ``LLM.generate`` numbers
    them. Later forwards (decode) continue those requests. Returns [batch, tokens].
    """
    import torch

    grid = positions if positions.dim() == 2 else positions.reshape(1, -1)
    batch, tokens = int(grid.shape[0]), int(grid.shape[1])
    started = int(getattr(owner, "dumpcmp_requests_started", 0))
    if tokens and int(grid[0, 0]) == 0:
        owner.dumpcmp_request_base = started
        owner.dumpcmp_requests_started = started + batch
    base = int(getattr(owner, "dumpcmp_request_base", 0))
    rows = torch.arange(base, base + batch, dtype=torch.int64)
    return rows.reshape(batch, 1).expand(batch, tokens).clone()


__all__ = ["PADDING", "request_number", "sequence_request_ids", "token_request_ids"]
