"""Apply patch files to live functions, now or when their module is imported.

``with apply_patches(["my.yaml"]):`` patches every target whose module is already
imported and installs an import hook (a ``sys.meta_path`` finder that wraps the
loader's ``exec_module``) for the others. Patching swaps ``function.__code__``, so
bound methods and every other existing reference see the patched code. Leaving the
block restores the original code objects and removes the hook.

Targets applied together (all those already imported at ``install()``, or all those
of one module at its import) are applied all or nothing: every new code object is
built before any function is touched.
"""

from __future__ import annotations

import difflib
import importlib.abc
import inspect
import logging
import os
import sys
import threading
import types
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from dumper import dumper
from patches.errors import PatchError, PatchTargetError
from patches.rewrite import compile_patched
from patches.source import FunctionSource, TargetLocation, live_function_source, locate_target
from patches.spec import DUMPER_GLOBAL, PatchFile, TargetPatch, load_patch_file

log = logging.getLogger(__name__)

_lock = threading.RLock()


@dataclass(eq=False)
class _PatchedFunction:
    function: types.FunctionType
    original_code: types.CodeType
    source: FunctionSource
    layers: list[tuple["Patcher", TargetPatch]] = field(default_factory=list)


# Every function this process has patched, by id (the entry keeps the function alive).
_patched: dict[int, _PatchedFunction] = {}
# How many patched functions use each module's globals (for removing DUMPER_GLOBAL).
_globals_users: dict[int, int] = {}
_active_patchers: list["Patcher"] = []


@dataclass(frozen=True, kw_only=True)
class _Pending:
    file: PatchFile
    patch: TargetPatch
    location: TargetLocation


class Patcher:
    """Applies patch files; ``install()``/``remove()``, or use it as a context manager."""

    def __init__(self, files: Iterable[PatchFile | str | os.PathLike[str]]) -> None:
        self.files: tuple[PatchFile, ...] = tuple(f if isinstance(f, PatchFile) else load_patch_file(f) for f in files)
        self._pending: dict[str, list[_Pending]] = {}
        self._touched: list[_PatchedFunction] = []
        self.applied: list[str] = []  # targets patched so far, in order
        self.installed = False

    # ----------------------------------------------------------------- lifecycle
    def install(self) -> "Patcher":
        if self.installed:
            return self
        items = [_Pending(file=f, patch=p, location=locate_target(p.target)) for f in self.files for p in f.patches]
        now = [item for item in items if _module_ready(item.location.module)]
        later = [item for item in items if not _module_ready(item.location.module)]
        with _lock:
            _apply_batch(self, now)
            for item in later:
                self._pending.setdefault(item.location.module, []).append(item)
            _active_patchers.append(self)
            if self._pending:
                _PatchFinder.ensure_installed()
            self.installed = True
        if later:
            log.debug("dumpcmp patches waiting for modules: %s", ", ".join(sorted(self._pending)))
        return self

    def remove(self) -> None:
        """Restore every function this patcher changed and stop waiting for imports."""
        with _lock:
            for entry in reversed(self._touched):
                _remove_layers(entry, self)
            self._touched.clear()
            self._pending.clear()
            if self in _active_patchers:
                _active_patchers.remove(self)
            if not any(p._pending for p in _active_patchers):
                _PatchFinder.uninstall()
            self.installed = False

    def __enter__(self) -> "Patcher":
        return self.install()

    def __exit__(self, *exc: object) -> None:
        self.remove()

    @property
    def waiting_for(self) -> tuple[str, ...]:
        """Modules whose import will apply more of this patcher's targets."""
        return tuple(sorted(self._pending))

    # ----------------------------------------------------------------- imports
    def _take_pending(self, module: str) -> list[_Pending]:
        return self._pending.pop(module, [])


def apply_patches(files: Iterable[PatchFile | str | os.PathLike[str]]) -> Patcher:
    """``with apply_patches(files):`` patch now and on import; restore on exit.

    Without ``with``, call ``.install()`` (the patches then stay for the process).
    """
    return Patcher(files)


def _module_ready(name: str) -> bool:
    module = sys.modules.get(name)
    if module is None:
        return False
    spec = getattr(module, "__spec__", None)
    # A module still executing its body is in sys.modules already; wait for its end.
    return not getattr(spec, "_initializing", False)


# --------------------------------------------------------------------- batches
def _apply_batch(owner: Patcher, items: Sequence[_Pending]) -> None:
    """Build every new code object first, then swap them all (all or nothing)."""
    if not items:
        return
    staged: dict[int, tuple[_PatchedFunction, list[tuple[Patcher, TargetPatch]]]] = {}
    for item in items:
        function, module_globals = _resolve(item.location)
        entry = _patched.get(id(function))
        if entry is None:
            entry = _PatchedFunction(function=function, original_code=function.__code__,
                                     source=live_function_source(function, module_globals=module_globals))
        _, layers = staged.setdefault(id(function), (entry, list(entry.layers)))
        layers.append((owner, item.patch))
    built = []
    for entry, layers in staged.values():
        code = compile_patched(entry.source, [patch for _, patch in layers])
        built.append((entry, layers, code))
    for entry, layers, code in built:
        entry.function.__code__ = code
        if not entry.layers:
            _patched[id(entry.function)] = entry
            _add_dumper_global(entry.function.__globals__)
        entry.layers = layers
        if entry not in owner._touched:
            owner._touched.append(entry)
    owner.applied.extend(item.patch.target for item in items)
    for item in items:
        log.info("dumpcmp: patched %s (%s)", item.patch.target, item.file.path)


