"""Structural edits on a function's syntax tree: ``at: entry``, ``at: return``, ``tags``, ``step``.

Injected statements take the line of the statement they stand beside, so that
tracebacks point at the engine's file.
"""

from __future__ import annotations

import ast
import textwrap
from typing import Iterable, Sequence, TypeVar

from patches.errors import PatchApplyError, PatchFileError
from patches.line_edits import indent_of, located_nodes
from patches.source import FunctionSource
from patches.spec import DUMPER_GLOBAL, RETURN_VALUE_NAME, Edit, Snippet, TargetPatch


def strip_definition_time_parts(function: ast.FunctionDef | ast.AsyncFunctionDef, source: FunctionSource) -> None:
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
    none = lambda: at_line(ast.Constant(value=None), function.lineno)  # noqa: E731
    arguments.defaults = [none() for _ in arguments.defaults]
    arguments.kw_defaults = [None if default is None else none() for default in arguments.kw_defaults]
    # The code's first line must stay the original's (the first decorator's), which
    # inspect.getsource and line tables of the real file rely on.
    function.lineno = source.first_line


class EntryCursor:
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


def code_statements(code: Iterable[Snippet], line: int, source: FunctionSource) -> list[ast.stmt]:
    return [statement for snippet in code for statement in snippet_statements(snippet, line, source)]


def snippet_statements(snippet: Snippet, line: int, source: FunctionSource) -> list[ast.stmt]:
    tree = ast.parse(textwrap.dedent(snippet.text))  # checked when the patch file was loaded
    text = source.line(line)
    for node in located_nodes(tree):
        if isinstance(node, ast.Name) and node.id == "dumper":
            node.id = DUMPER_GLOBAL
        node.lineno = node.end_lineno = line
        node.col_offset = len(indent_of(text).encode())
        node.end_col_offset = max(len(text.encode()), node.col_offset)
    return tree.body


def inject_before_returns(function: ast.FunctionDef | ast.AsyncFunctionDef, edit: Edit, layer: TargetPatch,
                           source: FunctionSource) -> None:
    if _is_generator(function):
        raise PatchFileError(
            f"{edit.location}: {edit.describe} of {layer.target}: 'at: return' cannot be used on a generator "
            f"({source.qualname} contains yield)"
        )
    injector = _ReturnInjector(lambda line: code_statements(edit.code, line, source))
    new_body: list[ast.stmt] = []
    for statement in function.body:
        result = injector.visit(statement)
        new_body.extend(result if isinstance(result, list) else [result])
    last = new_body[-1]
    if not isinstance(last, (ast.Return, ast.Raise)):
        # The function can end without a return statement: it returns None there.
        line = function.end_lineno or last.lineno
        assign = at_line(ast.Assign(targets=[ast.Name(id=RETURN_VALUE_NAME, ctx=ast.Store())], value=ast.Constant(value=None)), line)
        new_body.extend([assign, *code_statements(edit.code, line, source)])
    function.body = new_body


class _ReturnInjector(ast.NodeTransformer):
    """``return X`` becomes ``__ret__ = X; <code>; return __ret__`` (nested scopes untouched)."""

    def __init__(self, make_statements) -> None:
        self.make_statements = make_statements

    def visit_FunctionDef(self, node):
        return node

    visit_AsyncFunctionDef = visit_Lambda = visit_ClassDef = visit_FunctionDef  # noqa: N815

    def visit_Return(self, node: ast.Return):
        statements = self.make_statements(node.lineno)
        if getattr(node, "_dumpcmp_return", False):
            return [*statements, node]
        assign = ast.Assign(targets=[ast.Name(id=RETURN_VALUE_NAME, ctx=ast.Store())],
                            value=node.value if node.value is not None else ast.Constant(value=None))
        new_return = ast.Return(value=ast.Name(id=RETURN_VALUE_NAME, ctx=ast.Load()))
        new_return._dumpcmp_return = True  # type: ignore[attr-defined]
        for created in (assign, new_return):
            ast.copy_location(created, node)
            at_line(created, node.lineno)
        return [assign, *statements, new_return]


def _is_generator(function: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    stack: list[ast.AST] = list(function.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Yield, ast.YieldFrom)):
            return True
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
            continue
        stack.extend(ast.iter_child_nodes(node))
    return False


def wrap_tags_and_step(function: ast.FunctionDef | ast.AsyncFunctionDef, layers: Sequence[TargetPatch],
                        source: FunctionSource) -> None:
    tags: dict[str, ast.expr] = {}
    site = ""
    for layer in layers:
        for tag in layer.tags:
            site = site or str(tag.location)
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
        # `with dumper.site_tags(SITE, lambda: dict(layer=self.layer_id)):` the tag expressions
        # are evaluated only while dumping is on; one that fails turns the site off (warned once).
        values = ast.Dict(keys=[ast.Constant(value=name) for name in tags], values=list(tags.values()))
        thunk = ast.Lambda(args=ast.arguments(posonlyargs=[], args=[], kwonlyargs=[], kw_defaults=[], defaults=[]),
                           body=values)
        call = ast.Call(func=ast.Attribute(value=ast.Name(id=DUMPER_GLOBAL, ctx=ast.Load()), attr="site_tags", ctx=ast.Load()),
                        args=[ast.Constant(value=site), thunk], keywords=[])
        body = [ast.With(items=[ast.withitem(context_expr=call, optional_vars=None)], body=body)]
    if step:
        # The step ends when the call does: dumps made during the first call are step 0.
        advance = ast.Expr(value=ast.Call(
            func=ast.Attribute(value=ast.Name(id=DUMPER_GLOBAL, ctx=ast.Load()), attr="step", ctx=ast.Load()),
            args=[], keywords=[]))
        body = [ast.Try(body=body, handlers=[], orelse=[], finalbody=[advance])]
    for node in body:
        at_line(node, line)
    function.body = head + body


_Node = TypeVar("_Node", bound=ast.AST)


def at_line(node: _Node, line: int) -> _Node:
    """Give ``node`` and its children without a location the line ``line``."""
    for child in located_nodes(node):
        if getattr(child, "lineno", None) is None:
            child.lineno = child.end_lineno = line
            child.col_offset = child.end_col_offset = 0
    return node
