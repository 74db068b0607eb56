"""Find a target's module file and its function's source, without importing the engine.

``importlib.util.find_spec("a.b.c")`` imports ``a`` and ``a.b`` to find ``c``; engines
such as vLLM do real work in their ``__init__``. So only the top-level package's spec
is asked for, and the rest of the dotted path is walked on disk.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import linecache
import os
import sys
from dataclasses import dataclass

from patches.errors import PatchTargetError


@dataclass(frozen=True, kw_only=True)
class TargetLocation:
    """``target`` split into the module that defines it and the attributes inside it."""

    target: str
    module: str
    attributes: tuple[str, ...]
    file: str | None  # the module's source file, when it has one

    @property
    def qualname(self) -> str:
        return ".".join(self.attributes)


@dataclass(frozen=True, kw_only=True)
class FunctionSource:
    """One function's text as it is in its file, and what compiling a copy of it needs."""

    filename: str
    lines: tuple[str, ...]  # from its first decorator (or ``def``) to its last line, no newlines
    first_line: int  # 1-based line number of ``lines[0]``
    name: str
    qualname: str
    class_name: str | None  # the class whose body holds the ``def`` (private names are mangled with it)
    freevars: tuple[str, ...] = ()  # closure variable names, known only for a live function

    def line(self, number: int) -> str:
        """The file's line ``number`` when it is inside this function, else ''."""
        index = number - self.first_line
        return self.lines[index] if 0 <= index < len(self.lines) else ""


def locate_target(target: str) -> TargetLocation:
    """Split ``pkg.mod.Class.method`` at the longest prefix that is a module."""
    parts = target.split(".")
    try:
        module_name, file = _walk_modules(parts, target)
    except PatchTargetError:
        module_name, file = "", None
        if not any(".".join(parts[:end]) in sys.modules for end in range(1, len(parts))):
            raise
    # Modules made in memory (no file on disk) are known to sys.modules only.
    for end in range(len(parts) - 1, len(module_name.split(".")) if module_name else 0, -1):
        name = ".".join(parts[:end])
        if name in sys.modules:
            module_name, file = name, _source_file(getattr(sys.modules[name], "__file__", None))
            break
    count = len(module_name.split("."))
    if count == len(parts):
        raise PatchTargetError(f"target {target!r} is a module; name a function in it (module.function or module.Class.method)")
    return TargetLocation(target=target, module=module_name, attributes=tuple(parts[count:]), file=file)


def _walk_modules(parts: list[str], target: str) -> tuple[str, str | None]:
    """The longest module prefix of ``parts`` found on disk, and its source file."""
    top = parts[0]
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError) as exc:
        raise PatchTargetError(f"target {target!r}: cannot find module {top!r} ({exc})") from None
    if spec is None:
        raise PatchTargetError(f"target {target!r}: no module named {top!r} is installed (python: {sys.executable})")
    file = _source_file(spec.origin)
    locations = list(spec.submodule_search_locations or [])
    found = [top]
    for part in parts[1:]:
        if not locations:
            break
        next_file = None
        next_locations: list[str] = []
        for directory in locations:
            package_init = os.path.join(directory, part, "__init__.py")
            module_file = os.path.join(directory, part + ".py")
            if os.path.isfile(package_init):
                next_file, next_locations = package_init, [os.path.join(directory, part)]
                break
            if os.path.isfile(module_file):
                next_file, next_locations = module_file, []
                break
            if os.path.isdir(os.path.join(directory, part)) and not part.startswith("__"):
                next_locations.append(os.path.join(directory, part))  # namespace package portion
        if next_file is None and not next_locations:
            break
        found.append(part)
        file, locations = next_file, next_locations
    return ".".join(found), file


def _source_file(origin: str | None) -> str | None:
    if origin and origin.endswith(".py") and os.path.isfile(origin):
        return origin
    return None


