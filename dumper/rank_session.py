"""The writer side of a Dumper: claiming the rank directory, starting and closing the writer,
the collective trace, the exit hooks, and skipped records.

Functions of the owning :class:`dumper.api.Dumper` (split from dumper/api.py to keep it small).
"""

from __future__ import annotations

import atexit
import logging
import os
import socket
import sys
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any

from dumper.config import DumpConfig
from dumper.format import RankInfo
from dumper.rundir import claim_rank_dir

if TYPE_CHECKING:
    from dumper.api import Dumper
    from dumper.writer import RankWriter

log = logging.getLogger("dumper.api")


def start_writer(owner: "Dumper", info):
    from dumper.snapshot import Snapshotter

    with owner._lock:
        if owner._writer is not None:
            return owner._writer
        # NOTE: close() on another thread (an atexit while a daemon thread still dumps)
        # may be draining the previous writer: a second writer on the same rank
        # directory now would pick the same data file names. Wait for it to finish.
        owner._closed_writer.wait()
        config = owner._config
        if owner._rank_dir is not None and os.path.isdir(owner._rank_dir):
            return owner._reopen_writer(config, owner._rank_dir)
        if config.dir is None:  # dump() runs only while a directory is configured
            raise RuntimeError("dumpcmp: internal error: the writer started without a dump directory")
        run_dir = os.path.abspath(config.dir)
        run_id = config.run_id or owner._generated_run_id or uuid.uuid4().hex[:12]
        rank_dir, run_id = claim_rank_dir(run_dir, info, config, run_id)
        if config.run_id is None:
            # Children started from now on must join the run this process joined.
            os.environ["DUMPCMP_RUN_ID"] = run_id
        owner._snapshotter = Snapshotter(pool_bytes=config.queue_bytes)
        rank_info = RankInfo(
            rank=info.rank,
            world_size=info.world_size,
            pid=os.getpid(),
            host=socket.gethostname(),
            argv=list(sys.argv),
            run_id=run_id,
            start_time=time.time(),
            parallel={axis: a.to_json() for axis, a in info.axes.items()},
            status="running",
        )
        owner._rank_info = rank_info
        owner._rank_dir = rank_dir
        owner._write_fingerprint()
        if config.collectives:
            owner._start_collective_trace(rank_dir)
        return owner._reopen_writer(config, rank_dir)



def start_collective_trace(owner: "Dumper", rank_dir: str) -> None:
    if sys.modules.get("torch.distributed") is None:
        import torch.distributed  # noqa: F401 - torch is already imported by the engine here
    from dumper.collectives import CollectiveTracer, install

    try:
        if owner._collectives is None:
            owner._collectives = CollectiveTracer(owner=owner)
            install(owner._collectives)  # stays for the process's life; the tracer checks `enabled`
        owner._collectives.attach(rank_dir)
    except Exception as exc:  # noqa: BLE001 - the trace is optional; never break the engine
        owner._warn_once("collectives", f"dumpcmp: collective tracing off ({type(exc).__name__}: {exc})")



def reopen_writer(owner: "Dumper", config: DumpConfig, rank_dir: str) -> RankWriter:
    from dumper.writer import RankWriter

    if config.against is not None and owner._online is None:
        from dumper.online import OnlineConfig, OnlineMonitor

        owner._online = OnlineMonitor(
            OnlineConfig(against=os.path.abspath(config.against), escalate_steps=config.escalate_steps,
                         rtol=config.online_rtol),
            rank=owner._rank_info.rank,
        )
    owner._writer = RankWriter(
        rank_dir=rank_dir,
        rank_info=owner._rank_info,
        mode=config.mode,
        queue_bytes=config.queue_bytes,
        file_bytes=config.file_bytes,
        flush_bytes=config.flush_bytes,
        on_failure=owner._fail,
        online=owner._online if config.against is not None else None,
        graph_coverage=owner._graph_coverage,
    )
    owner._install_exit_hook()
    return owner._writer



def install_exit_hook(owner: "Dumper") -> None:
    if owner._exit_hook_installed:
        return
    owner._exit_hook_installed = True
    atexit.register(owner.close)
    # multiprocessing children leave through os._exit, which skips atexit but
    # runs multiprocessing's own finalizers.
    import multiprocessing.util

    multiprocessing.util.Finalize(owner, type(owner).close, args=(owner,), exitpriority=100)



