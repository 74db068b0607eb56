"""The dependency rules between our packages, kept by reading every import statement.

    dumper      imports none of ours (it runs inside the engine)
    aligners    imports only dumper
    patches     imports only dumper
    comparator  never imports patches or examples, except comparator/cli (the application layer)
    examples    never imports comparator.cli

and no two modules import each other, directly or round a loop, counting imports made
inside functions (a local import hides a cycle from Python, not from the design).
Imports under ``if TYPE_CHECKING:`` count for the rules but not for cycles: they never
run. The graph is read from the source with ``ast``, so nothing is imported to check it.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("dumper", "aligners", "patches", "comparator", "examples")


@dataclass(frozen=True)
class Import:
    importer: str  # module name, e.g. "comparator.judge.routing"
    imported: str  # the module of ours it names (a package's __init__ counts as the package)
    line: int
    type_only: bool  # under `if TYPE_CHECKING:`


def module_files(root: Path, packages: tuple[str, ...]) -> dict[str, Path]:
    modules: dict[str, Path] = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> list[Import]:
    """Every import of one of ours in ``path``, at any depth (functions, classes, branches)."""
    found: list[Import] = []
    is_package = path.name == "__init__.py"

    def resolve(name: str) -> str | None:
        # The longest known module that `name` starts with ("dumper.format.IndexRecord" -> "dumper.format").
        parts = name.split(".")
        for end in range(len(parts), 0, -1):
            candidate = ".".join(parts[:end])
            if candidate in modules:
                return candidate
        return None

    def add(name: str, node: ast.stmt, type_only: bool) -> None:
        target = resolve(name)
        if target is not None and target != module:
            found.append(Import(module, target, node.lineno, type_only))

    def visit(node: ast.AST, type_only: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                for statement in child.body:
                    visit_statement(statement, True)
                for statement in child.orelse:
                    visit_statement(statement, type_only)
            else:
                visit_statement(child, type_only)

    def visit_statement(node: ast.AST, type_only: bool) -> None:
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node, type_only)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".") if is_package else module.split(".")[:-1]
                package = package[: len(package) - node.level + 1]
                base = ".".join(package + ([node.module] if node.module else []))
            for alias in node.names:
                # `from comparator.report import json` names a module; `from dumper import dumper` an attribute.
                add(f"{base}.{alias.name}", node, type_only)
        visit(node, type_only)

    visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)), False)
    return found


def import_graph(root: Path = ROOT, packages: tuple[str, ...] = PACKAGES) -> list[Import]:
    modules = module_files(root, packages)
    return [edge for module, path in modules.items() for edge in imports_of(module, path, modules)]


def _top(module: str) -> str:
    return module.split(".")[0]


def layering_violations(edges: list[Import]) -> list[str]:
    allowed = {"dumper": {"dumper"}, "aligners": {"aligners", "dumper"}, "patches": {"patches", "dumper"}}
    problems = []
    for edge in edges:
        source, target = _top(edge.importer), _top(edge.imported)
        where = f"{edge.importer} (line {edge.line}) imports {edge.imported}"
        if source in allowed and target not in allowed[source]:
            problems.append(f"{where}: {source} may import only {', '.join(sorted(allowed[source]))}")
        in_cli = edge.importer == "comparator.cli" or edge.importer.startswith("comparator.cli.")
        if source == "comparator" and not in_cli and target in ("patches", "examples"):
            problems.append(f"{where}: only comparator.cli may import {target}")
        if source == "examples" and (edge.imported == "comparator.cli" or edge.imported.startswith("comparator.cli.")):
            problems.append(f"{where}: examples must not import the CLI")
    return problems


def import_cycles(edges: list[Import]) -> list[list[str]]:
    """Groups of modules that import each other at run time (strongly connected components)."""
    graph: dict[str, set[str]] = {}
    for edge in edges:
        graph.setdefault(edge.importer, set())
        graph.setdefault(edge.imported, set())
        if not edge.type_only:
            graph[edge.importer].add(edge.imported)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def connect(node: str) -> None:  # Tarjan's algorithm; the graph is a few hundred modules deep at most
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in sorted(graph[node]):
            if successor not in index:
                connect(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return cycles


# ----------------------------------------------------------------------------- the repository
def test_packages_keep_their_layers():
    edges = import_graph()
    assert any(edge.importer.startswith("comparator") for edge in edges)  # the graph was read at all
    assert layering_violations(edges) == []


def test_no_import_cycles_even_through_local_imports():
    assert import_cycles(import_graph()) == []


def test_importing_dumper_pulls_no_cli_or_heavy_libraries():
    code = (
        "import json, sys\n"
        "from dumper import dumper\n"
        "heavy = ('typer', 'rich', 'yaml', 'matplotlib', 'torch', 'numpy', 'safetensors', 'click')\n"
        "print(json.dumps(sorted(m for m in heavy if m in sys.modules)))\n"
    )
    env = {key: value for key, value in os.environ.items() if not key.startswith("DUMPCMP_")}
    env["PYTHONPATH"] = str(ROOT)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []


def test_ray_is_imported_only_when_asked_for():
    """Ray is an optional extra (dumpcmp[ray]): the core, the CLI and the Ray executor's module import without it."""
    code = (
        "import json, sys\n"
        "from dumper import dumper\n"
        "import comparator, comparator.pipeline, comparator.cli.app, comparator.cli.compare\n"
        "import comparator.ray_executor, comparator.locality\n"
        "print(json.dumps(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.'))))\n"
    )
    env = {key: value for key, value in os.environ.items() if not key.startswith("DUMPCMP_")}
    env["PYTHONPATH"] = str(ROOT)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []


