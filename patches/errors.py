"""Errors a patch file can cause; all are :class:`~dumper.errors.DumpcmpError` (CLI exit 2)."""

from __future__ import annotations

from dumper.errors import DumpcmpError


class PatchError(DumpcmpError):
    """Base class of patch problems."""


class PatchFileError(PatchError):
    """A patch file is unreadable, not valid YAML, or breaks the schema (keys, types, code syntax)."""


class PatchTargetError(PatchError):
    """A target names a module, class or function that does not exist (or cannot be patched)."""


class PatchAnchorError(PatchError):
    """A ``match`` anchor occurs zero times or more than once in its function."""


class PatchApplyError(PatchError):
    """The edited function could not replace the original (e.g. its closure changed)."""
