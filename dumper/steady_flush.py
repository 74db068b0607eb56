"""Steady write-back of the data files as the writer writes them (``DUMPCMP_FLUSH_MB``).

Without it the kernel keeps gigabytes of a capture dirty in the page cache and writes
them when it sees fit: ``close()`` returns with the data not on disk, and an
``os.sync()`` after it took a third of a sustained capture's time (issue 17).

Here, on Linux, every ``_CHUNK`` bytes written start their write-back at once
(``sync_file_range(SYNC_FILE_RANGE_WRITE)``: queued, not waited for), so the disk works
while the engine runs. Data more than ``lag_bytes`` behind the newest byte written is
waited for (usually long done) and dropped from the page cache
(``posix_fadvise(POSIX_FADV_DONTNEED)``): the writer runs ahead of the disk by at
most ``lag_bytes``, and that is all ``close()`` can leave dirty. Elsewhere, whole
files that fall ``lag_bytes`` behind are ``fdatasync``'d instead.

NOTE: the dumper must never break the engine: the first failure of any of these calls
(a file system that refuses them, ...) logs one warning and turns flushing off for
this writer; the data files are the same bytes either way.
"""

from __future__ import annotations

import collections
import logging
import os
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

# Bytes written between two write-back requests (smaller when the lag is small).
_CHUNK = 32 << 20
# Linux only (getattr: the type checker may check for another platform).
_SYNC_RANGE = getattr(os, "sync_file_range", None)
_START = getattr(os, "SYNC_FILE_RANGE_WRITE", 2)
_WAIT = getattr(os, "SYNC_FILE_RANGE_WAIT_BEFORE", 1) | _START | getattr(os, "SYNC_FILE_RANGE_WAIT_AFTER", 4)


@dataclass
class _File:
    """A data file whose pages are not all on disk yet; the writer's descriptor is closed, this one is ours."""

    fd: int
    ranges: int = 0  # requested ranges not yet waited for
    closed_by_writer: bool = False


@dataclass
class _Range:
    file: _File
    offset: int
    length: int


@dataclass
class SteadyFlush:
    """Per writer: call ``begin``, ``wrote`` after each write, ``end`` before the writer closes its descriptor."""

    lag_bytes: int  # 0: off
    enabled: bool = field(init=False)
    _pending: collections.deque[_Range] = field(init=False, default_factory=collections.deque)
    _pending_bytes: int = field(init=False, default=0)
    _file: _File | None = field(init=False, default=None)
    _requested_to: int = field(init=False, default=0)  # offset of the current file requested so far

    def __post_init__(self) -> None:
        self.enabled = self.lag_bytes > 0
        self._chunk = max(4096, min(_CHUNK, self.lag_bytes // 4))

    def begin(self, fd: int) -> None:
        if not self.enabled:
            return
        self._guarded(self._begin, fd)

    def wrote(self, end: int) -> None:
        """The current file holds ``end`` bytes now."""
        if self.enabled and self._file is not None and end - self._requested_to >= self._chunk:
            self._guarded(self._request, self._file, end)

    def end(self, end: int) -> None:
        """The current file is complete at ``end`` bytes; the writer is about to close its descriptor."""
        if self.enabled and self._file is not None:
            self._guarded(self._end, self._file, end)

    def close(self) -> None:
        """Forget what is pending (the kernel writes it back on its own); close our descriptors."""
        self._drop_current()
        while self._pending:
            self._release(self._pending.popleft())
        self._pending_bytes = 0

    def _drop_current(self) -> None:
        """The current file is done with (complete, or its write failed)."""
        if self._file is not None:
            self._file.closed_by_writer = True
            if self._file.ranges == 0:
                _close(self._file.fd)
        self._file = None

    # -------------------------------------------------------------------------------------
    def _begin(self, fd: int) -> None:
        self._drop_current()  # a file whose write failed half-way never reached end()
        self._file = _File(fd=os.dup(fd))
        self._requested_to = 0

    def _request(self, file: _File, end: int) -> None:
        offset, length = self._requested_to, end - self._requested_to
        if length <= 0:
            return
        if _SYNC_RANGE is not None:
            _SYNC_RANGE(file.fd, offset, length, _START)
        file.ranges += 1
        self._pending.append(_Range(file, offset, length))
        self._pending_bytes += length
        self._requested_to = end
        while self._pending and self._pending_bytes - self._pending[0].length >= self.lag_bytes:
            self._settle(self._pending.popleft())

    def _end(self, file: _File, end: int) -> None:
        self._request(file, end)
        self._drop_current()

    def _settle(self, pending: _Range) -> None:
        """Wait until ``pending`` is on disk, then drop it from the page cache."""
        self._pending_bytes -= pending.length
        try:
            if _SYNC_RANGE is not None:
                _SYNC_RANGE(pending.file.fd, pending.offset, pending.length, _WAIT)
            elif pending.file.ranges == 1:  # the file's last range: all of it, at once
                getattr(os, "fdatasync", os.fsync)(pending.file.fd)  # macOS has only fsync
            if hasattr(os, "posix_fadvise"):
                os.posix_fadvise(pending.file.fd, pending.offset, pending.length, os.POSIX_FADV_DONTNEED)
        finally:
            self._release(pending)

    def _release(self, pending: _Range) -> None:
        pending.file.ranges -= 1
        if pending.file.ranges == 0 and pending.file.closed_by_writer:
            _close(pending.file.fd)

    def _guarded(self, action, *arguments: Any) -> None:
        try:
            action(*arguments)
        except Exception as exc:  # noqa: BLE001 - the engine must never see it; the data is written anyway
            self.enabled = False
            log.warning("dumpcmp: steady flush of data files failed (%s: %s); turned off for this run "
                        "(DUMPCMP_FLUSH_MB=0 turns it off from the start)", type(exc).__name__, exc)
            self.close()


def _close(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass
