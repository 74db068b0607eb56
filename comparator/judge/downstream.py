"""Masking that follows a flipped token: which rows a benign routing flip reaches downstream.

A benign flip (comparator/judge/routing.py) changes its token's routed-expert output for
real. The change travels:

- through the residual stream to the same token's later layers in the same step;
- through attention (causal) to the later tokens of the same request, from the next
  layer on;
- through the KV cache to every token of that request in later steps, from the next
  layer on (the layers up to the flip's read keys and values the flip did not touch).

A tensor after the flip is judged on the rows none of these reach; the rows left out,
and the flips that reached them, travel with the result (:class:`DownstreamMask`) so
that every report says what was excluded and why. Integer tensors (token ids,
positions) are never masked: a flip that changes the generated token still fails.

Each row is identified by ``(step, request id, position)`` from the token metadata the
aligners read (comparator's token metadata: ``token_req_ids`` and ``positions``, or
``req_ids`` with ``seq_lens``/``extend_lens``; under ``by_request``, the aligner's own
row keys). Runs that dump only ``positions`` get their requests from the positions:
within a step a request's tokens have consecutive positions, and a request in the next
step continues at the next position (:func:`requests_from_positions`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

RowKey = tuple[int, int, int]  # (step, request id, position)


@dataclass(frozen=True, kw_only=True)
class FlipOrigin:
    """A benign flip, placed: where it happened and which token it was."""

    label: str  # the top-k ids tensor, e.g. topk_ids[layer=1]@step0
    order: tuple[Any, ...]  # its execution order (work item order)
    step: int
    layer: int
    request: int
    position: int
    margin: float

    def describe(self) -> str:
        return (f"{self.label} (request {self.request}, position {self.position}, margin {self.margin:.3g})")

    def to_json(self) -> dict[str, Any]:
        return {"tensor": self.label, "step": self.step, "layer": self.layer, "request": self.request,
                "position": self.position, "margin": self.margin if math.isfinite(self.margin) else None}


@dataclass(frozen=True, kw_only=True)
class DownstreamMask:
    """The rows of one tensor that benign flips reach, left out of its judgement."""

    rows: tuple[int, ...]  # excluded rows (token dim, after alignment)
    tokens: int  # rows the tensor has
    origins: tuple[FlipOrigin, ...]  # the flips that reach them

    @property
    def kept(self) -> int:
        return self.tokens - len(self.rows)

    def note(self) -> str:
        shown = ", ".join(map(str, self.rows[:8])) + (", ..." if len(self.rows) > 8 else "")
        flips = "; ".join(o.describe() for o in self.origins[:3]) + (" ..." if len(self.origins) > 3 else "")
        return (f"downstream of {len(self.origins)} benign routing flip(s) at {flips}: judged on the {self.kept} of "
                f"{self.tokens} tokens they do not reach (left out: rows {shown}: the flipped token's later layers, "
                "its request's later tokens and steps)")

    def to_json(self) -> dict[str, Any]:
        return {"excluded_rows": list(self.rows), "tokens": self.tokens, "kept": self.kept,
                "flips": [o.to_json() for o in self.origins]}


def reaches(origin: FlipOrigin, key: RowKey, layer: int | None) -> bool:
    """Whether ``origin`` reaches row ``key`` of a tensor at ``layer`` (None: after every layer, e.g. logits)."""
    step, request, position = key
    if request != origin.request or step < origin.step:
        return False
    if layer is not None and layer < origin.layer:
        return False
    if step == origin.step:
        if layer == origin.layer:
            return position == origin.position  # the flipped token itself, after its MoE output
        return position >= origin.position  # attention: the request's later tokens, from the next layer on
    return layer is None or layer > origin.layer  # the KV cache: from the next layer on


def downstream_mask(origins: Sequence[FlipOrigin], keys: Sequence[RowKey], *, layer: int | None,
                    order: tuple[Any, ...]) -> DownstreamMask | None:
    """The rows of a tensor (rows identified by ``keys``, at ``layer``, in execution place ``order``) that
    the flips before it reach; None when none does."""
    before = [o for o in origins if o.order < order]
    if not before:
        return None
    rows: list[int] = []
    reaching: list[FlipOrigin] = []
    for row, key in enumerate(keys):
        hit = [o for o in before if reaches(o, key, layer)]
        if hit:
            rows.append(row)
            reaching.extend(o for o in hit if o not in reaching)
    if not rows:
        return None
    return DownstreamMask(rows=tuple(rows), tokens=len(keys), origins=tuple(reaching))


def layer_of(tags: dict[str, Any]) -> int | None:
    """The ``layer`` tag as an int (None: a tensor outside the layers)."""
    value = tags.get("layer")
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def requests_from_positions(steps: Sequence[tuple[int, Sequence[int]]]) -> dict[int, list[RowKey]]:
    """Row keys from positions alone: ``[(step, positions of its real tokens), ...]`` in step order.

    NOTE: a heuristic for runs without request ids: within a step a request's tokens have
    consecutive positions (a new request starts where they do not); a request of the next
    step continues one of the previous step's whose last position is one less (the first
    such, in batch order); anything else is a new request.
    """
    keys: dict[int, list[RowKey]] = {}
    last_of: dict[int, int] = {}  # request -> its last position so far
    next_request = 0
    for step, positions in steps:
        segments: list[list[int]] = []
        for position in positions:
            if segments and position == segments[-1][-1] + 1:
                segments[-1].append(position)
            else:
                segments.append([position])
        taken: set[int] = set()
        rows: list[RowKey] = []
        for segment in segments:
            request = next((r for r, last in last_of.items() if last == segment[0] - 1 and r not in taken), None)
            if request is None:
                request, next_request = next_request, next_request + 1
            taken.add(request)
            last_of[request] = segment[-1]
            rows.extend((step, request, position) for position in segment)
        keys[step] = rows
    return keys


# -------------------------------------------------------------------------- planning
@dataclass(frozen=True, kw_only=True)
class DownstreamSources:
    """What a work item needs to leave out the rows benign flips before it reach (planned from metadata)."""

    upstream: tuple[Any, ...]  # the RoutingSources (role topk_ids) before the item, in execution order
    keys: tuple[RowKey, ...] | None  # (step, request, position) of each token row; None: the metadata cannot tell
    why_not: str | None = None  # why the rows cannot be identified
    # (step, request, last position) of each request row (dims 'r', e.g. the logits of each request)
    request_keys: tuple[RowKey, ...] | None = None


def step_row_keys(aux: Any, steps: Sequence[int], names: Any) -> tuple[tuple[RowKey, ...] | None, tuple[RowKey, ...] | None, str | None]:
    """(token row keys, request row keys, why not) of a unit's steps (rows in step order, then batch order)."""
    from aligners.errors import AlignerError
    from aligners.metadata import read_step_tokens

    keys: list[RowKey] = []
    requests: list[RowKey] = []
    for step in steps:
        try:
            tokens = read_step_tokens(aux, step, names=names, side="baseline", aligner="routing masks", need_keys=True)
        except AlignerError:
            found = _keys_from_positions(aux, step, names)
            if found is None:
                return None, None, ("the baseline's token metadata names no request or position per token "
                                    "(dump token_req_ids and positions, as the example preset does)")
            keys.extend(found)
            last: dict[int, int] = {}
            for _, request, position in found:
                last[request] = position
            requests.extend((step, request, position) for request, position in last.items())
            continue
        if tokens.keys is None:
            return None, None, "the baseline's token metadata has no per-token keys"
        keys.extend((step, request, position) for request, position in tokens.keys)
        requests.extend((step, request, position) for request, position in tokens.request_rows or ())
    return tuple(keys), tuple(requests), None


