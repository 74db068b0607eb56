"""Parse dims annotations: how a dumped tensor is laid out across parallel ranks.

Grammar (one token per tensor dimension, then an optional comment section)::

    t h[tp]                 h is split over tp: concatenate the ranks' shards along h
    t h[tp,ep]              split over tp (outer) then ep (inner)
    t h[ep:partial]         each ep rank holds a partial sum: add them up
    t (h d)                 one tensor dim holding h*d values; ``(h[tp] d)`` splits the outer part
    * h                     an unnamed dim
    t h # tp:replicated     identical on every tp rank: pick one, verify the others agree
    t h[dp] # dp:=attn_dp   for this tensor the axis called dp is the run's attn_dp axis
    t h # ep:partial        a partial sum can be declared in the comment too

``t`` names the token dimension (the token aligners and the per-token error use it).
Parsing is a small hand-written grammar; nothing is ever evaluated.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from comparator.errors import DimsSyntaxError

TOKEN_DIM = "t"

_NAME = r"[A-Za-z0-9_]+"
_NAME_RE = re.compile(rf"^{_NAME}$")
# A dim token: "name", "*", or "(a b c)", optionally followed by "[axis, axis:partial]".
_TOKEN_RE = re.compile(rf"\s*(\((?:[^()]*)\)|\*|{_NAME})(\[[^\[\]]*\])?")
_SHARD_RE = re.compile(rf"^({_NAME})(?::(partial))?$")


@dataclass(frozen=True, kw_only=True)
class Dim:
    """One tensor dimension: its name(s) and the axes it is split over (outer first)."""

    name: str  # "h", "*", or "(h d)" for a grouped dim
    parts: tuple[str, ...]  # ("h",) or ("h", "d")
    shards: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class DimsSpec:
    text: str
    dims: tuple[Dim, ...]
    partial: tuple[str, ...] = ()  # axes whose ranks hold partial sums
    replicated: tuple[str, ...] = ()  # axes whose ranks hold identical copies
    aliases: dict[str, str] = field(default_factory=dict)  # axis named in dims -> axis of the run

    @property
    def ndim(self) -> int:
        return len(self.dims)

    @property
    def token_dim(self) -> int | None:
        for index, dim in enumerate(self.dims):
            if dim.name == TOKEN_DIM:
                return index
        return None

    def run_axis(self, axis: str) -> str:
        """The run's parallel axis that ``axis`` (as written in the dims) refers to."""
        return self.aliases.get(axis, axis)

    @property
    def sharded(self) -> dict[str, int]:
        """Run axis -> index of the tensor dim it splits."""
        return {self.run_axis(axis): index for index, dim in enumerate(self.dims) for axis in dim.shards}

    @property
    def mentioned(self) -> set[str]:
        """Every run axis this annotation says something about."""
        return set(self.sharded) | {self.run_axis(a) for a in self.partial} | {self.run_axis(a) for a in self.replicated}


def parse_dims(text: str) -> DimsSpec:
    """Parse a dims annotation; raises DimsSyntaxError naming what is wrong."""
    if not isinstance(text, str):
        raise DimsSyntaxError(f"dims must be a string, not {type(text).__name__}")
    body, _, comment = text.partition("#")
    if body.count("[") != body.count("]") or body.count("(") != body.count(")"):
        raise DimsSyntaxError(f"dims {text!r}: unbalanced brackets; e.g. 't h[tp]', 't (h d)'")
    dims, partial = _parse_body(text, body)
    replicated, comment_partial, aliases = _parse_comment(text, comment)
    partial += [a for a in comment_partial if a not in partial]
    seen: dict[str, str] = {}
    for dim in dims:
        for axis in dim.shards:
            _claim(text, seen, axis, f"splits {dim.name}")
    for axis in partial:
        _claim(text, seen, axis, "partial")
    for axis in replicated:
        _claim(text, seen, axis, "replicated")
    return DimsSpec(text=text, dims=tuple(dims), partial=tuple(partial), replicated=tuple(replicated), aliases=aliases)


def _claim(text: str, seen: dict[str, str], axis: str, role: str) -> None:
    if axis in seen and not (seen[axis] == role == "partial"):
        raise DimsSyntaxError(f"dims {text!r}: axis {axis!r} is used twice ({seen[axis]}, {role}); an axis plays one role per tensor")
    seen[axis] = role


