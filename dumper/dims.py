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

SGLang's dims strings mean the same here (its comparator's grammar)::

    t (num_heads*head_dim)[tp]   a fused dim, written with '*' (same as '(num_heads head_dim)')
    1 t h                        '1' is a dim of size 1, dropped before comparing
    t h[tp:sharded]              'sharded' and 'natural' say the default: plain split
    s[cp:zigzag] h               a zigzag split (2 x cp chunks, rank r holds r and 2cp-1-r)
    t h[tp:zigzag+partial]       several qualifiers joined by '+'

``t`` names the token dimension (the token aligners and the per-token error use it).
Parsing is a small hand-written grammar; nothing is ever evaluated.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from dumper.errors import DimsSyntaxError

TOKEN_DIM = "t"
SQUEEZE_DIM = "1"  # SGLang's name for a dim of size 1 that is dropped before comparing

_NAME = r"[A-Za-z0-9_]+"
_NAME_RE = re.compile(rf"^{_NAME}$")
# A dim token: "name", "*", "(a b c)", "(a*b)" or "a*b", optionally followed by
# "[axis, axis:partial]".
_TOKEN_RE = re.compile(rf"\s*(\((?:[^()]*)\)|{_NAME}(?:\*{_NAME})+|\*|{_NAME})(\[[^\[\]]*\])?")
_SHARD_RE = re.compile(rf"^({_NAME})(?::([a-z]+(?:\+[a-z]+)*))?$")
# Split qualifiers (SGLang's): "partial" makes a partial sum; "zigzag" a zigzag split;
# "sharded" and "natural" name the default (a plain split, in rank order).
_QUALIFIERS = ("partial", "zigzag", "sharded", "natural")


@dataclass(frozen=True, kw_only=True)
class Dim:
    """One tensor dimension: its name(s) and the axes it is split over (outer first)."""

    name: str  # "h", "*", or "(h d)" for a grouped dim
    parts: tuple[str, ...]  # ("h",) or ("h", "d")
    shards: tuple[str, ...] = ()
    text: str = ""  # as written, e.g. "h[tp]"

    @property
    def squeeze(self) -> bool:
        """A dim of size 1 dropped before comparing (SGLang's ``1``)."""
        return self.name == SQUEEZE_DIM and not self.shards


@dataclass(frozen=True, kw_only=True)
class DimsSpec:
    text: str
    dims: tuple[Dim, ...]
    partial: tuple[str, ...] = ()  # axes whose ranks hold partial sums
    replicated: tuple[str, ...] = ()  # axes whose ranks hold identical copies
    aliases: dict[str, str] = field(default_factory=dict)  # axis named in dims -> axis of the run
    zigzag: tuple[str, ...] = ()  # axes whose split is zigzag-ordered

    @property
    def ndim(self) -> int:
        return len(self.dims)

    @property
    def squeeze_dims(self) -> tuple[int, ...]:
        """Indexes of the size-1 dims (``1``) that are dropped before comparing."""
        return tuple(index for index, dim in enumerate(self.dims) if dim.squeeze)

    def squeezed(self) -> "DimsSpec":
        """The annotation of the tensor once its ``1`` dims are dropped, in our spelling
        (SGLang's fused ``(a*b)`` becomes ``(a b)``, so both spellings align by name)."""
        kept = tuple(dim for dim in self.dims if not dim.squeeze)
        body, sep, comment = self.text.partition("#")
        text = " ".join(dim.text or dim.name for dim in kept) + (f" #{comment}" if sep else "")
        if kept == self.dims and text.split() == self.text.split():
            return self
        return DimsSpec(text=text, dims=kept, partial=self.partial, replicated=self.replicated,
                        aliases=self.aliases, zigzag=self.zigzag)

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
    dims, partial, zigzag = _parse_body(text, body)
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
    return DimsSpec(text=text, dims=tuple(dims), partial=tuple(partial), replicated=tuple(replicated), aliases=aliases,
                    zigzag=tuple(zigzag))


