"""Collect every user-facing error message in the library, for docs/errors.md.

A user-facing error is a ``raise`` of a DumpcmpError subclass (or of one of the
helpers that build one, ``fail(...)``), whose first argument is a string or an
f-string. Each message is written as a template: ``{expression}`` where the code
interpolates a value.

    python -m tests.tools.error_catalogue --write   # refresh docs/errors.md's message lists
    python -m tests.tools.error_catalogue           # print them

docs/errors.md keeps handwritten prose per module (what causes these errors and
what to do) and, between ``<!-- messages: MODULE -->`` and ``<!-- end -->``
markers, the generated list; tests/test_error_catalogue.py checks both agree.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("dumper", "patches", "aligners", "comparator", "examples")
CATALOGUE = REPO / "docs" / "errors.md"
_FAIL_HELPERS = {"fail", "_fail", "error", "_error"}


def _user_error_names() -> set[str]:
    sys.path.insert(0, str(REPO))
    from dumper.errors import DumpcmpError

    names = {"DumpcmpError"}
    for path in _library_files():
        module = ".".join(path.relative_to(REPO).with_suffix("").parts)
        if module.endswith("__main__"):
            continue
        try:
            loaded = importlib.import_module(module)
        except Exception:  # noqa: BLE001 - optional engines may be missing
            continue
        for name, value in vars(loaded).items():
            if inspect.isclass(value) and issubclass(value, DumpcmpError):
                names.add(name)
    return names


def _library_files() -> list[Path]:
    files = []
    for package in PACKAGES:
        files.extend(sorted((REPO / package).rglob("*.py")))
    return [f for f in files if "_site" not in f.parts]


def _template(node: ast.expr) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        parts = []
        for value in node.values:
            if isinstance(value, ast.Constant):
                parts.append(str(value.value))
            elif isinstance(value, ast.FormattedValue):
                parts.append("{" + ast.unparse(value.value) + "}")
        return "".join(parts)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _template(node.left), _template(node.right)
        if left is not None and right is not None:
            return left + right
    return None


def _callee(call: ast.Call) -> str | None:
    func = call.func
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return None


def collect() -> dict[str, list[str]]:
    """module path -> sorted unique message templates raised there."""
    user_errors = _user_error_names()
    found: dict[str, set[str]] = {}
    for path in _library_files():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call)):
                continue
            callee = _callee(node.exc)
            if callee is None or not (callee in user_errors or callee in _FAIL_HELPERS):
                continue
            args = [a for a in node.exc.args if not isinstance(a, ast.Starred)]
            message = next((t for t in (_template(a) for a in args) if t is not None), None)
            if message is None or len(message.strip("{} ")) < 4:
                continue
            message = re.sub(r"\s+", " ", message).strip()
            found.setdefault(str(path.relative_to(REPO)), set()).add(message)
    return {module: sorted(messages) for module, messages in sorted(found.items())}


def render_block(messages: list[str]) -> str:
    return "\n".join(f"- `{m.replace('`', chr(39))}`" for m in messages)


_BLOCK = re.compile(r"(<!-- messages: (?P<module>\S+) -->\n)(?P<body>.*?)(\n<!-- end -->)", re.S)


def refresh(text: str, catalogue: dict[str, list[str]]) -> str:
    def replace(match: re.Match[str]) -> str:
        module = match["module"]
        return match.group(1) + render_block(catalogue.get(module, [])) + match.group(4)

    return _BLOCK.sub(replace, text)


def documented_modules(text: str) -> list[str]:
    return [m["module"] for m in _BLOCK.finditer(text)]


def main() -> None:
    catalogue = collect()
    if "--write" in sys.argv:
        text = CATALOGUE.read_text(encoding="utf-8")
        missing = [m for m in catalogue if m not in documented_modules(text)]
        for module in missing:
            text += f"\n## {module}\n\nTODO: what causes these and what to do.\n\n<!-- messages: {module} -->\n\n<!-- end -->\n"
        CATALOGUE.write_text(refresh(text, catalogue), encoding="utf-8")
        print(f"{CATALOGUE}: {sum(map(len, catalogue.values()))} messages in {len(catalogue)} modules")
        return
    for module, messages in catalogue.items():
        print(f"## {module}")
        print(render_block(messages))


if __name__ == "__main__":
    main()
