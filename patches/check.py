"""``dumpcmp patch check``: validate patch files against the installed source, importing nothing.

Each target's module file is found on disk (see :mod:`patches.source`), parsed, and the
function's text is patched and compiled exactly as it would be at run time, so a
check that passes here fails at run time only if the installed source differs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable

from patches.errors import PatchError
from patches.rewrite import compile_patched
from patches.source import locate_target, static_function_source
from patches.spec import PatchFile, TargetPatch, load_patch_file


@dataclass(frozen=True, kw_only=True)
class TargetCheck:
    target: str
    file: str | None  # the module file the target was found in
    problem: str | None

    def __bool__(self) -> bool:
        return self.problem is None


@dataclass(frozen=True, kw_only=True)
class FileCheck:
    """The result for one patch file; true when it has no problem."""

    path: str
    targets: tuple[TargetCheck, ...]
    problem: str | None = None  # the file itself could not be loaded
    edits: int = 0

    def __bool__(self) -> bool:
        return self.problem is None and all(self.targets)

    @property
    def problems(self) -> tuple[str, ...]:
        found = [self.problem] if self.problem else []
        return tuple(found + [t.problem for t in self.targets if t.problem])


def check_patch_file(path: str | os.PathLike[str] | PatchFile) -> FileCheck:
    try:
        patch_file = path if isinstance(path, PatchFile) else load_patch_file(path)
    except PatchError as exc:
        return FileCheck(path=os.fspath(path), targets=(), problem=str(exc))  # type: ignore[arg-type]
    # Several entries may patch one function: check them layered, as they apply.
    by_target: dict[str, list[TargetPatch]] = {}
    for patch in patch_file.patches:
        by_target.setdefault(patch.target, []).append(patch)
    results = []
    for target, layers in by_target.items():
        results.append(check_target(target, layers))
    return FileCheck(path=patch_file.path, targets=tuple(results), edits=patch_file.edit_count)


def check_target(target: str, layers: list[TargetPatch]) -> TargetCheck:
    file = None
    try:
        location = locate_target(target)
        file = location.file
        source = static_function_source(location)
        compile_patched(source, layers, live=False)
    except PatchError as exc:
        message = str(exc)
        if not message.startswith(layers[0].file):
            # Target errors do not know the patch file: say where the target is named.
            message = f"{layers[0].location}: {message}"
        return TargetCheck(target=target, file=file, problem=message)
    return TargetCheck(target=target, file=file, problem=None)


def check_patch_files(paths: Iterable[str | os.PathLike[str] | PatchFile]) -> list[FileCheck]:
    return [check_patch_file(path) for path in paths]


def patched_sources(path: str | os.PathLike[str]) -> list[tuple[str, str]]:
    """``(target, patched function text)`` for each target of a valid patch file."""
    from patches.rewrite import patched_source_text

    patch_file = load_patch_file(path)
    by_target: dict[str, list[TargetPatch]] = {}
    for patch in patch_file.patches:
        by_target.setdefault(patch.target, []).append(patch)
    return [(target, patched_source_text(static_function_source(locate_target(target)), layers))
            for target, layers in by_target.items()]
