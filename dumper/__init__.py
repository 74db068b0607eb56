"""Runs inside the engine: the dump API, the writer, and the run format.

``from dumper import dumper`` gives the process-wide :class:`~dumper.api.Dumper`.
Importing this package reads ``DUMPCMP_*`` from the environment and imports
neither torch (until the first kept dump) nor typer, rich, matplotlib or yaml.
"""

from dumper.api import Dumper, dumper
from dumper.config import DumpConfig
from dumper.errors import DumpcmpError
from dumper.filters import DumpFilter, parse_filter

dumper.configure_from_env()

__all__ = ["Dumper", "DumpConfig", "DumpFilter", "DumpcmpError", "dumper", "parse_filter"]
