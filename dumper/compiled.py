"""``dumper.dump`` under ``torch.compile``: each dump site becomes an operator of the graph.

When dynamo traces a function that calls ``dumper.dump(name, tensor, dims=..., **tags)``,
``Dumper.dump`` sends the call here instead of running it. The call becomes
``torch.ops.dumpcmp.dump(tensor, name, dims, tags)``: a custom operator, opaque to the
compiler (its fake implementation returns nothing), with the name, dims and tags as
constants of the call. Its runtime implementation is the ordinary eager dump
(``dumper.dump``): the same filter, step counter, sticky tags, snapshot and writer as
an eager run, so a compiled run's records are an eager run's records.

Three more operators carry what the dump path needs at runtime:
``dumpcmp::push_tags`` / ``dumpcmp::pop_tags`` (``with dumper.tags(...)`` traced inside
the compiled region; code the compiler cannot see, such as another custom op, runs
between them with those tags), ``dumpcmp::step`` (``dumper.step()`` inside the region)
and ``dumpcmp::not_dumped`` (a site that cannot be dumped from compiled code: reported
once at runtime with its name and the reason).

NOTE: every operator mutates one token tensor of the process (``_ORDER``). A mutation is
the one ordering inductor's scheduler always keeps (a write after a write), so the
operators run in program order among themselves: a record's ``seq`` is the eager
run's, and the first divergence a compare reports is the first in the program. The
ORDERED effect registration (torch's effect tokens) orders them in the graph AOTAutograd
hands inductor, but inductor 2.13 does not keep that order: two dumps of one fused
kernel's outputs ran swapped. The data dependency on the dumped tensor orders each
dump after its producer, and before any later in-place write to that tensor. The
token has no elements, lives on the engine's device (a CPU tensor would make inductor's
own CUDA graphs skip the graph) and is marked static, so a CUDA graph may mutate it.

NOTE: this module imports torch. ``dumper.api`` imports it only while dynamo traces a
dump call, so ``from dumper import dumper`` stays free of torch.
"""

from __future__ import annotations

import functools
import threading
from typing import Any

import torch
from torch._library.effects import EffectType


def _order_token() -> torch.Tensor:
    # NOTE: imported while dynamo traces the first dump call, after the engine chose its
    # device; CUDA is never initialised here for the token's sake.
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_initialized() else torch.device("cpu")
    token = torch.empty(0, device=device)
    torch._dynamo.mark_static_address(token)
    return token


_ORDER = _order_token()

# Separates the fields of the tags string (tags are keyword names and constants).
_FIELD = "\x1f"
_PAIR = "="


# ----------------------------------------------------------------- trace side
def trace_dump(owner: Any, name: str, value: Any, dims: str | None, tags: dict[str, Any]) -> None:
    """What ``Dumper.dump`` does while dynamo traces it: put operators in the graph.

    Only constants and tensors reach the graph; everything else becomes a
    ``not_dumped`` report. Keep this code plain: dynamo inlines it, and anything it
    cannot trace would break the engine's graph.
    """
    merged: dict[str, Any] = {}
    for context_tags in _traced_tags:
        merged.update(context_tags)
    merged.update(tags)
    encoded, problem = encode_tags(merged)
    if problem is not None:
        torch.ops.dumpcmp.not_dumped(name, problem, _ORDER)
        return
    _trace_value(name, value, dims, encoded)


def _trace_value(name: str, value: Any, dims: str | None, encoded: str) -> None:
    if isinstance(value, torch.Tensor):
        torch.ops.dumpcmp.dump(value, name, dims, encoded, _ORDER)
    elif isinstance(value, (tuple, list)):
        for position, item in enumerate(value):
            if item is not None:
                _trace_value(f"{name}.{position}", item, dims, encoded)
    elif isinstance(value, dict):
        for key, item in value.items():
            if item is not None:
                _trace_value(f"{name}.{key}", item, dims, encoded)
    elif isinstance(value, (bool, int, float, torch.SymInt, torch.SymFloat, torch.SymBool)):
        # A number of the traced code (a constant, or a dynamic size): a 0-d tensor, as in eager mode.
        torch.ops.dumpcmp.dump(torch.tensor(value), name, dims, encoded, _ORDER)
    elif value is None:
        return
    elif callable(value):
        torch.ops.dumpcmp.not_dumped(
            name, "a lazy callable is not evaluated inside torch.compile (dump the tensor itself)", _ORDER
        )
    else:
        torch.ops.dumpcmp.not_dumped(
            name, f"a {type(value).__name__} is not a tensor (pass a tensor, a tuple/list/dict of tensors or a number)",
            _ORDER)


# The tags of the ``with dumper.tags(...)`` blocks dynamo is tracing, innermost last.
# NOTE: they are constants of every dump traced inside: the runtime push_tags/pop_tags
# operators serve code the compiler cannot see, and inductor does not always keep them
# in program order relative to the dumps (seen with vLLM TP=2 on the CPU).
_traced_tags: list[dict[str, Any]] = []


def trace_push_tags(tags: dict[str, Any]) -> None:
    _traced_tags.append(tags)
    encoded, problem = encode_tags(tags)
    if problem is not None:
        # The tags cannot travel as constants; push none, so that pop stays paired.
        torch.ops.dumpcmp.not_dumped("dumper.tags", problem, _ORDER)
        encoded = ""
    torch.ops.dumpcmp.push_tags(encoded, _ORDER)


