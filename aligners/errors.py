"""The aligners' user errors (all DumpcmpError: one line on stderr, exit 2 from the CLI)."""

from __future__ import annotations

from dumper.errors import DumpcmpError


class AlignerError(DumpcmpError):
    """Unknown aligner, or an aligner that cannot align the tensors it was given."""


class MissingMetadataError(AlignerError):
    """A token aligner needs token metadata (seq lens, positions, request ids) a run did not dump."""


class AxisAlignmentError(AlignerError):
    """The baseline's and the target's dims cannot be reconciled by a permute or reshape."""
