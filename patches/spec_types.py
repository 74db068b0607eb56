"""The typed records a patch file becomes (patches/spec.py parses YAML into them) and the schema's key sets."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

TOP_KEYS = ("patches", "description")
PATCH_KEYS = ("target", "edits", "tags", "step", "preamble")
EDIT_KEYS = ("match", "at", "prepend", "append", "replacement")
DUMP_KEYS = ("dump", "expr", "dims", "tags", "graft")
DIMS_CHOICE_KEYS = ("when", "then", "else")
AT_ANCHORS = ("entry", "return")
RETURN_VALUE_NAME = "__ret__"
# Injected code says ``dumper``; it is renamed to this global so that a module with
# its own ``dumper`` (SGLang's model runner has one) keeps it.
DUMPER_GLOBAL = "__dumpcmp_dumper__"

AtAnchor = Literal["entry", "return"]
Mode = Literal["prepend", "append", "replacement"]


@dataclass(frozen=True, kw_only=True)
class Location:
    """A place in a patch file; ``line`` and ``column`` are 1-based."""

    file: str
    line: int
    column: int = 1

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


@dataclass(frozen=True, kw_only=True)
class Snippet:
    """Python code taken from a patch file (or generated from a ``dump:`` entry).

    ``literal`` means each line of ``text`` is on its own YAML line (a ``|`` block),
    so line ``k`` of the code is YAML line ``location.line + k``.
    """

    text: str
    location: Location
    literal: bool = False

    def yaml_line(self, index: int) -> int:
        return self.location.line + index if self.literal else self.location.line


@dataclass(frozen=True, kw_only=True)
class Tag:
    name: str
    expr: str  # a Python expression evaluated where the tag is applied
    location: Location


@dataclass(frozen=True, kw_only=True)
class Edit:
    """One edit: an anchor (``match`` text or ``at``) and what to do there."""

    match: str | None
    at: AtAnchor | None
    mode: Mode
    code: tuple[Snippet, ...]
    location: Location
    index: int  # 1-based position in its target's edit list, for messages

    @property
    def describe(self) -> str:
        anchor = f"at: {self.at}" if self.at else "match"
        return f"edit {self.index} ({anchor}, {self.mode})"


@dataclass(frozen=True, kw_only=True)
class TargetPatch:
    """Everything one ``patches:`` entry does to one function."""

    target: str
    edits: tuple[Edit, ...]
    tags: tuple[Tag, ...]
    step: bool
    preamble: Snippet | None
    location: Location

    @property
    def file(self) -> str:
        return self.location.file


@dataclass(frozen=True, kw_only=True)
class PatchFile:
    path: str
    description: str | None
    patches: tuple[TargetPatch, ...]

    @property
    def edit_count(self) -> int:
        return sum(len(p.edits) for p in self.patches)
