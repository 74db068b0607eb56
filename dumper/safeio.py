"""Opening files a user or another team handed us: regular files only, bounded, UTF-8.

Every file dumpcmp reads (a run's JSON, index and data files, thresholds, name maps,
patch files, a baseline's index) goes through :func:`open_regular`:

- it is opened with ``O_NONBLOCK`` (a FIFO does not block the open) and refused
  unless ``fstat`` says it is a regular file (a FIFO, device, socket or directory
  would hang a read or never end);
- for a run's files, ``root`` makes it refuse a path that resolves (through a
  symbolic link) outside the run;
- its size is checked against ``limit`` before anything is read.
"""

from __future__ import annotations

import io
import os
import stat

from dumper.errors import DumpcmpError, RunFormatError

# Limits by kind of file: far above what dumpcmp writes, far below what would hurt.
JSON_LIMIT = 16 << 20  # run.json, rank.json, a graft plan (a few KB when written by us)
INDEX_LIMIT = 4 << 30  # index.jsonl: ~400 bytes a record; 10 million records
INDEX_LINE_LIMIT = 1 << 20  # one record's line (tags included); longer lines are not records
TEXT_LIMIT = 16 << 20  # YAML inputs: thresholds, name maps, patch files

_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def open_regular(path: str, *, limit: int, what: str = "file", root: str | None = None,
                 error: type[DumpcmpError] = RunFormatError) -> io.FileIO:
    """Open ``path`` for binary reading if it is a regular file of at most ``limit`` bytes.

    Raises ``error`` (one line) otherwise; ``FileNotFoundError`` passes through so that
    callers can tell a missing file from a bad one.
    """
    if root is not None:
        root_real = os.path.realpath(root)
        real = os.path.realpath(path)
        if os.path.commonpath([root_real, real]) != root_real:
            raise error(f"{path}: {what} leads outside the run directory {root} (a symbolic link to {real}); "
                        "a run's files must lie inside it")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    except FileNotFoundError:
        raise
    except IsADirectoryError:
        raise error(f"{path}: {what} is a directory, not a file") from None
    except OSError as exc:
        raise error(f"{path}: cannot open {what} ({exc.strerror})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise error(f"{path}: {what} is {_kind(info.st_mode)}, not a regular file")
        if info.st_size > limit:
            raise error(f"{path}: {what} is {info.st_size} bytes, more than such a file may hold ({limit} bytes)")
        os.set_blocking(fd, True)
        return io.FileIO(fd, "rb", closefd=True)
    except BaseException:
        os.close(fd)
        raise


def read_bytes(path: str, *, limit: int, what: str = "file", root: str | None = None,
               error: type[DumpcmpError] = RunFormatError) -> bytes:
    """The whole of a regular file of at most ``limit`` bytes (it may not grow past it while read)."""
    with open_regular(path, limit=limit, what=what, root=root, error=error) as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise error(f"{path}: {what} grew past {limit} bytes while being read")
    return data


def read_text(path: str, *, limit: int = TEXT_LIMIT, what: str = "file", root: str | None = None,
              error: type[DumpcmpError] = RunFormatError) -> str:
    """A regular file's text, which must be UTF-8."""
    data = read_bytes(path, limit=limit, what=what, root=root, error=error)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{path}: {what} is not UTF-8 text (byte {exc.start}: {data[exc.start:exc.start + 1]!r}); "
                    "save it as UTF-8") from None