def trace_pop_tags() -> None:
    if _traced_tags:
        _traced_tags.pop()
    torch.ops.dumpcmp.pop_tags(_ORDER)


def trace_step() -> None:
    torch.ops.dumpcmp.step(_ORDER)


def encode_tags(tags: dict[str, Any]) -> tuple[str, str | None]:
    """``{"layer": 3, "kind": "moe"}`` -> ``"layer=i:3\\x1fkind=s:moe"``, or a problem.

    Operator schemas take no dicts, so tags travel as one string constant; each value
    keeps its type (``i``, ``f``, ``b``, ``s``, ``n``) so that the records hold the same
    JSON values as an eager run's.
    """
    fields = []
    for key, value in tags.items():
        if isinstance(value, bool):
            text = "b:1" if value else "b:0"
        elif isinstance(value, int):
            text = "i:" + str(value)
        elif isinstance(value, float):
            text = "f:" + repr(value)
        elif isinstance(value, str):
            if _FIELD in value:
                return "", f"tag {key}={value!r} holds a \\x1f character, which compiled dumps cannot carry"
            text = "s:" + value
        elif value is None:
            text = "n:"
        else:
            return "", (f"tag {key} is a {type(value).__name__}; under torch.compile tags must be constants "
                        "(int, float, bool, str or None), e.g. layer=self.layer_id")
        fields.append(key + _PAIR + text)
    return _FIELD.join(fields), None


@functools.lru_cache(maxsize=4096)
def decode_tags(encoded: str) -> tuple[tuple[str, Any], ...]:
    if not encoded:
        return ()
    pairs = []
    for field in encoded.split(_FIELD):
        key, _, text = field.partition(_PAIR)
        kind, _, raw = text.partition(":")
        value: Any
        if kind == "b":
            value = raw == "1"
        elif kind == "i":
            value = int(raw)
        elif kind == "f":
            value = float(raw)
        elif kind == "n":
            value = None
        else:
            value = raw
        pairs.append((key, value))
    return tuple(pairs)


# --------------------------------------------------------------- runtime side
def _dumper() -> Any:
    from dumper.process import process_dumper

    return process_dumper


@torch.library.custom_op("dumpcmp::dump", mutates_args=("order",))
def _dump_op(value: torch.Tensor, name: str, dims: str | None, tags: str, order: torch.Tensor) -> None:
    owner = _dumper()
    # NOTE: fake-tensor mode runs operators on constant inputs while dynamo traces
    # (a dumped Python number is a constant tensor): only a real run dumps.
    if not owner.enabled or torch.compiler.is_compiling():
        return
    owner.dump(name, value, dims=dims, **dict(decode_tags(tags)))
    if value.is_cuda:
        _fence(owner, value)


@_dump_op.register_fake
def _(value: torch.Tensor, name: str, dims: str | None, tags: str, order: torch.Tensor) -> None:
    return None


def _fence(owner: Any, value: torch.Tensor) -> None:
    """Make the engine's stream wait (on the device, never the host) for the snapshot's copy.

    NOTE: inductor reuses a buffer for a later kernel as soon as its last reader has
    run; the snapshot's copy runs on a side stream, so without this wait the next
    kernel on the engine stream could overwrite the buffer before the copy read it.
    """
    snapshotter = getattr(owner, "_snapshotter", None)
    if snapshotter is None or torch.cuda.is_current_stream_capturing():
        return
    copier = snapshotter._copiers.get(value.get_device())
    if copier is not None:
        torch.cuda.current_stream(value.get_device()).wait_stream(copier.stream)


_pushed = threading.local()


@torch.library.custom_op("dumpcmp::push_tags", mutates_args=("order",))
def _push_tags_op(tags: str, order: torch.Tensor) -> None:
    stack = _tag_stack()
    context = _dumper().tags(**dict(decode_tags(tags)))
    context.__enter__()
    stack.append(context)


@_push_tags_op.register_fake
def _(tags: str, order: torch.Tensor) -> None:
    return None


@torch.library.custom_op("dumpcmp::pop_tags", mutates_args=("order",))
def _pop_tags_op(order: torch.Tensor) -> None:
    stack = _tag_stack()
    if stack:
        stack.pop().__exit__(None, None, None)


@_pop_tags_op.register_fake
def _(order: torch.Tensor) -> None:
    return None


def _tag_stack() -> list:
    stack = getattr(_pushed, "stack", None)
    if stack is None:
        stack = _pushed.stack = []
    return stack


@torch.library.custom_op("dumpcmp::step", mutates_args=("order",))
def _step_op(order: torch.Tensor) -> None:
    _dumper().step()


@_step_op.register_fake
def _(order: torch.Tensor) -> None:
    return None


@torch.library.custom_op("dumpcmp::not_dumped", mutates_args=("order",))
def _not_dumped_op(name: str, reason: str, order: torch.Tensor) -> None:
    owner = _dumper()
    if owner.enabled:
        owner.report_not_dumped(name, f"{reason} [under torch.compile]")


@_not_dumped_op.register_fake
def _(name: str, reason: str, order: torch.Tensor) -> None:
    return None


for _op in (_dump_op, _push_tags_op, _pop_tags_op, _step_op, _not_dumped_op):
    _op.register_effect(EffectType.ORDERED)