def close(owner: "Dumper") -> None:
    """Flush and stop the writer; called at process exit.

    Dumping may go on afterwards: a new writer appends to the same rank directory.
    """
    writer = owner._writer
    if owner._collectives is not None:
        owner._collectives.flush()
    if owner._graph_hooked:
        from dumper import graph_hooks

        owner._graph_hooked = False
        graph_hooks.uninstall(owner)
    with owner._lock:
        writer = owner._writer
        owner._writer = None
        if writer is not None:
            owner._closed_writer.clear()
    if writer is not None:
        try:
            writer.close()
            if not writer.failed:
                _write_index_summary(writer.rank_dir)
        finally:
            owner._closed_writer.set()


def _write_index_summary(rank_dir: str) -> None:
    """The index's summary for ``dumpcmp ls`` (dumper/index_summary.py); never fails the engine."""
    from dumper.index_summary_write import write_summary

    try:
        write_summary(rank_dir)
    except Exception as exc:  # noqa: BLE001 - a missing summary only makes ls read the index lines
        log.debug("dumpcmp: no index summary for %s (%s)", rank_dir, exc)



def refuse(owner: "Dumper", name: str, reason: str, info) -> None:
    """Skip one record with one warning per name and reason; counted in rank.json ``lost``."""
    owner._warn_once(f"refused:{name}:{reason}", f"dumpcmp: not dumping {name!r}: {reason}")
    writer = owner._writer or owner._start_writer(info)
    if writer is not None:
        writer.note_lost(name, reason)



def report_not_dumped(owner: "Dumper", name: str, reason: str) -> None:
    """A dump site that cannot be taken: warned once with the reason, counted in rank.json."""
    owner._warn_once(f"not-dumped:{name}", f"dumpcmp: not dumping {name!r}: {reason}; the engine continues")
    try:
        writer = owner._writer or owner._start_writer(owner._parallel.current())
        if writer is not None:
            writer.note_lost(name, reason)
    except Exception as exc:  # noqa: BLE001 - never break the engine
        owner._fail(exc)



def reset_after_fork(owner: "Dumper") -> None:
    # The parent's writer thread does not exist in the child, and its rank
    # directory is the parent's: start over with the same configuration.
    owner._writer = None
    owner._rank_dir = None
    owner._lock = threading.Lock()
    owner._closed_writer = threading.Event()
    owner._closed_writer.set()
    owner._local = threading.local()
    owner._parallel.invalidate()
    owner._exit_hook_installed = False
    owner._seq = 0
    owner._online = None  # the child is another rank: it compares against its own baseline index
    owner._graphs = None  # a forked child captures its own graphs
    if owner._collectives is not None:
        owner._collectives.reset_after_fork()



def write_fingerprint(owner: "Dumper") -> None:
    if owner._rank_dir is None:
        return
    try:
        from dumper.fingerprint import build_fingerprint, write_fingerprint

        command = list(owner._config.command) or list(sys.argv)
        write_fingerprint(owner._rank_dir, build_fingerprint(
            command=command, environ=os.environ, model=owner._model, env_patterns=owner._env_patterns))
    except Exception as exc:  # noqa: BLE001 - a fingerprint is optional; never break the engine
        owner._warn_once("fingerprint", f"dumpcmp: run fingerprint not written ({type(exc).__name__}: {exc})")



def record_model(owner: "Dumper", *, env: tuple[str, ...] | list[str] = (), **identity: Any) -> None:
    """What the engine runs, for the run's fingerprint (engine presets call this once the model is loaded).

    ``identity``: engine, architecture, config, weights, dtype, quantization, settings
    (see :func:`dumper.fingerprint.model_identity`); ``env``: globs of the engine's
    environment settings worth recording (e.g. ``VLLM_*``). Never raises.
    """
    try:
        from dumper.fingerprint import model_identity

        owner._model = model_identity(**identity)
        owner._env_patterns = tuple(env)
    except Exception as exc:  # noqa: BLE001 - a fingerprint is optional; never break the engine
        owner._warn_once("fingerprint", f"dumpcmp: model fingerprint not recorded ({type(exc).__name__}: {exc})")
        return
    if owner._rank_dir is not None:
        owner._write_fingerprint()
