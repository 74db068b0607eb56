"""Text edits of a function's source, and parsing the result back with real locations.

``match`` edits rewrite the text line by line (SGLang's semantics). Every line keeps
the number of the real file line it came from (injected lines take their anchor's),
so that the parsed tree, and the code compiled from it, report the engine's lines.
"""

from __future__ import annotations

import ast
import difflib
import textwrap
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

from patches.errors import PatchAnchorError, PatchFileError
from patches.source import FunctionSource
from patches.spec import DUMPER_GLOBAL, Edit, Snippet, TargetPatch


@dataclass(frozen=True)
class Line:
    text: str
    origin: int  # the engine file's line this line reports in tracebacks
    snippet: Snippet | None = None  # set on injected lines
    snippet_index: int = 0
    where: str = ""  # "edit 2 (match, append) of pkg.mod.f", for messages

    def yaml_location(self) -> str:
        if self.snippet is None:
            return self.where
        return f"{self.snippet.location.file}:{self.snippet.yaml_line(self.snippet_index)}"


def apply_match(lines: list[Line], edit: Edit, layer: TargetPatch, source: FunctionSource) -> list[Line]:
    if edit.match is None:
        raise RuntimeError(f"{edit} reached the text-edit path without a match")
    wanted = [line.strip() for line in edit.match.strip().splitlines()]
    stripped = [line.text.strip() for line in lines]
    size = len(wanted)
    hits = [i for i in range(len(lines) - size + 1) if stripped[i:i + size] == wanted]
    where = f"{edit.describe} of {layer.target}"
    if not hits:
        raise PatchAnchorError(_not_found_message(lines, wanted, edit, where, source))
    if len(hits) > 1:
        at_lines = ", ".join(str(lines[i].origin) for i in hits)
        raise PatchAnchorError(
            f"{edit.location}: {where}: the match text occurs {len(hits)} times in {source.qualname} "
            f"(lines {at_lines} of {source.filename}); add neighbouring lines to the match so that it occurs once"
        )
    start = hits[0]
    matched = lines[start:start + size]
    indent = indent_of(matched[0].text)
    injected = [line for snippet in edit.code for line in _realign(snippet, indent, where)]
    if edit.mode == "prepend":
        new = [_origin(line, matched[0].origin) for line in injected] + matched
    elif edit.mode == "append":
        new = matched + [_origin(line, matched[-1].origin) for line in injected]
    else:
        new = [_origin(line, matched[min(i, size - 1)].origin) for i, line in enumerate(injected)]
    return lines[:start] + new + lines[start + size:]


def _origin(line: Line, origin: int) -> Line:
    return Line(line.text, origin, line.snippet, line.snippet_index, line.where)


def _realign(snippet: Snippet, indent: str, where: str) -> list[Line]:
    """The snippet's lines, re-indented so that its first line sits at ``indent``."""
    raw = snippet.text.split("\n")
    while raw and not raw[-1].strip():
        raw.pop()
    skipped = 0
    while raw and not raw[0].strip():
        raw.pop(0)
        skipped += 1
    body = textwrap.dedent("\n".join(raw)).split("\n") if raw else []
    return [
        Line(indent + text if text.strip() else "", 0, snippet, skipped + i, where)
        for i, text in enumerate(body)
    ]


def indent_of(text: str) -> str:
    return text[: len(text) - len(text.lstrip())]


def _not_found_message(lines: list[Line], wanted: list[str], edit: Edit, where: str, source: FunctionSource) -> str:
    shown = "\n".join(f"    | {line}" for line in wanted)
    message = [
        f"{edit.location}: {where}: the match text is not in {source.qualname} "
        f"({source.filename}:{source.first_line}):",
        shown,
    ]
    size = len(wanted)
    joined_wanted = "\n".join(wanted)
    windows = []
    for start in range(0, max(1, len(lines) - size + 1)):
        window = lines[start:start + size]
        text = "\n".join(line.text.strip() for line in window)
        if not text.strip():
            continue
        ratio = difflib.SequenceMatcher(None, joined_wanted, text, autojunk=False).ratio()
        windows.append((ratio, start, window))
    best = sorted(windows, key=lambda item: (-item[0], item[1]))[:3]
    best = [item for item in best if item[0] >= 0.4]
    if best:
        message.append("  closest lines of the real source:")
        for _, _, window in sorted(best, key=lambda item: item[1]):
            for line in window:
                message.append(f"    {line.origin:>5}: {line.text.strip()}")
            if size > 1:
                message.append("    -----")
    else:
        message.append("  no similar lines; is the target the right function for this engine version?")
    return "\n".join(message)


# ------------------------------------------------------------------ parse + locations
def parse_lines(lines: list[Line], source: FunctionSource, layers: Sequence[TargetPatch]) -> ast.FunctionDef | ast.AsyncFunctionDef:
    # An indented method parses under "if 1:", so columns stay those of the real file.
    prefix = ["if 1:"] if lines and indent_of(lines[0].text) else []
    text = "\n".join(prefix + [line.text for line in lines]) + "\n"
    try:
        tree = ast.parse(text, filename=source.filename)
    except SyntaxError as exc:
        raise PatchFileError(_syntax_error_message(exc, lines, len(prefix), source, layers)) from None
    outer = tree.body[0].body if prefix else tree.body  # type: ignore[attr-defined]
    function = outer[0] if outer else None
    if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)) or function.name != source.name or len(outer) != 1:
        names = ", ".join(layer.file for layer in layers)
        raise PatchFileError(f"{names}: the edits of {source.qualname} replaced its 'def' line; keep the function's signature")
    for node in located_nodes(function):
        start = lines[node.lineno - 1 - len(prefix)]
        end = lines[(node.end_lineno or node.lineno) - 1 - len(prefix)]
        if isinstance(node, ast.Name) and node.id == "dumper" and start.snippet is not None:
            node.id = DUMPER_GLOBAL
        col = node.col_offset if start.snippet is None else len(indent_of(source.line(start.origin)).encode())
        end_col = node.end_col_offset if end.snippet is None else len(source.line(end.origin).encode())
        node.lineno, node.end_lineno = start.origin, max(end.origin, start.origin)
        node.col_offset = col
        node.end_col_offset = max(end_col or 0, col) if node.end_lineno == node.lineno else end_col
    return function


def _syntax_error_message(exc: SyntaxError, lines: list[Line], offset: int, source: FunctionSource,
                          layers: Sequence[TargetPatch]) -> str:
    index = (exc.lineno or 1) - 1 - offset
    index = min(max(index, 0), len(lines) - 1)
    line = lines[index]
    if line.snippet is not None:
        return f"{line.yaml_location()}: syntax error in injected code ({line.where}): {exc.msg}"
    before = [candidate for candidate in lines[: index + 1] if candidate.snippet is not None]
    culprit = before[-1] if before else next((candidate for candidate in lines if candidate.snippet is not None), None)
    if culprit is not None:
        return (f"{culprit.yaml_location()}: after {culprit.where}, {source.filename}:{line.origin} "
                f"no longer parses ({exc.msg}); check the edit's indentation and that it keeps statements whole")
    files = ", ".join(sorted({layer.file for layer in layers}))
    return f"{files}: the edits of {source.qualname} leave {source.filename}:{line.origin} unparsable ({exc.msg})"


def located_nodes(tree: ast.AST) -> Iterator[Any]:
    """The nodes of ``tree`` that carry a source location (``lineno`` and columns).

    Typed ``Any``: ``ast.AST`` itself declares no location attributes.
    """
    return (node for node in ast.walk(tree) if "lineno" in node._attributes)
