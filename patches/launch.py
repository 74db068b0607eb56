"""``dumpcmp run``: start any command with dumping on and patches in every process.

The library half of the command: :func:`prepare_run` validates everything a user can
get wrong (patch files, the filter, the directory) before anything starts, and
returns the environment; :func:`run_command` starts the command with it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Iterator, Literal, Mapping

from dumper.config import MODES, check_user_settings, launcher_run_id
from dumper.errors import ConfigError
from dumper.filters import parse_filter
from dumper.online import validate_baseline
from patches.bootstrap import PATCH_ENV, python_path_with_bootstrap
from patches.check import check_patch_files
from patches.errors import PatchError
from patches.presets import resolve_patch_path
from patches.run_dir import prepare_directory


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    command: tuple[str, ...]
    dir: str
    patch_files: tuple[str, ...] = ()
    mode: Literal["tensor", "stats"] = "tensor"
    filter: str = ""
    overwrite: bool = False
    check_patches: bool = True  # validate targets and anchors against the installed source first
    against: str | None = None  # online divergence: baseline run to compare stats with (dumper/online.py)
    escalate_steps: int = 2
    online_rtol: float | None = None
    extra_env: Mapping[str, str] = field(default_factory=dict)
    # The run id every node of a multi-node run shares (each node runs its own
    # `dumpcmp run`); None: the launcher's (Slurm) or a fresh one.
    run_id: str | None = None
    output: str | None = None  # a file for the command's stdout and stderr (default: inherited)

    def __post_init__(self) -> None:
        if not self.command:
            raise ConfigError("no command to run; put it after '--', e.g. dumpcmp run --dir RUN -- python serve.py")
        if self.mode not in MODES:
            raise ConfigError(f"unknown dump mode {self.mode!r}; valid modes: {', '.join(MODES)}")
        if self.against is not None and self.mode != "tensor":
            raise ConfigError("--against needs --mode tensor: the run writes tensor data from the first divergence")
        if self.run_id is not None and (not self.run_id or len(self.run_id) > 64
                                        or any(not (c.isalnum() or c in "-_.") for c in self.run_id)):
            raise ConfigError(f"--run-id {self.run_id!r}: use 1-64 letters, digits, '-', '_' or '.'")
        if not 1 <= self.escalate_steps <= 1 << 20:
            raise ConfigError(f"--escalate-steps {self.escalate_steps} must be between 1 and {1 << 20}")
        if self.online_rtol is not None and not (0 <= self.online_rtol < float("inf")):
            raise ConfigError(f"--online-rtol {self.online_rtol} is not a tolerance; use a finite number >= 0, "
                              "e.g. --online-rtol 1e-3")


def default_run_dir() -> str:
    return os.path.abspath(time.strftime("dumpcmp-run-%Y%m%d-%H%M%S"))


def prepare_run(config: RunConfig, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Validate the run's inputs, prepare its directory, and return the command's environment."""
    patch_paths = [resolve_patch_path(path) for path in config.patch_files]
    if patch_paths:
        _validate_patches(patch_paths, check=config.check_patches)
    parse_filter(config.filter)  # raises FilterSyntaxError with a clear message
    against = validate_baseline(config.against) if config.against is not None else None
    run_dir = os.path.abspath(config.dir)
    prepare_directory(run_dir, overwrite=config.overwrite)
    source = os.environ if environ is None else environ
    check_user_settings(source)
    # NOTE: the settings this run decides (directory, mode, run id, filter, ...) come
    # from its options; the user's other DUMPCMP_* settings (queue size, ...) pass through.
    env = {k: v for k, v in source.items() if not k.startswith("DUMPCMP_") or k not in RUN_OWNED_ENV}
    env.update(
        DUMPCMP_DIR=run_dir,
        DUMPCMP_MODE=config.mode,
        DUMPCMP_RUN_ID=config.run_id or launcher_run_id(source) or uuid.uuid4().hex[:12],
        DUMPCMP_COMMAND="\x1f".join(config.command),
    )
    if config.filter.strip():
        env["DUMPCMP_FILTER"] = config.filter
    if against is not None:
        env.update(DUMPCMP_AGAINST=against, DUMPCMP_ESCALATE_STEPS=str(config.escalate_steps))
        if config.online_rtol is not None:
            env["DUMPCMP_ONLINE_RTOL"] = repr(config.online_rtol)
    if patch_paths:
        env[PATCH_ENV] = os.pathsep.join(patch_paths)
    env["PYTHONPATH"] = python_path_with_bootstrap(env.get("PYTHONPATH"))
    env.update(config.extra_env)
    return env


RUN_OWNED_ENV = frozenset({
    "DUMPCMP_DIR", "DUMPCMP_MODE", "DUMPCMP_RUN_ID", "DUMPCMP_COMMAND", "DUMPCMP_FILTER", "DUMPCMP_OVERWRITE",
    "DUMPCMP_AGAINST", "DUMPCMP_ESCALATE_STEPS", "DUMPCMP_ONLINE_RTOL", PATCH_ENV,
})


def run_command(config: RunConfig) -> int:
    """Run the command as configured; returns its exit code (128 + N when killed by signal N).

    The command leads its own process group, and SIGINT, SIGTERM, SIGHUP and SIGQUIT
    sent to dumpcmp are passed on to that whole group (an engine's workers included);
    dumpcmp then waits for the command, so that a supervisor stopping ``dumpcmp run``
    stops the engine too, instead of leaving it running orphaned.
    """
    env = prepare_run(config)
    log = open(config.output, "w", encoding="utf-8") if config.output is not None else None
    try:
        # Its own process group, so that signals can be passed to all of it (see below).
        own_group = {"process_group": 0} if sys.version_info >= (3, 11) else {"preexec_fn": os.setpgrp}
        process = subprocess.Popen(list(config.command), env=env, stdout=log,
                                   stderr=subprocess.STDOUT if log else None, **own_group)
    except FileNotFoundError:
        raise ConfigError(f"command not found: {config.command[0]}") from None
    except PermissionError:
        raise ConfigError(f"command is not executable: {config.command[0]}") from None
    finally:
        if log is not None:
            log.close()  # the child holds its own descriptor
    with _forward_signals(process.pid), _terminal_to(process.pid):
        code = process.wait()
    return 128 - code if code < 0 else code


_FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)


@contextlib.contextmanager
def _forward_signals(group: int) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return

    def forward(signum: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, signum)

    saved = {sig: signal.signal(sig, forward) for sig in _FORWARDED}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def _terminal_to(group: int) -> Iterator[None]:
    """Make the command's group the terminal's foreground (as a shell does), and take it back.

    Ctrl-C then reaches the command directly, and a command reading the terminal is not
    stopped for reading from a background group.
    """
    fd = None
    with contextlib.suppress(OSError):
        if sys.stdin.isatty() and os.tcgetpgrp(sys.stdin.fileno()) == os.getpgrp():
            fd = sys.stdin.fileno()
    if fd is None:
        yield
        return
    saved = signal.signal(signal.SIGTTOU, signal.SIG_IGN)  # taking the terminal back from the background
    try:
        with contextlib.suppress(OSError):
            os.tcsetpgrp(fd, group)
        yield
    finally:
        with contextlib.suppress(OSError):
            os.tcsetpgrp(fd, os.getpgrp())
        signal.signal(signal.SIGTTOU, saved)


def _validate_patches(paths: list[str], *, check: bool) -> None:
    if not check:
        from patches.spec import load_patch_file

        for path in paths:
            load_patch_file(path)
        return
    for result in check_patch_files(paths):
        if not result:
            raise PatchError(result.problems[0])
