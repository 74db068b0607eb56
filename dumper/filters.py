"""Which dump calls are kept: a small parsed grammar, never ``eval``.

An expression is a list of clauses separated by spaces or ``;``; a record is kept
when every clause holds::

    name~attn|mlp        name matches the regex (re.search)
    name!~norm           name does not match the regex
    step=0:3,7           step in 0..3 (inclusive) or 7; "5:" means 5 and later
    rank=0,1             global rank 0 or 1
    layer=0:2            any other key is a tag: the tag's value in the set
    layer!=5             the tag's value not in the set (records without the tag pass)

The same filter is built from code with ``DumpFilter(names=..., steps=..., tags=...)``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterable

from dumper.errors import FilterSyntaxError
from dumper.patterns import UserRegex, compile_user_regex

_CLAUSE = re.compile(r"^(?P<key>[A-Za-z_][\w.]*)\s*(?P<op>!~|~|!=|=)\s*(?P<value>.+)$")


@dataclass(frozen=True, kw_only=True)
class IntSet:
    """A union of inclusive integer ranges; ``None`` bounds are open."""

    ranges: tuple[tuple[int | None, int | None], ...]

    def __contains__(self, value: object) -> bool:
        if isinstance(value, bool) or not isinstance(value, int):
            try:
                value = int(str(value))
            except ValueError:
                return False
        return any((lo is None or value >= lo) and (hi is None or value <= hi) for lo, hi in self.ranges)

    @classmethod
    def parse(cls, text: str) -> "IntSet":
        ranges = []
        for part in text.split(","):
            part = part.strip()
            if not part:
                raise FilterSyntaxError(f"empty item in {text!r}")
            if ":" in part:
                lo_text, hi_text = part.split(":", 1)
                lo = _parse_int(lo_text, text) if lo_text.strip() else None
                hi = _parse_int(hi_text, text) if hi_text.strip() else None
                if lo is not None and hi is not None and hi < lo:
                    raise FilterSyntaxError(f"range {part!r} is empty (the end is before the start)")
                ranges.append((lo, hi))
            else:
                value = _parse_int(part, text)
                ranges.append((value, value))
        return cls(ranges=tuple(ranges))

    @classmethod
    def of(cls, values: Iterable[int]) -> "IntSet":
        return cls(ranges=tuple((int(v), int(v)) for v in values))


def _parse_int(text: str, whole: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise FilterSyntaxError(f"{text.strip()!r} in {whole!r} is not an integer") from None


@dataclass(frozen=True, kw_only=True)
class TagClause:
    key: str
    values: frozenset[str]
    ints: IntSet | None
    negate: bool

    def holds(self, tags: dict[str, Any]) -> bool:
        if self.key not in tags:
            return self.negate
        value = tags[self.key]
        found = str(value) in self.values or (self.ints is not None and value in self.ints)
        return found != self.negate


@dataclass(frozen=True, kw_only=True)
class DumpFilter:
    """Structured filter; ``DumpFilter()`` keeps everything."""

    names: tuple[str, ...] = ()  # regexes; a name must match at least one (if any are given)
    exclude: tuple[str, ...] = ()  # regexes; a name matching any is dropped
    steps: IntSet | None = None
    ranks: IntSet | None = None
    tags: tuple[TagClause, ...] = ()
    _name_cache: dict[str, bool] = field(default_factory=dict, compare=False, repr=False)
    _compiled: tuple[tuple[UserRegex, ...], tuple[UserRegex, ...]] = field(
        default=((), ()), compare=False, repr=False)

    def __post_init__(self) -> None:
        # NOTE: this runs on the engine thread (dump() filters there): every regex is
        # checked here and matched without backtracking blow-ups (dumper/patterns.py).
        compiled = tuple(
            tuple(compile_user_regex(p, "filter name regex", FilterSyntaxError) for p in group)
            for group in (self.names, self.exclude))
        object.__setattr__(self, "_compiled", compiled)

    @property
    def keeps_everything(self) -> bool:
        return not (self.names or self.exclude or self.steps or self.ranks or self.tags)

    def keeps_name(self, name: str) -> bool:
        cached = self._name_cache.get(name)
        if cached is None:
            names, exclude = self._compiled
            included = not names or any(p.search(name) for p in names)
            cached = included and not any(p.search(name) for p in exclude)
            self._name_cache[name] = cached
        return cached

    def keeps(self, *, name: str, step: int, rank: int, tags: dict[str, Any]) -> bool:
        if not self.keeps_name(name):
            return False
        if self.steps is not None and step not in self.steps:
            return False
        if self.ranks is not None and rank not in self.ranks:
            return False
        return all(clause.holds(tags) for clause in self.tags)

    @classmethod
    def with_tags(cls, **tags: Iterable[Any] | Any) -> "DumpFilter":
        """``DumpFilter.with_tags(layer={0, 1, 2})``: structural tag equality from code."""
        clauses = []
        for key, wanted in tags.items():
            values = wanted if isinstance(wanted, (set, frozenset, list, tuple)) else [wanted]
            clauses.append(TagClause(key=key, values=frozenset(str(v) for v in values), ints=None, negate=False))
        return cls(tags=tuple(clauses))


def parse_filter(text: str) -> DumpFilter:
    """Parse the expression grammar in this module's docstring."""
    names: list[str] = []
    exclude: list[str] = []
    steps: IntSet | None = None
    ranks: IntSet | None = None
    tag_clauses: list[TagClause] = []
    for clause in re.split(r"[;\s]+", text.strip()):
        if not clause:
            continue
        match = _CLAUSE.match(clause)
        if match is None:
            raise FilterSyntaxError(
                f"cannot parse filter clause {clause!r}; expected KEY=VALUES, KEY!=VALUES, "
                "name~REGEX or name!~REGEX (e.g. 'name~attn step=0:3 layer=0,1')"
            )
        key, op, value = match["key"], match["op"], match["value"]
        if key == "name":
            if op == "~":
                names.append(value)
            elif op == "!~":
                exclude.append(value)
            else:
                raise FilterSyntaxError(f"use name~REGEX or name!~REGEX, not {clause!r}")
        elif op in ("~", "!~"):
            raise FilterSyntaxError(f"regex match (~) is only for names, not {key!r} in {clause!r}")
        elif key in ("step", "rank"):
            if op != "=":
                raise FilterSyntaxError(f"{key} takes '=' with numbers and ranges, e.g. {key}=0:3,7")
            parsed = IntSet.parse(value)
            if key == "step":
                steps = parsed
            else:
                ranks = parsed
        else:
            items = frozenset(v.strip() for v in value.split(","))
            try:
                ints: IntSet | None = IntSet.parse(value)
            except FilterSyntaxError:
                ints = None
            tag_clauses.append(TagClause(key=key, values=items, ints=ints, negate=op == "!="))
    return DumpFilter(names=tuple(names), exclude=tuple(exclude), steps=steps, ranks=ranks, tags=tuple(tag_clauses))
