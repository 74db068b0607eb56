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
import sys
import types
from typing import Sequence

from patches.errors import PatchApplyError, PatchFileError
from patches.line_edits import Line, apply_match, parse_lines
from patches.source import FunctionSource
from patches.spec import TargetPatch
from patches.tree_edits import (
    EntryCursor,
    at_line,
    code_statements,
    inject_before_returns,
    snippet_statements,
    strip_definition_time_parts,
    wrap_tags_and_step,
)

_SCOPE_NAME = "__dumpcmp_scope__"


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
    lines = [Line(text, source.first_line + i) for i, text in enumerate(source.lines)]
    for layer in layers:
        for edit in layer.edits:
            if edit.match is not None:
                lines = apply_match(lines, edit, layer, source)
    function = parse_lines(lines, source, layers)
    strip_definition_time_parts(function, source)
    for layer in layers:
        cursor = EntryCursor(function)
        if layer.preamble is not None:
            cursor.insert_at_entry(snippet_statements(layer.preamble, cursor.entry_line(), source))
        for edit in layer.edits:
            if edit.at == "entry":
                cursor.insert_at_entry(code_statements(edit.code, cursor.entry_line(), source))
            elif edit.at == "return":
                inject_before_returns(function, edit, layer, source)
    wrap_tags_and_step(function, layers, source)
    return function


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
    at_line(module, line)
    return module


def _nonlocal_names(function: ast.FunctionDef | ast.AsyncFunctionDef) -> list[str]:
    names: list[str] = []
    stack: list[ast.AST] = list(function.body)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Nonlocal):
            names.extend(node.names)
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
            stack.extend(ast.iter_child_nodes(node))
    return names


def _no_arguments() -> ast.arguments:
    return ast.arguments(posonlyargs=[], args=[], vararg=None, kwonlyargs=[], kw_defaults=[], kwarg=None, defaults=[])


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
