"""A Ray cluster of several "nodes" on this machine, for tests: ``ray start`` each, small and quiet.

Each node is one ``ray start --block`` in its own process group (1 CPU, a small object
store, no dashboard), advertising the custom resources it is given. Teardown ends those
process groups only: ``ray stop`` would end every Ray process on the machine.
Authentication is Ray's token mode with a token of this cluster's own (in the
environment: the caller's, else a fresh one), so nothing is read from or written to ``~/.ray``.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from tests.helpers.procs import clean_env

RAY_CLI = [sys.executable, "-c", "from ray.scripts.scripts import main; main()"]
STARTED = "Ray runtime started"
OBJECT_STORE_BYTES = 80 * 1024 * 1024
PR_SET_PDEATHSIG = 1  # linux/prctl.h  # Ray's minimum is 75 MiB; results are small


@dataclass(frozen=True)
class LocalCluster:
    address: str  # the head's HOST:PORT
    env: dict[str, str]  # what a driver process needs in its environment to join (the token)


def cluster_auth() -> dict[str, str]:
    """Token authentication with a fresh token, for a cluster and its drivers' environments.

    NOTE: Ray reads these when first imported: a driver process sets them before that.
    """
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _end_with_parent() -> None:
    """In the child: SIGTERM when the test process dies, even killed (Linux), so no node outlives it."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _start(arguments: list[str], log: Path, env: dict[str, str], timeout: float = 90) -> subprocess.Popen[bytes]:
    with log.open("wb") as handle:
        process = subprocess.Popen([*RAY_CLI, "start", "--block", *arguments], env=env, stdout=handle,
                                   stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_end_with_parent)
    deadline = time.monotonic() + timeout
    while STARTED not in log.read_text(errors="replace"):
        if process.poll() is not None or time.monotonic() > deadline:
            _end(process)
            raise AssertionError(f"ray start {' '.join(arguments)} did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)
    return process


def _end(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the node's process group (``ray start --block`` stops its own processes), then SIGKILL
    to whatever of the group is left (raylet, workers)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=5)  # a graceful stop can take longer; a test cluster keeps no state
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=10)


@contextlib.contextmanager
def local_cluster(temp: Path, nodes: list[dict[str, float]]) -> Iterator[LocalCluster]:
    """A head and ``len(nodes) - 1`` workers on this machine, node ``i`` advertising ``nodes[i]``.

    ``temp`` holds the nodes' logs; Ray's own session directory is a short temporary one,
    removed at the end.
    """
    # NOTE: Ray's sockets live in its session directory, and a socket path has at most 107
    # bytes: pytest's temporary directories are too deep for it.
    sessions = tempfile.mkdtemp(prefix="ray-")
    auth = {key: os.environ[key] for key in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN") if key in os.environ} or cluster_auth()
    env = clean_env(**auth, RAY_USAGE_STATS_ENABLED="0")
    address = f"127.0.0.1:{_free_port()}"
    common = ["--num-cpus", "1", "--object-store-memory", str(OBJECT_STORE_BYTES), "--disable-usage-stats"]
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for index, resources in enumerate(nodes):
            # NOTE: the head's other ports default to fixed numbers (10001, 8265): free ones, so
            # that two test sessions on one machine do not collide.
            where = (["--head", "--port", address.split(":")[1], "--include-dashboard=false",
                      "--ray-client-server-port", str(_free_port()), "--dashboard-port", str(_free_port()),
                      "--temp-dir", sessions] if index == 0 else ["--address", address])
            processes.append(_start([*where, *common, "--resources", json.dumps(resources)],
                                    temp / f"node{index}.log", env))
        yield LocalCluster(address=address, env=auth)
    finally:
        for process in reversed(processes):
            _end(process)
        shutil.rmtree(sessions, ignore_errors=True)