def _remove_layers(entry: _PatchedFunction, owner: Patcher) -> None:
    remaining = [(p, patch) for p, patch in entry.layers if p is not owner]
    if remaining:
        entry.function.__code__ = compile_patched(entry.source, [patch for _, patch in remaining])
        entry.layers = remaining
        return
    entry.function.__code__ = entry.original_code
    entry.layers = []
    _patched.pop(id(entry.function), None)
    _drop_dumper_global(entry.function.__globals__)


def _add_dumper_global(module_globals: dict) -> None:
    key = id(module_globals)
    _globals_users[key] = _globals_users.get(key, 0) + 1
    module_globals[DUMPER_GLOBAL] = dumper


def _drop_dumper_global(module_globals: dict) -> None:
    key = id(module_globals)
    _globals_users[key] = _globals_users.get(key, 1) - 1
    if _globals_users[key] <= 0:
        del _globals_users[key]
        if module_globals.get(DUMPER_GLOBAL) is dumper:
            del module_globals[DUMPER_GLOBAL]


def _resolve(location: TargetLocation) -> tuple[types.FunctionType, dict]:
    """The live function a target names, unwrapped from decorators and descriptors."""
    module = sys.modules[location.module]
    target = location.target
    owner: object = module
    value: object = module
    for position, part in enumerate(location.attributes):
        if inspect.isclass(owner):
            if part not in vars(owner):
                if hasattr(owner, part):
                    definer = next((c for c in owner.__mro__ if part in vars(c)), None)
                    where = f"{definer.__module__}.{definer.__qualname__}.{part}" if definer else "a base class"
                    raise PatchTargetError(
                        f"target {target!r}: {owner.__qualname__} inherits {part!r} from {where}; "
                        "target the class that defines it (patching it there changes every subclass)"
                    )
                raise PatchTargetError(_missing_attribute(target, owner, part))
            value = vars(owner)[part]
        else:
            if not hasattr(owner, part):
                raise PatchTargetError(_missing_attribute(target, owner, part))
            value = getattr(owner, part)
        if position < len(location.attributes) - 1:
            owner = value
    if isinstance(value, (staticmethod, classmethod)):
        value = value.__func__
    elif isinstance(value, property):
        value = value.fget
    function = inspect.unwrap(value) if callable(value) else value
    if not isinstance(function, types.FunctionType):
        raise PatchTargetError(f"target {target!r} is a {type(function).__name__}, not a Python function; only functions and methods can be patched")
    return function, module.__dict__


def _missing_attribute(target: str, owner: object, part: str) -> str:
    name = getattr(owner, "__qualname__", None) or getattr(owner, "__name__", repr(owner))
    kind = "module" if isinstance(owner, types.ModuleType) else "class" if inspect.isclass(owner) else "object"
    close = difflib.get_close_matches(part, [n for n in dir(owner) if not n.startswith("__")], n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return f"target {target!r}: {kind} {name} has no attribute {part!r}{hint}"


# --------------------------------------------------------------------- import hook
def _on_module_executed(name: str) -> None:
    with _lock:
        work = [(patcher, patcher._take_pending(name)) for patcher in list(_active_patchers)]
        try:
            for patcher, items in work:
                _apply_batch(patcher, items)
        except PatchError as exc:
            # Engines sometimes catch import errors of model modules and go on without
            # the model; say it here too, so the failure cannot go unnoticed.
            print(f"dumpcmp: error: patching module {name} on import failed: {exc}", file=sys.stderr, flush=True)
            raise
        if not any(p._pending for p in _active_patchers):
            _PatchFinder.uninstall()


class _PatchFinder(importlib.abc.MetaPathFinder):
    """First on ``sys.meta_path`` while patches wait for modules; wraps their loaders."""

    _instance: "_PatchFinder | None" = None

    def __init__(self) -> None:
        self._busy = threading.local()

    @classmethod
    def ensure_installed(cls) -> None:
        if cls._instance is None:
            cls._instance = cls()
        if cls._instance not in sys.meta_path:
            sys.meta_path.insert(0, cls._instance)

    @classmethod
    def uninstall(cls) -> None:
        if cls._instance is not None and cls._instance in sys.meta_path:
            sys.meta_path.remove(cls._instance)

    def find_spec(self, fullname, path, target=None):
        if getattr(self._busy, "active", False):
            return None
        with _lock:
            wanted = any(fullname in p._pending for p in _active_patchers)
        if not wanted:
            return None
        self._busy.active = True
        try:
            spec = None
            for finder in sys.meta_path:
                if finder is self or not hasattr(finder, "find_spec"):
                    continue
                spec = finder.find_spec(fullname, path, target)
                if spec is not None:
                    break
        finally:
            self._busy.active = False
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        _wrap_exec_module(spec)
        return spec


def _wrap_exec_module(spec) -> None:
    loader = spec.loader
    original = loader.exec_module

    def exec_module(module: types.ModuleType) -> None:
        original(module)
        _on_module_executed(module.__name__)

    if not isinstance(loader, type) and hasattr(loader, "__dict__"):
        # A per-module loader instance (SourceFileLoader): shadow the method on it,
        # which keeps isinstance() checks on the loader true.
        loader.exec_module = exec_module
    else:
        spec.loader = _LoaderProxy(loader, exec_module)


class _LoaderProxy:
    def __init__(self, loader, exec_module) -> None:
        self._loader = loader
        self.exec_module = exec_module

    def __getattr__(self, name: str):
        return getattr(self._loader, name)
