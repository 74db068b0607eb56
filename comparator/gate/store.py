"""A baseline store: a directory (or any mounted path) holding the gate's baselines.

Layout::

    STORE/CURRENT                 one line: the name of the current baseline under baselines/
    STORE/baselines/<name>/       complete copies of promoted runs (the last N are kept);
                                  <name> = sequence number, promotion time, run directory name
    STORE/history.jsonl           what each gate run measured (comparator/gate/history.py)
    STORE/.staging/               copies in progress (a killed promotion leaves them; cleared later)

Promotion never exposes half a baseline: the run is copied under ``.staging/``, renamed
into ``baselines/`` in one step, and only then does ``CURRENT`` (replaced atomically)
point at it. Old baselines are renamed away before they are deleted. A promotion killed
at any point leaves ``CURRENT`` naming a complete baseline: the old one or the new one.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import time
from dataclasses import dataclass

from comparator.errors import GateError

POINTER_FILE = "CURRENT"
BASELINES_DIR = "baselines"
STAGING_DIR = ".staging"
HISTORY_FILE = "history.jsonl"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True, kw_only=True)
class Store:
    path: str

    @property
    def baselines_dir(self) -> str:
        return os.path.join(self.path, BASELINES_DIR)

    @property
    def history_path(self) -> str:
        return os.path.join(self.path, HISTORY_FILE)

    def baselines(self) -> list[str]:
        """Names of the complete baselines, oldest first (names start with a sequence number)."""
        try:
            return sorted(e for e in os.listdir(self.baselines_dir) if _NAME.match(e))
        except FileNotFoundError:
            return []

    def current_name(self) -> str:
        pointer = os.path.join(self.path, POINTER_FILE)
        try:
            with open(pointer, encoding="utf-8") as handle:
                name = handle.read().strip()
        except FileNotFoundError:
            raise GateError(f"{self.path}: the store has no baseline yet ({POINTER_FILE} is missing); "
                            "seed it with: dumpcmp gate init STORE RUN") from None
        except OSError as exc:
            raise GateError(f"{pointer}: cannot read the store's pointer file ({exc.strerror})") from None
        if not _NAME.match(name):
            raise GateError(f"{pointer}: does not name a baseline ({name[:40]!r}); "
                            f"write one of {', '.join(self.baselines()) or '(none)'} into it")
        if not os.path.isdir(os.path.join(self.baselines_dir, name)):
            raise GateError(f"{pointer}: names baseline {name!r}, which is missing from {self.baselines_dir}; "
                            f"write one of {', '.join(self.baselines()) or '(none)'} into it, "
                            "or seed a new one with: dumpcmp gate init STORE RUN")
        return name

    def current(self) -> str:
        """The path of the current baseline run; raises GateError when there is none."""
        return os.path.join(self.baselines_dir, self.current_name())

    def check_writable(self) -> None:
        """The gate writes history (and promotes): fail before comparing anything if it cannot."""
        if not os.path.isdir(self.path):
            raise GateError(f"{self.path}: the baseline store does not exist; "
                            "create it with: dumpcmp gate init STORE RUN")
        probe = os.path.join(self.path, f".write-test-{os.getpid()}")
        try:
            with open(probe, "w", encoding="utf-8"):
                pass
            os.unlink(probe)
        except OSError as exc:
            raise GateError(f"{self.path}: the baseline store is not writable ({exc.strerror}); "
                            "mount it read-write or give another --store") from None

    def promote(self, run: str, *, keep: int, name: str | None = None) -> str:
        """Make a copy of ``run`` the current baseline, keeping the last ``keep``; returns its name."""
        if keep < 1:
            raise GateError(f"--keep {keep}: keep at least 1 baseline")
        os.makedirs(self.baselines_dir, exist_ok=True)
        staging_root = os.path.join(self.path, STAGING_DIR)
        os.makedirs(staging_root, exist_ok=True)
        self._clear_staging(staging_root)
        name = name or _unique_name(self.baselines(), os.path.basename(os.path.normpath(run)))
        staging = os.path.join(staging_root, f"{name}.{os.getpid()}")
        try:
            shutil.copytree(run, staging, symlinks=False)
        except (OSError, shutil.Error) as exc:
            shutil.rmtree(staging, ignore_errors=True)
            raise GateError(f"cannot copy {run} into the store {self.path} ({exc}); is the store full?") from None
        final = os.path.join(self.baselines_dir, name)
        os.rename(staging, final)  # complete, or not there at all
        _fsync_dir(self.baselines_dir)
        self._point_to(name)
        self._prune(keep, current=name)
        return name

    def _point_to(self, name: str) -> None:
        pointer = os.path.join(self.path, POINTER_FILE)
        tmp = f"{pointer}.tmp-{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(name + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, pointer)
        _fsync_dir(self.path)

    def _prune(self, keep: int, *, current: str) -> None:
        names = self.baselines()
        old = [n for n in names if n != current][: max(0, len(names) - keep)]
        staging_root = os.path.join(self.path, STAGING_DIR)
        for name in old:
            # Renamed out of baselines/ first: a kill mid-delete never leaves half a baseline listed.
            doomed = os.path.join(staging_root, f"{name}.deleted-{os.getpid()}")
            with contextlib.suppress(OSError):
                os.rename(os.path.join(self.baselines_dir, name), doomed)
                shutil.rmtree(doomed, ignore_errors=True)

    @staticmethod
    def _clear_staging(staging_root: str) -> None:
        """What killed promotions left behind (never a baseline: those live in baselines/)."""
        for entry in os.listdir(staging_root):
            shutil.rmtree(os.path.join(staging_root, entry), ignore_errors=True)


def _unique_name(existing: list[str], run_name: str) -> str:
    """``000012-20261201T031700Z-tonight``: a sequence number first, so that names sort in promotion order
    (pruning keeps the newest) even for promotions within one second."""
    numbers = [int(name.split("-", 1)[0]) for name in existing if name.split("-", 1)[0].isdigit()]
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", run_name).strip("-.")[:40] or "run"
    return f"{max(numbers, default=0) + 1:06d}-{stamp}-{slug}"


def _fsync_dir(path: str) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def open_store(path: str | os.PathLike[str]) -> Store:
    return Store(path=os.path.abspath(os.fspath(path)))
