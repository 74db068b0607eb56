"""Turn a function's source plus patch specs into a new code object.

``match`` edits rewrite the text line by line (SGLang's semantics); the text is then
parsed, and the structural edits (``at: entry``, ``at: return``, ``tags``, ``step``)
are made on the syntax tree. Every line keeps the number of the real file line it
came from (injected lines take their anchor's), so the compiled code's tracebacks
point at the engine's file. Nothing is executed here: the new code object is taken
from the compiled module's constants.
"""

from __future__ import annotations

import ast
import difflib
import sys
import textwrap
import types
from dataclasses import dataclass
from typing import Iterable, Sequence

from patches.errors import PatchAnchorError, PatchApplyError, PatchFileError
from patches.source import FunctionSource
from patches.spec import RETURN_VALUE_NAME, Edit, Snippet, TargetPatch

# Injected code says ``dumper``; it is renamed to this global so that a module with
# its own ``dumper`` (SGLang's model runner has one) keeps it.
DUMPER_GLOBAL = "__dumpcmp_dumper__"
_SCOPE_NAME = "__dumpcmp_scope__"


@dataclass(frozen=True)
class _Line:
    text: str
    origin: int  # the engine file's line this line reports in tracebacks
    snippet: Snippet | None = None  # set on injected lines
    snippet_index: int = 0
    where: str = ""  # "edit 2 (match, append) of pkg.mod.f", for messages

    def yaml_location(self) -> str:
        if self.snippet is None:
            return self.where
        return f"{self.snippet.location.file}:{self.snippet.yaml_line(self.snippet_index)}"


def compile_patched(source: FunctionSource, layers: Sequence[TargetPatch], *, live: bool = True) -> types.CodeType:
    """The code object of ``source`` with every layer's edits applied, in order.

    ``live`` is False for ``patch check``, where the function's closure is unknown.
    """
    function = build_function_ast(source, layers)
    module = _wrap_for_compile(function, source)
    first = layers[0] if layers else None
    try:
        # exec-ok: compiles (never runs) code from the user's patch file; the code object replaces the target's.
        module_code = compile(module, source.filename, "exec", dont_inherit=True)
    except SyntaxError as exc:
        where = f"{first.file}: " if first else ""
        raise PatchFileError(
            f"{where}the patched {source.qualname} does not compile: {exc.msg} (at {source.filename}:{exc.lineno})"
        ) from None
    code = _find_code(module_code, source.name, source.first_line)
    if code is None:  # pragma: no cover - the tree always holds the function
        raise PatchApplyError(f"internal error: compiled {source.qualname} not found")
    if sys.version_info >= (3, 11):
        code = code.replace(co_qualname=source.qualname)
    if live and code.co_freevars != tuple(source.freevars):
        lost = sorted(set(source.freevars) - set(code.co_freevars))
        raise PatchApplyError(
            f"{first.file if first else ''}: the patched {source.qualname} no longer uses the closure variable(s) "
            f"{', '.join(lost) or code.co_freevars}; keep at least one use of each (a replacement removed it)"
        )
    return code


def build_function_ast(source: FunctionSource, layers: Sequence[TargetPatch]) -> ast.FunctionDef | ast.AsyncFunctionDef:
    lines = [_Line(text, source.first_line + i) for i, text in enumerate(source.lines)]
    for layer in layers:
        for edit in layer.edits:
            if edit.match is not None:
                lines = _apply_match(lines, edit, layer, source)
    function = _parse(lines, source, layers)
    _strip_definition_time_parts(function, source)
    for layer in layers:
        cursor = _Cursor(function)
        if layer.preamble is not None:
            cursor.insert_at_entry(_snippet_statements(layer.preamble, cursor.entry_line(), source))
        for edit in layer.edits:
            if edit.at == "entry":
                cursor.insert_at_entry(_code_statements(edit.code, cursor.entry_line(), source))
            elif edit.at == "return":
                _inject_before_returns(function, edit, layer, source)
    _wrap_tags_and_step(function, layers, source)
    return function