# ------------------------------------------------------------------ static
def static_function_source(location: TargetLocation) -> FunctionSource:
    """The target function's source, found by parsing its module file."""
    if location.file is None:
        raise PatchTargetError(
            f"target {location.target!r}: module {location.module!r} has no Python source file to patch"
        )
    tree, lines = _parse_file(location.file)
    scope: list[ast.stmt] = tree.body
    owner = f"module {location.module}"
    class_name = None
    node: ast.AST | None = None
    for position, part in enumerate(location.attributes):
        last = position == len(location.attributes) - 1
        defined = _definitions(scope)
        node = defined.get(part)
        if node is None:
            raise PatchTargetError(_missing_attribute_message(location, owner, part, scope, defined, is_class=class_name is not None))
        if not last:
            if not isinstance(node, ast.ClassDef):
                raise PatchTargetError(f"target {location.target!r}: {part!r} in {owner} is not a class")
            scope, owner, class_name = node.body, f"class {part}", part
        elif not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            raise PatchTargetError(f"target {location.target!r}: {part!r} in {owner} is not a function")
    if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        raise PatchTargetError(f"target {location.target!r} does not name a function")
    return _function_source(location.file, lines, node, qualname=location.qualname, class_name=class_name)


def _missing_attribute_message(location: TargetLocation, owner: str, part: str, scope: list[ast.stmt],
                               defined: dict[str, ast.AST], *, is_class: bool) -> str:
    message = f"target {location.target!r}: {owner} ({location.file}) defines no {part!r}"
    imported = _imported_names(scope)
    if part in imported:
        rest = location.attributes[location.attributes.index(part):]
        return f"{message}; it is imported there from {imported[part]}: target {imported[part]}.{'.'.join(rest)} instead"
    if is_class:
        message += " (an inherited method must be patched in the class that defines it)"
    close = difflib.get_close_matches(part, list(defined), n=3)
    if close:
        message += f"; did you mean {', '.join(close)}?"
    return message


def _definitions(scope: list[ast.stmt]) -> dict[str, ast.AST]:
    """Classes and functions defined in a body, looking into if/try/with blocks (last one wins)."""
    found: dict[str, ast.AST] = {}
    for statement in scope:
        if isinstance(statement, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            found[statement.name] = statement
        elif isinstance(statement, (ast.If, ast.Try, ast.With)):
            for block in ("body", "orelse", "finalbody"):
                found.update(_definitions(getattr(statement, block, [])))
            for handler in getattr(statement, "handlers", []):
                found.update(_definitions(handler.body))
    return found


def _imported_names(scope: list[ast.stmt]) -> dict[str, str]:
    names = {}
    for statement in scope:
        if isinstance(statement, ast.ImportFrom) and statement.module and statement.level == 0:
            for alias in statement.names:
                names[alias.asname or alias.name] = statement.module
    return names


_PARSED: dict[tuple[str, int], tuple[ast.Module, list[str]]] = {}


def _parse_file(path: str, module_globals: dict | None = None) -> tuple[ast.Module, list[str]]:
    lines = linecache.getlines(path, module_globals)
    if not lines:
        raise PatchTargetError(f"cannot read the source file {path}")
    key = (path, hash("".join(lines)))
    cached = _PARSED.get(key)
    if cached is None:
        try:
            tree = ast.parse("".join(lines), filename=path)
        except SyntaxError as exc:
            raise PatchTargetError(f"cannot parse {path}:{exc.lineno}: {exc.msg}") from None
        cached = _PARSED[key] = (tree, [line.rstrip("\r\n") for line in lines])
    return cached


def _function_source(path: str, lines: list[str], node: ast.FunctionDef | ast.AsyncFunctionDef, *, qualname: str,
                     class_name: str | None, freevars: tuple[str, ...] = ()) -> FunctionSource:
    first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
    last = node.end_lineno or node.lineno
    return FunctionSource(filename=path, lines=tuple(lines[first - 1:last]), first_line=first, name=node.name,
                          qualname=qualname, class_name=class_name, freevars=freevars)


# ------------------------------------------------------------------ live
def live_function_source(function, *, module_globals: dict | None = None) -> FunctionSource:
    """The source of a live function object, found by its code's file and first line."""
    code = function.__code__
    tree, lines = _parse_file(code.co_filename, module_globals)
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == code.co_name:
            first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            if first == code.co_firstlineno:
                qualname = function.__qualname__
                parts = qualname.split(".")
                class_name = parts[-2] if len(parts) >= 2 and parts[-2] != "<locals>" else None
                return _function_source(code.co_filename, lines, node, qualname=qualname, class_name=class_name,
                                        freevars=code.co_freevars)
    raise PatchTargetError(
        f"cannot find the source of {function.__qualname__} in {code.co_filename} at line {code.co_firstlineno} "
        "(was the file changed after it was imported?)"
    )