def _keys_from_positions(aux: Any, step: int, names: Any) -> list[RowKey] | None:
    """Keys from the positions of every step up to ``step`` (requests_from_positions)."""
    steps = []
    for earlier in range(step + 1):
        tensor = aux(names.positions, earlier, {})
        tensor = aux(names.position_ids, earlier, {}) if tensor is None else tensor
        if tensor is not None:
            steps.append((earlier, [int(v) for v in tensor.reshape(-1).tolist()]))
    if not steps or steps[-1][0] != step:
        return None
    return requests_from_positions(steps)[step]


# ------------------------------------------------------------------------- executing
def drop_rows(tensor: Any, token_dim: int, rows: Sequence[int]) -> Any:
    """``tensor`` without ``rows`` along ``token_dim``."""
    import torch

    keep = torch.ones(tensor.shape[token_dim], dtype=torch.bool)
    keep[list(rows)] = False
    return tensor.index_select(token_dim, keep.nonzero().flatten())


class FlipTracker:
    """Places each benign flip on its token, once per top-k ids tensor (cached), for one executor.

    ``check`` measures a layer-step's routing (RoutingJudge.check); the rows of a top-k
    ids tensor that earlier flips reach are left out before it is measured, so a flip's
    row is numbered among the rows that remain (``kept_keys``).
    """

    def __init__(self, check: Any) -> None:
        self.check = check
        self.cache: dict[tuple[Any, ...], list[FlipOrigin]] = {}

    def mask(self, item: Any, rows: int | None, *, per_request: bool = False) -> DownstreamMask | str | None:
        """The rows of ``item`` (``rows`` of them: tokens, or requests) earlier benign flips reach;
        a str says why none can be told."""
        sources: DownstreamSources | None = item.downstream
        if sources is None or not sources.upstream:
            return None
        # A MoE output's own layer-step flips are routing's (keep_agreeing_tokens), not downstream.
        own = item.routing.topk_ids.place.order if item.routing is not None else None
        origins = [origin for source in sources.upstream if source.topk_ids.place.order != own
                   for origin in self.origins(source)]
        if not origins:
            return None
        keys = sources.request_keys if per_request else sources.keys
        if keys is None:
            return f"not masked downstream of the benign routing flip(s): {sources.why_not}"
        if rows is None or rows != len(keys):
            return (f"not masked downstream of the benign routing flip(s): the tensor has {rows} "
                    f"{'request' if per_request else 'token'} rows, the token metadata {len(keys)}")
        return downstream_mask(origins, keys, layer=layer_of(item.tags), order=item.place.order)

    def origins(self, source: Any) -> list[FlipOrigin]:
        item = source.topk_ids
        key = item.place.order
        if key not in self.cache:
            self.cache[key] = self._place(source)
        return self.cache[key]

    def _place(self, source: Any) -> list[FlipOrigin]:
        check = self.check(source)
        if check.suspicious or check.problem is not None or not check.benign:
            return []  # masking follows benign flips only; a suspicious one keeps failing where it did
        item = source.topk_ids
        keys = item.downstream.keys if item.downstream is not None else None
        if keys is None:
            return []
        mask = self.mask(item, len(keys))
        kept = [k for row, k in enumerate(keys) if not isinstance(mask, DownstreamMask) or row not in mask.rows]
        if len(kept) != check.tokens:
            return []
        layer = layer_of(item.tags)
        if layer is None:
            return []
        from comparator.matching import tensor_label

        label = tensor_label(item.place.name, item.place.step, item.place.tags)
        return [FlipOrigin(label=label, order=item.place.order, step=kept[f.token][0], layer=layer,
                           request=kept[f.token][1], position=kept[f.token][2], margin=f.margin)
                for f in check.benign]
