"""The process-wide dumper, for modules that must reach it without importing dumper.api.

dumper/compiled.py's graph operators drive the process-wide dumper at runtime, and
dumper.api imports compiled (when dynamo traces a dump): compiled importing dumper.api
back would close an import cycle. dumper.api puts its instance here when it is created.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dumper.api import Dumper

process_dumper: Dumper | None = None