def _parse_body(text: str, body: str) -> tuple[list[Dim], list[str]]:
    dims: list[Dim] = []
    partial: list[str] = []
    position = 0
    body = body.rstrip()
    while position < len(body):
        match = _TOKEN_RE.match(body, position)
        if match is None or match.end() == position:
            raise DimsSyntaxError(
                f"dims {text!r}: cannot read {body[position:].strip()!r}; "
                "expected names separated by spaces, e.g. 't h[tp]', 't h[ep:partial]', 't (h d)'"
            )
        atom, shard_text = match.group(1), match.group(2)
        if match.end() < len(body) and not body[match.end()].isspace():
            raise DimsSyntaxError(f"dims {text!r}: put a space between dims (after {body[position:match.end()].strip()!r})")
        position = match.end()
        shards: list[str] = []
        if atom.startswith("("):
            parts, inner_shards = _parse_group(text, atom)
            shards += inner_shards
        else:
            parts = (atom,)
        if shard_text is not None:
            for axis, is_partial in _parse_shards(text, shard_text):
                (partial if is_partial else shards).append(axis)
        dims.append(Dim(name=atom if not atom.startswith("(") else "(" + " ".join(parts) + ")", parts=parts, shards=tuple(shards)))
    if not dims:
        raise DimsSyntaxError(f"dims {text!r}: no dimensions named; e.g. 't h' for a [tokens, hidden] tensor")
    return dims, partial


def _parse_group(text: str, atom: str) -> tuple[tuple[str, ...], list[str]]:
    parts: list[str] = []
    shards: list[str] = []
    for position, token in enumerate(atom[1:-1].split()):
        match = re.match(rf"^({_NAME})(\[[^\[\]]*\])?$", token)
        if match is None:
            raise DimsSyntaxError(f"dims {text!r}: {token!r} inside {atom!r} is not a dim name")
        parts.append(match.group(1))
        if match.group(2):
            axes = _parse_shards(text, match.group(2))
            if position != 0 and any(not is_partial for _, is_partial in axes):
                # NOTE: splitting an inner part needs the outer part's size, which the
                # annotation does not give; the outer part is a plain concatenation.
                raise DimsSyntaxError(
                    f"dims {text!r}: only the first part of a grouped dim can be split ({atom!r}); "
                    "dump the tensor unflattened or annotate the split on the first part"
                )
            shards += [axis for axis, is_partial in axes if not is_partial]
            if any(is_partial for _, is_partial in axes):
                raise DimsSyntaxError(f"dims {text!r}: declare partial sums after the dim or in the comment, e.g. '# ep:partial'")
    if not parts:
        raise DimsSyntaxError(f"dims {text!r}: empty group '()'")
    return tuple(parts), shards


def _parse_shards(text: str, shard_text: str) -> list[tuple[str, bool]]:
    entries = [entry.strip() for entry in shard_text[1:-1].split(",")]
    result = []
    for entry in entries:
        match = _SHARD_RE.match(entry)
        if match is None:
            raise DimsSyntaxError(
                f"dims {text!r}: {shard_text!r} is not a split; write [axis], [axis:partial] or [axis1,axis2]"
            )
        result.append((match.group(1), match.group(2) == "partial"))
    return result


def _parse_comment(text: str, comment: str) -> tuple[list[str], list[str], dict[str, str]]:
    replicated: list[str] = []
    partial: list[str] = []
    aliases: dict[str, str] = {}
    for entry in comment.split():
        axis, sep, value = entry.partition(":")
        if not sep or not _NAME_RE.match(axis):
            raise DimsSyntaxError(
                f"dims {text!r}: comment entry {entry!r} is not understood; "
                "valid entries: 'axis:replicated', 'axis:partial', 'axis:=other_axis'"
            )
        if value == "replicated":
            replicated.append(axis)
        elif value == "partial":
            partial.append(axis)
        elif value.startswith("=") and _NAME_RE.match(value[1:]):
            aliases[axis] = value[1:]
        else:
            raise DimsSyntaxError(
                f"dims {text!r}: {entry!r}: unknown role {value!r}; "
                "valid entries: 'axis:replicated', 'axis:partial', 'axis:=other_axis'"
            )
    return replicated, partial, aliases
