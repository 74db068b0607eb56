"""Sticky tags (``with dumper.tags(layer=3):``) and suppressed sites, for the Dumper.

Functions of the owning :class:`dumper.api.Dumper` (split from dumper/api.py to keep it small).
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING, Any

from dumper.torch_state import compiling as _compiling

if TYPE_CHECKING:
    from dumper.api import Dumper

log = logging.getLogger("dumper.api")


class StickyTags(contextlib.ContextDecorator):
    """``with dumper.tags(layer=3):`` or ``@dumper.tags(layer=3)``."""

    def __init__(self, owner: "Dumper", tags: dict[str, Any]) -> None:
        self._owner = owner
        self._tags = tags
        self._saved: list[dict[str, Any]] = []

    def __enter__(self) -> "StickyTags":
        if _compiling():
            # Traced by torch.compile: the tags are set at runtime, by an operator of the graph.
            if self._owner.enabled:
                from dumper.compiled import trace_push_tags

                trace_push_tags(self._tags)
            return self
        local = self._owner._local
        current = getattr(local, "tags", {})
        self._saved.append(current)
        local.tags = {**current, **self._tags}
        return self

    def __exit__(self, *exc: object) -> None:
        if _compiling():
            if self._owner.enabled:
                from dumper.compiled import trace_pop_tags

                trace_pop_tags()
            return
        self._owner._local.tags = self._saved.pop()



class Suppressed(contextlib.ContextDecorator):
    """No dump is recorded inside (the tags of a patched function could not be evaluated)."""

    def __init__(self, owner: "Dumper") -> None:
        self._owner = owner

    def __enter__(self) -> "Suppressed":
        local = self._owner._local
        local.suppressed = getattr(local, "suppressed", 0) + 1
        return self

    def __exit__(self, *exc: object) -> None:
        self._owner._local.suppressed -= 1