def _claim(text: str, seen: dict[str, str], axis: str, role: str) -> None:
    if axis in seen and not (seen[axis] == role == "partial"):
        raise DimsSyntaxError(f"dims {text!r}: axis {axis!r} is used twice ({seen[axis]}, {role}); an axis plays one role per tensor")
    seen[axis] = role


def _parse_body(text: str, body: str) -> tuple[list[Dim], list[str], list[str]]:
    dims: list[Dim] = []
    partial: list[str] = []
    zigzag: list[str] = []
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
        elif "*" in atom and atom != "*":
            parts = tuple(atom.split("*"))  # SGLang's fused dim, written without parentheses
        else:
            parts = (atom,)
        if shard_text is not None:
            for axis, qualifiers in _parse_shards(text, shard_text):
                if "zigzag" in qualifiers and "natural" in qualifiers:
                    raise DimsSyntaxError(f"dims {text!r}: {axis!r} has two orderings (zigzag, natural); give one")
                # NOTE: a partial sum's order does not matter: "cp:zigzag+partial" is a sum.
                if "zigzag" in qualifiers and "partial" not in qualifiers:
                    zigzag.append(axis)
                (partial if "partial" in qualifiers else shards).append(axis)
        name = "(" + " ".join(parts) + ")" if len(parts) > 1 else atom
        written = name
        if atom.startswith("("):
            inner = atom[1:-1]
            written = "(" + " ".join(t.strip() for t in (inner.split("*") if "*" in inner else inner.split())) + ")"
        dims.append(Dim(name=name, parts=parts, shards=tuple(shards), text=written + (shard_text or "")))
    if not dims:
        raise DimsSyntaxError(f"dims {text!r}: no dimensions named; e.g. 't h' for a [tokens, hidden] tensor")
    return dims, partial, zigzag


def _parse_group(text: str, atom: str) -> tuple[tuple[str, ...], list[str]]:
    parts: list[str] = []
    shards: list[str] = []
    inner = atom[1:-1]
    # SGLang writes a fused dim "(a*b)"; ours is "(a b)": both mean one dim of a*b values.
    tokens = [t.strip() for t in inner.split("*")] if "*" in inner else inner.split()
    for position, token in enumerate(tokens):
        match = re.match(rf"^({_NAME})(\[[^\[\]]*\])?$", token)
        if match is None:
            raise DimsSyntaxError(f"dims {text!r}: {token!r} inside {atom!r} is not a dim name")
        parts.append(match.group(1))
        if match.group(2):
            axes = [(axis, "partial" in qualifiers) for axis, qualifiers in _parse_shards(text, match.group(2))]
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


def _parse_shards(text: str, shard_text: str) -> list[tuple[str, tuple[str, ...]]]:
    """``[tp, cp:zigzag+partial]`` -> ``[("tp", ()), ("cp", ("zigzag", "partial"))]``."""
    entries = [entry.strip() for entry in shard_text[1:-1].split(",")]
    result = []
    for entry in entries:
        match = _SHARD_RE.match(entry)
        if match is None:
            raise DimsSyntaxError(
                f"dims {text!r}: {shard_text!r} is not a split; write [axis], [axis:partial] or [axis1,axis2]"
            )
        qualifiers = tuple(match.group(2).split("+")) if match.group(2) else ()
        for qualifier in qualifiers:
            if qualifier not in _QUALIFIERS:
                raise DimsSyntaxError(
                    f"dims {text!r}: {shard_text!r} is not a split: unknown qualifier {qualifier!r}; "
                    f"valid qualifiers: {', '.join(_QUALIFIERS)}, e.g. [tp:partial], [cp:zigzag]"
                )
        if len(set(qualifiers)) != len(qualifiers):
            raise DimsSyntaxError(f"dims {text!r}: {entry!r} repeats a qualifier")
        result.append((match.group(1), qualifiers))
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
