"""Run real Python processes that dump into a run directory (tests only)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def clean_env(**extra: str) -> dict[str, str]:
    """The test's environment without any DUMPCMP_* leaking in, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DUMPCMP_")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(extra)
    return env


def run_python(code: str, *, env: dict[str, str] | None = None, timeout: float = 120, check: bool = True,
               cwd: str | os.PathLike[str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``code`` (dedented) in a fresh interpreter; raise with its output if it fails."""
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env if env is not None else clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"child failed with {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


def dump_run(run_dir: os.PathLike[str] | str, code: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` with dumping on into ``run_dir`` (``from dumper import dumper`` works in it)."""
    return run_python(code, env=clean_env(DUMPCMP_DIR=str(run_dir), **env))


def torchrun_like(run_dir: os.PathLike[str] | str, code: str, *, world_size: int, timeout: float = 180,
                  **env: str) -> list[subprocess.CompletedProcess[str]]:
    """Start ``world_size`` processes with RANK/WORLD_SIZE/MASTER_* set, as torchrun would.

    ``code`` typically calls ``torch.distributed.init_process_group("gloo")``.
    """
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    procs = []
    for rank in range(world_size):
        child_env = clean_env(
            DUMPCMP_DIR=str(run_dir), RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
            MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1",
            # NOTE: a rank once died of SIGABRT at exit, once in many runs: if it happens
            # again, every thread's Python stack lands in the assertion message below.
            PYTHONFAULTHANDLER="1", **env,
        )
        procs.append(subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], env=child_env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=timeout)
        results.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    for rank, result in enumerate(results):
        if result.returncode != 0:
            raise AssertionError(f"rank {rank} failed with {result.returncode}\nstderr:\n{result.stderr}")
    return results
