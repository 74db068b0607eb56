"""Errors the comparator raises for input a user can fix.

All derive from :class:`dumper.errors.DumpcmpError`, so the CLI turns each into one
line on stderr and exit code 2. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from dumper.errors import DimsSyntaxError as DimsSyntaxError  # re-exported: the grammar lives in dumper.dims
from dumper.errors import DumpcmpError

class ComparatorError(DumpcmpError):
    """Base class of the comparator's user errors."""

class OptionError(ComparatorError):
    """An option value is invalid (a step range, a regex, an aligner or format name)."""

class UnshardError(ComparatorError):
    """The shards of one logical tensor cannot be put back together.

    Raised per tensor: the comparison marks that tensor ``error`` and goes on.
    """

class ThresholdsError(ComparatorError):
    """A thresholds YAML file is unreadable or holds an invalid rule (message has file:line)."""

class CalibrateError(ComparatorError):
    """The runs given to ``dumpcmp calibrate`` cannot be calibrated on (too few, or they differ in tensors)."""

class NameMapError(ComparatorError):
    """A name-mapping YAML file is unreadable or invalid."""

class NothingUsableError(ComparatorError):
    """Every tensor failed to load: the runs' data is unusable (exit code 2)."""

class ComparabilityError(ComparatorError):
    """The two runs cannot be meaningfully compared: one run twice, or runs of different models."""

class GateError(ComparatorError):
    """The nightly gate's store, waivers or history are unusable (an unwritable store, a corrupt line...)."""

class ClusterError(ComparatorError):
    """``--executor ray`` cannot run: Ray is not installed, the cluster is unreachable, or it lost a task."""