# ------------------------------------------------------------------ text edits
def _apply_match(lines: list[_Line], edit: Edit, layer: TargetPatch, source: FunctionSource) -> list[_Line]:
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
    indent = _indent(matched[0].text)
    injected = [line for snippet in edit.code for line in _realign(snippet, indent, where)]
    if edit.mode == "prepend":
        new = [_origin(line, matched[0].origin) for line in injected] + matched
    elif edit.mode == "append":
        new = matched + [_origin(line, matched[-1].origin) for line in injected]
    else:
        new = [_origin(line, matched[min(i, size - 1)].origin) for i, line in enumerate(injected)]
    return lines[:start] + new + lines[start + size:]


def _origin(line: _Line, origin: int) -> _Line:
    return _Line(line.text, origin, line.snippet, line.snippet_index, line.where)


def _realign(snippet: Snippet, indent: str, where: str) -> list[_Line]:
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
        _Line(indent + text if text.strip() else "", 0, snippet, skipped + i, where)
        for i, text in enumerate(body)
    ]


def _indent(text: str) -> str:
    return text[: len(text) - len(text.lstrip())]


def _not_found_message(lines: list[_Line], wanted: list[str], edit: Edit, where: str, source: FunctionSource) -> str:
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
def _parse(lines: list[_Line], source: FunctionSource, layers: Sequence[TargetPatch]) -> ast.FunctionDef | ast.AsyncFunctionDef:
    # An indented method parses under "if 1:", so columns stay those of the real file.
    prefix = ["if 1:"] if lines and _indent(lines[0].text) else []
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
    for node in ast.walk(function):
        if "lineno" not in node._attributes:
            continue
        start = lines[node.lineno - 1 - len(prefix)]
        end = lines[(node.end_lineno or node.lineno) - 1 - len(prefix)]
        if isinstance(node, ast.Name) and node.id == "dumper" and start.snippet is not None:
            node.id = DUMPER_GLOBAL
        col = node.col_offset if start.snippet is None else len(_indent(source.line(start.origin)).encode())
        end_col = node.end_col_offset if end.snippet is None else len(source.line(end.origin).encode())
        node.lineno, node.end_lineno = start.origin, max(end.origin, start.origin)
        node.col_offset = col
        node.end_col_offset = max(end_col or 0, col) if node.end_lineno == node.lineno else end_col
    return function


