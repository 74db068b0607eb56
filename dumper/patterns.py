"""Regular expressions from users, made safe to match anywhere (the engine thread included).

Every user regex (dump filters, ``--names``, ``--allow-fail``, thresholds and name-map
patterns, hook selections) goes through :func:`compile_user_regex`:

- it is checked at parse time: at most 1000 characters, 32 levels of nesting and
  repeat counts up to 1000 (deeper nesting used to raise ``RecursionError``, a huge
  count ``OverflowError``);
- it is matched by RE2 (``google-re2``, a linear-time engine without backtracking)
  when that is installed and the pattern is within its syntax;
- otherwise Python's ``re`` matches it, but only if it has no repetition inside a
  repetition (the shape of every catastrophic backtracking case, e.g. ``(a+)+$``),
  and on at most the first 4096 characters of a name.
"""

from __future__ import annotations

import functools
import importlib
import re
import sys
from dataclasses import dataclass, field
from typing import Any, Callable

from dumper.errors import DumpcmpError

# Python's own regex parser (re._parser from 3.11, sre_parse before): the checks walk its tree.
_sre: Any = importlib.import_module("re._constants" if sys.version_info >= (3, 11) else "sre_constants")
_sre_parse: Any = importlib.import_module("re._parser" if sys.version_info >= (3, 11) else "sre_parse")

MAX_PATTERN_CHARS = 1000
MAX_NESTING = 32
MAX_REPEAT_COUNT = 1000  # RE2's own limit
MAX_SUBJECT_CHARS = 4096  # names are matched on at most this many characters by Python's re

_REPEATS = {_sre.MAX_REPEAT, _sre.MIN_REPEAT} | ({_sre.POSSESSIVE_REPEAT} if hasattr(_sre, "POSSESSIVE_REPEAT") else set())


@functools.lru_cache(maxsize=None)
def _re2_module() -> Any:
    # Imported on the first user regex, not with the dumper: most engines never give one.
    try:
        import re2  # google-re2
    except ImportError:
        return None
    return re2


@dataclass(frozen=True, eq=False)
class UserRegex:
    """A checked user regex with the methods of ``re.Pattern`` that dumpcmp uses."""

    pattern: str
    _compiled: Any = field(repr=False)
    _limit: int | None = field(repr=False)  # subject characters Python's re sees; None under RE2

    @property
    def engine(self) -> str:
        return "re" if self._limit is not None else "re2"

    @property
    def groups(self) -> int:
        return self._compiled.groups

    @property
    def groupindex(self) -> dict[str, int]:
        return dict(self._compiled.groupindex)

    def _clip(self, text: str) -> str:
        return text if self._limit is None else text[: self._limit]

    def search(self, text: str) -> Any:
        return self._compiled.search(self._clip(text))

    def match(self, text: str) -> Any:
        return self._compiled.match(self._clip(text))

    def fullmatch(self, text: str) -> Any:
        return self._compiled.fullmatch(self._clip(text))

    def sub(self, replacement: str, text: str, count: int = 0) -> str:
        return self._compiled.sub(replacement, self._clip(text), count=count)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, UserRegex) and other.pattern == self.pattern

    def __hash__(self) -> int:
        return hash(self.pattern)

    def __reduce__(self) -> tuple[Callable[..., UserRegex], tuple[str, str]]:
        # Compiled RE2 objects do not pickle (compare --jobs sends options to workers).
        return (compile_user_regex, (self.pattern, "regex"))


