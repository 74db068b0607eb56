"""The one root of every error a user can cause.

The library raises these; the CLI catches ``DumpcmpError`` once and prints its
message on one line (exit code 2). Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class DumpcmpError(Exception):
    """Base class of errors caused by user input (paths, files, options)."""


class ConfigError(DumpcmpError):
    """A ``DUMPCMP_*`` setting or a configuration value is invalid."""


class FilterSyntaxError(ConfigError):
    """A dump filter expression could not be parsed."""


class RunNotFoundError(DumpcmpError):
    """A path that should hold a run does not, or holds no index."""


class RunFormatError(DumpcmpError):
    """A run's files are corrupt, truncated, or of an unknown schema version."""


class RunConflictError(DumpcmpError):
    """A dump directory already holds an earlier run's files."""


class DimsSyntaxError(DumpcmpError):
    """A dims annotation (``t h[tp]``, ``t h # tp:replicated``) could not be parsed."""