# ----------------------------------------------------------------------------- the checker itself
def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_checker_finds_a_cycle_hidden_in_a_function(tmp_path):
    _write(tmp_path, {
        "dumper/__init__.py": "",
        "dumper/a.py": "from dumper.b import thing\n",
        "dumper/b.py": "def thing():\n    from dumper import a\n    return a\n",
        "dumper/c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from dumper.a import x\n",
        "dumper/d.py": "from . import c\n",
    })
    edges = import_graph(tmp_path, ("dumper",))
    assert import_cycles(edges) == [["dumper.a", "dumper.b"]]
    assert {(e.importer, e.imported, e.type_only) for e in edges} >= {
        ("dumper.c", "dumper.a", True), ("dumper.d", "dumper.c", False)}


@pytest.mark.parametrize(("files", "expected"), [
    ({"dumper/x.py": "def f():\n    import comparator.pipeline\n"},
     "dumper.x (line 2) imports comparator.pipeline: dumper may import only dumper"),
    ({"patches/x.py": "from aligners import base\n"},
     "patches.x (line 1) imports aligners.base: patches may import only dumper, patches"),
    ({"comparator/report/x.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import patches.apply\n"},
     "comparator.report.x (line 3) imports patches.apply: only comparator.cli may import patches"),
    ({"examples/x.py": "from ..comparator.cli import app\n"},
     "examples.x (line 1) imports comparator.cli.app: examples must not import the CLI"),
])
def test_checker_reports_each_rule(tmp_path, files, expected):
    skeleton = {f"{package}/__init__.py": "" for package in PACKAGES}
    skeleton.update({"comparator/cli/__init__.py": "", "comparator/cli/app.py": "", "comparator/pipeline.py": "",
                     "comparator/report/__init__.py": "", "patches/apply.py": "", "aligners/base.py": ""})
    _write(tmp_path, {**skeleton, **files})
    assert layering_violations(import_graph(tmp_path)) == [expected]


def test_cli_may_import_patches_and_examples(tmp_path):
    _write(tmp_path, {f"{package}/__init__.py": "" for package in PACKAGES} | {
        "comparator/cli/__init__.py": "", "comparator/cli/run.py": "import patches\nimport examples\n"})
    assert layering_violations(import_graph(tmp_path)) == []