def _syntax_error_message(exc: SyntaxError, lines: list[_Line], offset: int, source: FunctionSource,
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


def _strip_definition_time_parts(function: ast.FunctionDef | ast.AsyncFunctionDef, source: FunctionSource) -> None:
    """Drop what runs when ``def`` executes (decorators, annotations, default values).

    Only the code object is kept, so they are not needed, and evaluating them could
    fail (names imported under TYPE_CHECKING) or have side effects.
    """
    if getattr(function, "type_params", None):
        raise PatchApplyError(f"{source.qualname} has type parameters (PEP 695); such functions cannot be patched")
    function.decorator_list = []
    function.returns = None
    arguments = function.args
    for argument in [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs, arguments.vararg, arguments.kwarg]:
        if argument is not None:
            argument.annotation = None
            argument.type_comment = None
    none = lambda: _at(ast.Constant(value=None), function.lineno)  # noqa: E731
    arguments.defaults = [none() for _ in arguments.defaults]
    arguments.kw_defaults = [None if default is None else none() for default in arguments.kw_defaults]
    # The code's first line must stay the original's (the first decorator's), which
    # inspect.getsource and line tables of the real file rely on.
    function.lineno = source.first_line


# ------------------------------------------------------------------ structural edits
class _Cursor:
    """Where ``at: entry`` code goes: after the docstring and earlier entry code."""

    def __init__(self, function: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self.function = function
        self.index = 1 if _has_docstring(function) else 0

    def entry_line(self) -> int:
        body = self.function.body
        return body[self.index].lineno if self.index < len(body) else body[-1].lineno

    def insert_at_entry(self, statements: list[ast.stmt]) -> None:
        self.function.body[self.index:self.index] = statements
        self.index += len(statements)


def _has_docstring(function: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    first = function.body[0]
    return isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str)


def _code_statements(code: Iterable[Snippet], line: int, source: FunctionSource) -> list[ast.stmt]:
    return [statement for snippet in code for statement in _snippet_statements(snippet, line, source)]


def _snippet_statements(snippet: Snippet, line: int, source: FunctionSource) -> list[ast.stmt]:
    tree = ast.parse(textwrap.dedent(snippet.text))  # checked when the patch file was loaded
    text = source.line(line)
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id == "dumper":
            node.id = DUMPER_GLOBAL
        if "lineno" in node._attributes:
            node.lineno = node.end_lineno = line
            node.col_offset = len(_indent(text).encode())
            node.end_col_offset = max(len(text.encode()), node.col_offset)
    return tree.body


def _inject_before_returns(function: ast.FunctionDef | ast.AsyncFunctionDef, edit: Edit, layer: TargetPatch,
                           source: FunctionSource) -> None:
    if _is_generator(function):
        raise PatchFileError(
            f"{edit.location}: {edit.describe} of {layer.target}: 'at: return' cannot be used on a generator "
            f"({source.qualname} contains yield)"
        )
    injector = _ReturnInjector(lambda line: _code_statements(edit.code, line, source))
    new_body: list[ast.stmt] = []
    for statement in function.body:
        result = injector.visit(statement)
        new_body.extend(result if isinstance(result, list) else [result])
    last = new_body[-1]
    if not isinstance(last, (ast.Return, ast.Raise)):
        # The function can end without a return statement: it returns None there.
        line = function.end_lineno or last.lineno
        assign = _at(ast.Assign(targets=[ast.Name(id=RETURN_VALUE_NAME, ctx=ast.Store())], value=ast.Constant(value=None)), line)
        new_body.extend([assign, *_code_statements(edit.code, line, source)])
    function.body = new_body


class _ReturnInjector(ast.NodeTransformer):
    """``return X`` becomes ``__ret__ = X; <code>; return __ret__`` (nested scopes untouched)."""

    def __init__(self, make_statements) -> None:
        self.make_statements = make_statements

    def visit_FunctionDef(self, node):  # noqa: N802 - ast visitor names
        return node

    visit_AsyncFunctionDef = visit_Lambda = visit_ClassDef = visit_FunctionDef  # noqa: N815

    def visit_Return(self, node: ast.Return):  # noqa: N802
        statements = self.make_statements(node.lineno)
        if getattr(node, "_dumpcmp_return", False):
            return [*statements, node]
        assign = ast.Assign(targets=[ast.Name(id=RETURN_VALUE_NAME, ctx=ast.Store())],
                            value=node.value if node.value is not None else ast.Constant(value=None))
        new_return = ast.Return(value=ast.Name(id=RETURN_VALUE_NAME, ctx=ast.Load()))
        new_return._dumpcmp_return = True  # type: ignore[attr-defined]
        for created in (assign, new_return):
            ast.copy_location(created, node)
            _at(created, node.lineno)
        return [assign, *statements, new_return]


def _is_generator(function: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    stack = list(function.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Yield, ast.YieldFrom)):
            return True
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
            continue
        stack.extend(ast.iter_child_nodes(node))
    return False


def _wrap_tags_and_step(function: ast.FunctionDef | ast.AsyncFunctionDef, layers: Sequence[TargetPatch],
                        source: FunctionSource) -> None:
    tags: dict[str, ast.expr] = {}
    for layer in layers:
        for tag in layer.tags:
            value = ast.parse(tag.expr, mode="eval").body
            for node in ast.walk(value):
                if isinstance(node, ast.Name) and node.id == "dumper":
                    node.id = DUMPER_GLOBAL
            tags[tag.name] = value
    step = any(layer.step for layer in layers)
    if not tags and not step:
        return
    line = function.lineno
    head = function.body[:1] if _has_docstring(function) else []
    body = function.body[len(head):] or [ast.Pass()]
    if tags:
        call = ast.Call(func=ast.Attribute(value=ast.Name(id=DUMPER_GLOBAL, ctx=ast.Load()), attr="tags", ctx=ast.Load()),
                        args=[], keywords=[ast.keyword(arg=name, value=value) for name, value in tags.items()])
        body = [ast.With(items=[ast.withitem(context_expr=call, optional_vars=None)], body=body)]
    if step:
        # The step ends when the call does: dumps made during the first call are step 0.
        advance = ast.Expr(value=ast.Call(
            func=ast.Attribute(value=ast.Name(id=DUMPER_GLOBAL, ctx=ast.Load()), attr="step", ctx=ast.Load()),
            args=[], keywords=[]))
        body = [ast.Try(body=body, handlers=[], orelse=[], finalbody=[advance])]
    for node in body:
        _at(node, line)
    function.body = head + body


# ------------------------------------------------------------------ compile
def _wrap_for_compile(function: ast.FunctionDef | ast.AsyncFunctionDef, source: FunctionSource) -> ast.Module:
    """Put the function where the compiler gives it the original's scopes.

    Inside ``class <its class>`` private names are mangled as in the real class and
    ``super()`` gets its ``__class__`` cell; inside an outer function, closure
    variables stay closure variables (the swapped code must have the same ones).
    """
    line = source.first_line
    node: ast.stmt = function
    if source.class_name:
        node = ast.ClassDef(name=source.class_name, bases=[], keywords=[], body=[function], decorator_list=[])
        if sys.version_info >= (3, 12):
            node.type_params = []  # type: ignore[attr-defined]
    closure = [name for name in source.freevars if not (name == "__class__" and source.class_name)]
    closure += [name for name in _nonlocal_names(function) if name not in closure]
    if closure:
        assigns = [ast.Assign(targets=[ast.Name(id=name, ctx=ast.Store())], value=ast.Constant(value=None)) for name in closure]
        node = ast.FunctionDef(name=_SCOPE_NAME, args=_no_arguments(), body=[*assigns, node], decorator_list=[], returns=None)
        if sys.version_info >= (3, 12):
            node.type_params = []  # type: ignore[attr-defined]
    module = ast.Module(body=[node], type_ignores=[])
    _at(module, line)
    return module


def _nonlocal_names(function: ast.FunctionDef | ast.AsyncFunctionDef) -> list[str]:
    names: list[str] = []
    stack = list(function.body)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Nonlocal):
            names.extend(node.names)
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
            stack.extend(ast.iter_child_nodes(node))
    return names


def _no_arguments() -> ast.arguments:
    return ast.arguments(posonlyargs=[], args=[], vararg=None, kwonlyargs=[], kw_defaults=[], kwarg=None, defaults=[])


def _at(node: ast.AST, line: int) -> ast.AST:
    """Give ``node`` and its children without a location the line ``line``."""
    for child in ast.walk(node):
        if "lineno" in child._attributes and getattr(child, "lineno", None) is None:
            child.lineno = child.end_lineno = line
            child.col_offset = child.end_col_offset = 0
    return node


def _find_code(code: types.CodeType, name: str, first_line: int) -> types.CodeType | None:
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            if const.co_name == name and const.co_firstlineno == first_line:
                return const
            found = _find_code(const, name, first_line)
            if found is not None:
                return found
    return None


def patched_source_text(source: FunctionSource, layers: Sequence[TargetPatch]) -> str:
    """The patched function as Python text (for ``patch check --show`` and debugging)."""
    return ast.unparse(build_function_ast(source, layers))

