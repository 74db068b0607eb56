"""Runs written by other dumpers (SGLang's ``.pt`` directories); see the engines issue."""

from __future__ import annotations


def open_foreign_run(path: str):
    """Return a Run for a directory written by another dumper, or None if none applies."""
    return None