def check_user_regex(text: str, where: str, error: type[DumpcmpError]) -> tuple[Any, bool]:
    """Parse ``text`` with Python's parser and check its size; returns (parsed, nested repeats)."""
    if not isinstance(text, str):
        raise error(f"{where} must be a regular expression (text), not {type(text).__name__}")
    if len(text) > MAX_PATTERN_CHARS:
        raise error(f"{where} {text[:40]!r}... is {len(text)} characters; a regular expression may have at most "
                    f"{MAX_PATTERN_CHARS}")
    try:
        parsed = _sre_parse.parse(text)
    except re.error as exc:
        raise error(f"{where} {text[:80]!r} is not a valid regular expression ({exc})") from None
    except (RecursionError, OverflowError, MemoryError):
        raise error(f"{where} {text[:80]!r} is too deeply nested or repeats too often; at most {MAX_NESTING} levels "
                    f"of groups and repeat counts up to {MAX_REPEAT_COUNT}") from None
    problem, nested = _walk(parsed, 0, False)
    if problem is not None:
        raise error(f"{where} {text[:80]!r}: {problem}")
    return parsed, nested


def compile_user_regex(text: str, where: str, error: type[DumpcmpError] = DumpcmpError) -> UserRegex:
    """Check and compile a user regex (see the module docstring); raises ``error`` with one line."""
    _, nested = check_user_regex(text, where, error)
    re2 = _re2_module()
    if re2 is not None:
        options = re2.Options()
        options.log_errors = False  # RE2 would print to stderr for every pattern outside its syntax
        try:
            return UserRegex(pattern=text, _compiled=re2.compile(text, options), _limit=None)
        except Exception:  # noqa: BLE001 - outside RE2's syntax (lookaround, backreference): Python's re below
            pass
    if nested:
        raise error(f"{where} {text[:80]!r} repeats inside a repetition (like (a+)+), which can take exponential "
                    "time to match; write it without the nested repeat"
                    + ("" if re2 is not None else ", or install google-re2"))
    return UserRegex(pattern=text, _compiled=re.compile(text), _limit=MAX_SUBJECT_CHARS)


def _walk(items: Any, depth: int, in_repeat: bool) -> tuple[str | None, bool]:
    """(a problem with the parsed pattern or None, whether a repeat sits inside a repeat)."""
    if depth > MAX_NESTING:
        return f"nests deeper than {MAX_NESTING} levels", False
    nested = False
    for op, av in items:
        children: list[tuple[Any, bool]] = []
        if op in _REPEATS:
            low, high, body = av
            bounded_high = high != _sre.MAXREPEAT
            if low > MAX_REPEAT_COUNT or (bounded_high and high > MAX_REPEAT_COUNT):
                return f"repeat count {high if bounded_high else low} is above {MAX_REPEAT_COUNT}", False
            repeats = not bounded_high or high > 1
            if repeats and in_repeat:
                nested = True
            children.append((body, in_repeat or repeats))
        elif op is _sre.SUBPATTERN:
            children.append((av[-1], in_repeat))
        elif op is _sre.BRANCH:
            children.extend((branch, in_repeat) for branch in av[1])
        elif op in (_sre.ASSERT, _sre.ASSERT_NOT):
            children.append((av[1], in_repeat))
        elif op is _sre.GROUPREF_EXISTS:
            children.extend((branch, in_repeat) for branch in av[1:] if branch is not None)
        elif getattr(_sre, "ATOMIC_GROUP", None) is not None and op is _sre.ATOMIC_GROUP:
            children.append((av, in_repeat))
        for child, child_in_repeat in children:
            problem, child_nested = _walk(child, depth + 1, child_in_repeat)
            if problem is not None:
                return problem, False
            nested = nested or child_nested
    return None, nested


_GROUP_REF = re.compile(r"\\(?:(\d{1,2})|g<([^>]*)>)")


def check_replacement(regex: UserRegex, replacement: str, where: str, error: type[DumpcmpError]) -> None:
    """A replacement's group references (``\\1``, ``\\g<name>``) must exist in ``regex``."""
    for match in _GROUP_REF.finditer(replacement):
        number, name = match.groups()
        if number is not None:
            ok = int(number) <= regex.groups
        elif name.isdigit():
            ok = int(name) <= regex.groups
        else:
            ok = name in regex.groupindex
        if not ok:
            raise error(f"{where} {replacement!r} refers to group {match.group(0)!r}, but {regex.pattern!r} has "
                        f"{regex.groups} group(s); refer to a group it has, by number (\\1) or by name (\\g<name>)")
