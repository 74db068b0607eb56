"""The dumper object engines call: ``from dumper import dumper``.

``dumper.dump(name, value, dims=..., **tags)`` is a no-op costing one attribute
test when dumping is off. When on, the engine thread filters the call, snapshots
the tensor and hands it to this process's background writer.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import logging
import os
import socket
import sys
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any, Callable, Iterator

from dumper.config import DumpConfig, config_from_env
from dumper.errors import DumpcmpError
from dumper.filters import parse_filter
from dumper.format import RankInfo
from dumper import process as dumper_process
from dumper.record_check import BadRecord, check_tags, unwritable_tensor
from dumper.parallel import ParallelState, Provider
from dumper.rundir import claim_rank_dir

if TYPE_CHECKING:  # imported when first needed: importing dumper stays cheap
    from dumper.collectives import CollectiveTracer
    from dumper.cudagraph import GraphDumps
    from dumper.graft import Grafter
    from dumper.online import OnlineMonitor
    from dumper.snapshot import Snapshotter
    from dumper.writer import RankWriter

log = logging.getLogger(__name__)


class _StickyTags(contextlib.ContextDecorator):
    """``with dumper.tags(layer=3):`` or ``@dumper.tags(layer=3)``."""

    def __init__(self, owner: "Dumper", tags: dict[str, Any]) -> None:
        self._owner = owner
        self._tags = tags
        self._saved: list[dict[str, Any]] = []

    def __enter__(self) -> "_StickyTags":
        if _compiling():
            # Traced by torch.compile: the tags are set at runtime, by an operator of the graph.
            if self._owner.enabled:
                from dumper.compiled import trace_push_tags

                trace_push_tags(self._tags)
            return self
        local = self._owner._local
        current = getattr(local, "tags", {})
        self._saved.append(current)
        local.tags = {**current, **self._tags}
        return self

    def __exit__(self, *exc: object) -> None:
        if _compiling():
            if self._owner.enabled:
                from dumper.compiled import trace_pop_tags

                trace_pop_tags()
            return
        self._owner._local.tags = self._saved.pop()


class _Suppressed(contextlib.ContextDecorator):
    """No dump is recorded inside (the tags of a patched function could not be evaluated)."""

    def __init__(self, owner: "Dumper") -> None:
        self._owner = owner

    def __enter__(self) -> "_Suppressed":
        local = self._owner._local
        local.suppressed = getattr(local, "suppressed", 0) + 1
        return self

    def __exit__(self, *exc: object) -> None:
        self._owner._local.suppressed -= 1


class Dumper:
    def __init__(self) -> None:
        # Hot-path flag: dump() tests only this when off.
        self.enabled = False
        self._paused = 0  # paused() depth: dumps record nothing, `enabled` stays as it is
        self._config = DumpConfig()
        self._step = 0
        self._seq = 0
        self._lock = threading.Lock()
        self._closed_writer = threading.Event()  # clear while close() drains a writer
        self._closed_writer.set()
        self._sites_off: set[str] = set()  # patch sites whose expressions failed (dump_site)
        self._local = threading.local()
        self._parallel = ParallelState()
        self._writer: RankWriter | None = None
        self._rank_dir: str | None = None
        self._snapshotter: Snapshotter | None = None
        self._warned: set[str] = set()
        self._exit_hook_installed = False
        self._generated_run_id: str | None = None
        self._collectives: CollectiveTracer | None = None  # once a rank directory exists
        self._online: OnlineMonitor | None = None  # when comparing against a baseline (DUMPCMP_AGAINST)
        self._grafter: Grafter | None = None  # when a graft plan is configured (DUMPCMP_GRAFT)
        self._graphs: GraphDumps | None = None  # once a CUDA tensor is dumped
        self._real_tokens: int | None = None
        self._graph_hooked = False  # dumper/graph_hooks.py routes CUDAGraph events here
        self._model: dict[str, Any] | None = None  # dumper.fingerprint.model_identity, from record_model()
        self._env_patterns: tuple[str, ...] = ()

    # ----------------------------------------------------------------- config
    @property
    def config(self) -> DumpConfig:
        return self._config

    def configure(self, config: DumpConfig | None = None, /, **changes: Any) -> None:
        """Replace the configuration (from code); ``dir=`` turns dumping on.

        ``filter`` accepts a ``DumpFilter`` or an expression string.
        """
        if isinstance(changes.get("filter"), str):
            changes["filter"] = parse_filter(changes["filter"])
        base = config if config is not None else self._config
        new = base.with_changes(**changes) if changes else base
        if new.dir != self._config.dir or new.mode != self._config.mode or new.against != self._config.against:
            self.close()
            self._rank_dir = None
            self._online = None
            if self._graphs is not None:
                self._graphs.new_run()
        if new.graft != self._config.graft or (new.graft is not None and self._grafter is None):
            from dumper.graft import Grafter

            self._grafter = Grafter(new.graft) if new.graft is not None else None
        self._config = new
        self.enabled = new.active

    def configure_from_env(self) -> None:
        """Read ``DUMPCMP_*``; a bad value warns once and leaves dumping off."""
        try:
            config = config_from_env()
        except Exception as exc:  # noqa: BLE001 - this runs at import: nothing may escape into the engine
            self._warn_once("config", f"dumpcmp: dumping disabled: {exc}")
            self.enabled = False
            return
        if config.dir is not None and config.run_id is None:
            # Children started later (spawn, subprocess) inherit this id and so join
            # this process's run; this process itself still joins whatever run.json
            # its siblings (e.g. other torchrun ranks) already wrote.
            self._generated_run_id = uuid.uuid4().hex[:12]
            os.environ["DUMPCMP_RUN_ID"] = self._generated_run_id
        self.configure(config)

    def enable(self) -> None:
        self._config = self._config.with_changes(enable=True)
        self.enabled = self._config.active

    def disable(self) -> None:
        self.enabled = False

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Record nothing inside (an engine's warm-up), leaving ``enabled`` as it is.

        NOTE: unlike ``disable()``, code that torch.compile traces inside keeps its dump
        operators (dynamo guards on ``enabled``): an engine whose warm-up traces the
        model once (vLLM) then dumps every real step, and its warm-up none.
        """
        self._paused += 1
        try:
            yield
        finally:
            self._paused -= 1

    # ------------------------------------------------------------------ steps
    @property
    def current_step(self) -> int:
        return self._step

    def step(self) -> int:
        """Advance the step counter (one forward pass); returns the new step."""
        if _compiling():
            # Traced by torch.compile: the counter advances at runtime, by an operator of the graph.
            if self.enabled:
                from dumper.compiled import trace_step

                trace_step()
            return self._step
        self._step += 1
        self._parallel.invalidate()
        return self._step

    def set_step(self, step: int) -> None:
        self._step = int(step)
        self._parallel.invalidate()

    # ------------------------------------------------------------------- tags
    def tags(self, **tags: Any) -> _StickyTags:
        return _StickyTags(self, tags)

    # ------------------------------------------------------- patched sites
    # Patch files (patches/) call these with their expressions wrapped in a lambda, so
    # that nothing is evaluated while dumping is off, and an expression that fails at
    # one site warns once and turns that site off instead of raising in the engine.
    def dump_site(self, site: str, thunk: Callable[[], Any]) -> None:
        if not self.enabled or site in self._sites_off:
            return
        try:
            thunk()
        except Exception as exc:  # noqa: BLE001 - the engine's object lacks what the preset expects
            self._site_failed(site, exc)

    def graft_site(self, site: str, thunk: Callable[[], Any], fallback: Any) -> Any:
        if not self.enabled or site in self._sites_off:
            return fallback
        try:
            return thunk()
        except Exception as exc:  # noqa: BLE001 - the engine goes on with its own value
            self._site_failed(site, exc)
            return fallback

    def site_tags(self, site: str, thunk: Callable[[], dict[str, Any]]) -> contextlib.AbstractContextManager[Any]:
        if not self.enabled or site in self._sites_off:
            return contextlib.nullcontext()
        try:
            tags = thunk()
        except Exception as exc:  # noqa: BLE001 - as dump_site
            self._site_failed(site, exc)
            return _Suppressed(self)  # records without their tags would be mismatched: none at all
        return _StickyTags(self, tags)

    def _site_failed(self, site: str, exc: BaseException) -> None:
        self._sites_off.add(site)
        self._warn_once(f"site:{site}", f"dumpcmp: patch site {site} turned off: evaluating it raised "
                        f"{type(exc).__name__}: {exc} (the engine continues; fix the expression in the patch file)")

    # --------------------------------------------------------------- parallel
    def set_parallel(self, **axes: tuple[int, int] | None) -> None:
        """``set_parallel(tp=(rank, size), ep=(rank, size))``; ``None`` forgets an axis."""
        self._parallel.set_axes(**axes)

    def register_parallel_provider(self, provider: Provider) -> None:
        """An engine plugin returning ``{axis: (rank, size)}``, asked once per step."""
        self._parallel.register_provider(provider)

    def name_group(self, group: Any, axis: str) -> None:
        """Say which parallel axis a torch.distributed process group is, for the collective trace."""
        from dumper.collectives import name_group

        name_group(group, axis)

    @property
    def parallel(self):
        return self._parallel.current()

    def dims_when(self, root: Any, path: str, then: str, otherwise: str) -> str | None:
        """``then`` when the attribute ``path`` of ``root`` is true, else ``otherwise``.

        Patch files choose a dump's dims from the engine's state this way
        (``dims: {when: self._fused_output_is_reduced, then: ..., else: ...}``,
        docs/patches.md): a plain attribute lookup, nothing evaluated. A lookup that
        fails warns once and gives no dims, so the comparator asks for them rather than
        guessing a layout.
        """
        value = root
        try:
            for part in path.split(".") if path else ():
                value = getattr(value, part)
            return then if value else otherwise
        except Exception as exc:  # noqa: BLE001 - never break the engine
            self._warn_once(f"dims-when:{path}", f"dumpcmp: cannot read {path or 'the value'} to choose dims "
                            f"({type(exc).__name__}: {exc}); the dump has no dims annotation")
            return None

    # ------------------------------------------------------------------- dump
    def dump(self, name: str, value: Any, *, dims: str | None = None, **tags: Any) -> None:
        if not self.enabled:
            return
        if _compiling():
            # Traced by torch.compile (dynamo guards on `enabled`): the call becomes an
            # operator of the graph that dumps at runtime (dumper/compiled.py).
            from dumper.compiled import trace_dump

            trace_dump(self, name, value, dims, tags)
            return
        if self._paused:
            return
        try:
            self._dump(name, value, dims, tags)
        except DumpcmpError as exc:
            self._fail(exc)
        except Exception as exc:  # noqa: BLE001 - never break the engine
            self._fail(exc)

    def graft_point(self, name: str, value: Any, *, dims: str | None = None, **tags: Any) -> Any:
        """``dump()`` that returns what the engine goes on with: ``value``, or the baseline's
        value for this site, step and tags when ``dumpcmp run --graft`` names it (docs/graft.md).

        Use it as ``x = dumper.graft_point("name", x, dims=...)``; a preset entry with
        ``graft: true`` injects exactly that.
        """
        if not self.enabled:
            return value
        grafter = self._grafter
        if grafter is None or _compiling():
            # NOTE: under torch.compile a graft point only dumps (docs/graphs.md, Limits):
            # substituting a value would need an operator returning the baseline's tensor.
            self.dump(name, value, dims=dims, **tags)
            return value
        try:
            sticky = getattr(self._local, "tags", None)
            all_tags = {**sticky, **tags} if sticky else tags
            grafted, source = grafter.apply(name, value, dims=dims, step=self._step, tags=all_tags,
                                            parallel=self._parallel.current().axes, warn=self._warn_once)
            self._dump(name, grafted, dims, tags, graft=source)
            return grafted
        except Exception as exc:  # noqa: BLE001 - never break the engine: it goes on with its own value
            self._fail(exc)
            return value

    def _dump(self, name: str, value: Any, dims: str | None, tags: dict[str, Any], *, graft: str | None = None) -> None:
        if getattr(self._local, "suppressed", 0):
            return
        sticky = getattr(self._local, "tags", None)
        all_tags = {**sticky, **tags} if sticky else tags
        info = self._parallel.current()
        # NOTE: what the writer cannot encode is refused here, record by record: in the
        # writer it cost the whole batch, and a record the reader refuses is lost too.
        if not isinstance(name, str):
            self._refuse(repr(name)[:80], f"the name must be a string, not {type(name).__name__}", info)
            return
        if dims is not None and not isinstance(dims, str):
            self._warn_once(f"dims-type:{name}", f"dumpcmp: dims of {name!r} must be a string like 't h', not "
                            f"{type(dims).__name__}; dumped without dims")
            dims = None
        try:
            checked = check_tags(all_tags)
        except BadRecord as exc:
            self._refuse(name, str(exc), info)
            return
        for note in checked.notes:
            self._warn_once(f"tag-note:{name}:{note}", f"dumpcmp: {name!r}: {note}")
        all_tags = checked.tags
        dump_filter = self._config.filter
        # NOTE: a grafted record is always written: compare needs its flag to tell the graft
        # point, whatever --filter keeps.
        if graft is None and not dump_filter.keeps(name=name, step=self._step, rank=info.rank, tags=all_tags):
            # Under capture the step is not known yet: each replay is filtered by its own.
            if dump_filter.steps is None or not _capturing() or not dataclasses.replace(dump_filter, steps=None).keeps(
                    name=name, step=self._step, rank=info.rank, tags=all_tags):
                return
        if callable(value) and not _is_tensor(value):
            if _capturing():
                from dumper.cudagraph import LOST_CALLABLE
                from dumper.graph_replay import lose_under_capture

                lose_under_capture(self, name, LOST_CALLABLE)
                return
            value = value()
        self._dump_value(name, value, dims, all_tags, info, graft)

    def _dump_value(self, name: str, value: Any, dims: str | None, tags: dict[str, Any], info,
                    graft: str | None = None) -> None:
        import torch

        if isinstance(value, torch.Tensor):
            self._enqueue(name, value, dims, tags, info, graft)
        elif isinstance(value, (tuple, list)):
            for position, item in enumerate(value):
                if item is not None:
                    self._dump_value(f"{name}.{position}", item, dims, tags, info)
        elif isinstance(value, dict):
            for key, item in value.items():
                if item is not None:
                    self._dump_value(f"{name}.{key}", item, dims, tags, info)
        elif isinstance(value, (bool, int, float)):
            self._enqueue(name, torch.tensor(value), dims, tags, info)
        elif value is None:
            return
        else:
            self._warn_once(
                f"type:{name}",
                f"dumpcmp: not dumping {name!r}: a {type(value).__name__} is not a tensor "
                "(pass a tensor, a tuple/list/dict of tensors, a number, or a callable returning one)",
            )

    def _enqueue(self, name: str, tensor: Any, dims: str | None, tags: dict[str, Any], info,
                 graft: str | None = None) -> None:
        import torch

        if tensor.is_complex() or tensor.layout != torch.strided:
            self._warn_once(
                f"dtype:{name}",
                f"dumpcmp: not dumping {name!r}: {tensor.dtype} / {tensor.layout} tensors are not supported "
                "(dump .real/.imag or .to_dense())",
            )
            return
        unwritable = unwritable_tensor(tensor)
        if unwritable is None and tensor.numel() * tensor.element_size() > self._config.queue_bytes:
            storage = tensor.untyped_storage().nbytes() if not tensor.is_meta else 0
            if tensor.numel() * tensor.element_size() > storage:
                # An expanded (stride-0) or overlapping view: copying it would allocate its whole
                # logical size (gigabytes from a few bytes) on the engine's device.
                unwritable = (f"an expanded view of {tensor.numel() * tensor.element_size()} bytes over "
                              f"{storage} bytes of storage, more than the queue ({self._config.queue_bytes} "
                              "bytes, DUMPCMP_QUEUE_MB); dump the unexpanded tensor")
        if unwritable is not None:
            self._refuse(name, unwritable, info)
            return
        writer = self._writer or self._start_writer(info)
        snapshotter = self._snapshotter
        if writer is None or snapshotter is None:
            return
        if (tensor.is_cuda or self._graphs is not None) and _capturing():
            # A copy enqueued now runs at every replay: it goes into a buffer of the
            # graph, emitted after each replay (dumper/graph_replay.py).
            from dumper.graph_replay import record_under_capture

            record_under_capture(self, name, tensor, dims, tags, info)
            return
        if tensor.is_cuda and not self._graph_hooked:
            self._graph_dumps()  # hook CUDAGraph before the first capture with dumps in it
        self._submit(writer, name, tensor, dims, tags, info, graft)

    def _submit(self, writer, name: str, tensor: Any, dims: str | None, tags: dict[str, Any], info,
                graft: str | None = None):
        """Snapshot ``tensor`` and queue it; returns the snapshot's completion event (None on the CPU)."""
        from dumper.writer import PendingRecord

        with self._lock:
            seq = self._seq
            self._seq += 1
        snapshotter = self._snapshotter
        if snapshotter is None:
            raise RuntimeError("dumpcmp: internal error: a record reached the writer before its snapshotter existed")
        snapshot = snapshotter.take(tensor)
        event = snapshot.event  # read before the writer thread can take it
        record = PendingRecord(
                seq=seq,
                step=self._step,
                name=name,
                tags=dict(tags),
                rank=info.rank,
                world_size=info.world_size,
                parallel=dict(info.axes),
                dims=dims,
                time=time.time(),
                snapshot=snapshot,
                nbytes=tensor.numel() * tensor.element_size(),
                graft=graft,
            )
        # NOTE: close() on another thread may have closed this writer since it was read; the
        # record then goes to the next writer instead of being dropped without a word.
        for _ in range(3):
            if writer.submit(record) is not False:
                break
            writer = self._writer or self._start_writer(info)
            if writer is None:
                break
        return event

    # ---------------------------------------------------------------- graphs
    def set_real_tokens(self, count: int | None) -> None:
        """Rows of the batch that runs next (engine presets call it before a graph replay).

        At capture it is the graph's (padded) batch size; before a replay, the real
        count: records of the replay keep that many rows (docs/graphs.md).
        """
        self._real_tokens = None if count is None else int(count)
        if self._graphs is not None:
            self._graphs.set_real_tokens(self._real_tokens)

    def _graph_dumps(self):
        """This dumper's CUDA-graph buffers, with CUDAGraph hooked while it dumps."""
        from dumper import graph_hooks

        if self._graphs is None:
            from dumper.cudagraph import GraphDumps

            self._graphs = GraphDumps(budget_bytes=self._config.graph_bytes, warn=self._warn_once)
            self._graphs.set_real_tokens(self._real_tokens)
        if not self._graph_hooked:
            graph_hooks.install(self)
            self._graph_hooked = True
        return self._graphs

    def _graph_coverage(self) -> dict[str, Any] | None:
        return None if self._graphs is None else self._graphs.coverage()

    def _graph_event(self, event: str, graph: Any) -> None:
        """From dumper/graph_hooks.py: a CUDAGraph was captured, replayed or reset. Never raises."""
        try:
            from dumper.graph_replay import on_graph_event

            on_graph_event(self, event, graph)
        except Exception as exc:  # noqa: BLE001 - never break the engine
            self._fail(exc)

    def report_not_dumped(self, name: str, reason: str) -> None:
        """A dump site that cannot be taken: warned once with the reason, counted in rank.json."""
        self._warn_once(f"not-dumped:{name}", f"dumpcmp: not dumping {name!r}: {reason}; the engine continues")
        try:
            writer = self._writer or self._start_writer(self._parallel.current())
            if writer is not None:
                writer.note_lost(name, reason)
        except Exception as exc:  # noqa: BLE001 - never break the engine
            self._fail(exc)

    # ----------------------------------------------------------- fingerprint
    def record_model(self, *, env: tuple[str, ...] | list[str] = (), **identity: Any) -> None:
        """What the engine runs, for the run's fingerprint (engine presets call this once the model is loaded).

        ``identity``: engine, architecture, config, weights, dtype, quantization, settings
        (see :func:`dumper.fingerprint.model_identity`); ``env``: globs of the engine's
        environment settings worth recording (e.g. ``VLLM_*``). Never raises.
        """
        try:
            from dumper.fingerprint import model_identity

            self._model = model_identity(**identity)
            self._env_patterns = tuple(env)
        except Exception as exc:  # noqa: BLE001 - a fingerprint is optional; never break the engine
            self._warn_once("fingerprint", f"dumpcmp: model fingerprint not recorded ({type(exc).__name__}: {exc})")
            return
        if self._rank_dir is not None:
            self._write_fingerprint()

    @staticmethod
    def weights_digest(tensors: Any) -> str | None:
        """A digest of full (unsharded) weights ``{name: tensor}``; None if they cannot be read."""
        try:
            from dumper.fingerprint import tensors_digest

            return tensors_digest(tensors)
        except Exception:  # noqa: BLE001 - a fingerprint is optional; never break the engine
            return None

    @staticmethod
    def checkpoint_digest(path: Any) -> str | None:
        """A digest of a model directory's weight files (headers and sizes only); None if not local."""
        try:
            from dumper.fingerprint import checkpoint_digest

            return checkpoint_digest(path)
        except Exception:  # noqa: BLE001 - a fingerprint is optional; never break the engine
            return None

    def _write_fingerprint(self) -> None:
        if self._rank_dir is None:
            return
        try:
            from dumper.fingerprint import build_fingerprint, write_fingerprint

            command = list(self._config.command) or list(sys.argv)
            write_fingerprint(self._rank_dir, build_fingerprint(
                command=command, environ=os.environ, model=self._model, env_patterns=self._env_patterns))
        except Exception as exc:  # noqa: BLE001 - a fingerprint is optional; never break the engine
            self._warn_once("fingerprint", f"dumpcmp: run fingerprint not written ({type(exc).__name__}: {exc})")

    # ---------------------------------------------------------------- writer
    def _start_writer(self, info):
        from dumper.snapshot import Snapshotter

        with self._lock:
            if self._writer is not None:
                return self._writer
            # NOTE: close() on another thread (an atexit while a daemon thread still dumps)
            # may be draining the previous writer: a second writer on the same rank
            # directory now would pick the same data file names. Wait for it to finish.
            self._closed_writer.wait()
            config = self._config
            if self._rank_dir is not None and os.path.isdir(self._rank_dir):
                return self._reopen_writer(config, self._rank_dir)
            if config.dir is None:  # dump() runs only while a directory is configured
                raise RuntimeError("dumpcmp: internal error: the writer started without a dump directory")
            run_dir = os.path.abspath(config.dir)
            run_id = config.run_id or self._generated_run_id or uuid.uuid4().hex[:12]
            rank_dir, run_id = claim_rank_dir(run_dir, info, config, run_id)
            if config.run_id is None:
                # Children started from now on must join the run this process joined.
                os.environ["DUMPCMP_RUN_ID"] = run_id
            self._snapshotter = Snapshotter(pool_bytes=config.queue_bytes)
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
            self._rank_info = rank_info
            self._rank_dir = rank_dir
            self._write_fingerprint()
            if config.collectives:
                self._start_collective_trace(rank_dir)
            return self._reopen_writer(config, rank_dir)

    def _start_collective_trace(self, rank_dir: str) -> None:
        if sys.modules.get("torch.distributed") is None:
            import torch.distributed  # noqa: F401 - torch is already imported by the engine here
        from dumper.collectives import CollectiveTracer, install

        try:
            if self._collectives is None:
                self._collectives = CollectiveTracer(owner=self)
                install(self._collectives)  # stays for the process's life; the tracer checks `enabled`
            self._collectives.attach(rank_dir)
        except Exception as exc:  # noqa: BLE001 - the trace is optional; never break the engine
            self._warn_once("collectives", f"dumpcmp: collective tracing off ({type(exc).__name__}: {exc})")

    def _reopen_writer(self, config: DumpConfig, rank_dir: str) -> RankWriter:
        from dumper.writer import RankWriter

        if config.against is not None and self._online is None:
            from dumper.online import OnlineConfig, OnlineMonitor

            self._online = OnlineMonitor(
                OnlineConfig(against=os.path.abspath(config.against), escalate_steps=config.escalate_steps,
                             rtol=config.online_rtol),
                rank=self._rank_info.rank,
            )
        self._writer = RankWriter(
            rank_dir=rank_dir,
            rank_info=self._rank_info,
            mode=config.mode,
            queue_bytes=config.queue_bytes,
            file_bytes=config.file_bytes,
            on_failure=self._fail,
            online=self._online if config.against is not None else None,
            graph_coverage=self._graph_coverage,
        )
        self._install_exit_hook()
        return self._writer

    def _install_exit_hook(self) -> None:
        if self._exit_hook_installed:
            return
        self._exit_hook_installed = True
        atexit.register(self.close)
        # multiprocessing children leave through os._exit, which skips atexit but
        # runs multiprocessing's own finalizers.
        import multiprocessing.util

        multiprocessing.util.Finalize(self, Dumper.close, args=(self,), exitpriority=100)

    @property
    def rank_dir(self) -> str | None:
        return self._rank_dir

    def flush(self) -> None:
        """Block until everything dumped so far is on disk; dumping stays on."""
        writer = self._writer
        if writer is not None:
            writer.flush()
        if self._collectives is not None:
            self._collectives.flush()

    def close(self) -> None:
        """Flush and stop the writer; called at process exit.

        Dumping may go on afterwards: a new writer appends to the same rank directory.
        """
        writer = self._writer
        if self._collectives is not None:
            self._collectives.flush()
        if self._graph_hooked:
            from dumper import graph_hooks

            self._graph_hooked = False
            graph_hooks.uninstall(self)
        with self._lock:
            writer = self._writer
            self._writer = None
            if writer is not None:
                self._closed_writer.clear()
        if writer is not None:
            try:
                writer.close()
            finally:
                self._closed_writer.set()

    def _refuse(self, name: str, reason: str, info) -> None:
        """Skip one record with one warning per name and reason; counted in rank.json ``lost``."""
        self._warn_once(f"refused:{name}:{reason}", f"dumpcmp: not dumping {name!r}: {reason}")
        writer = self._writer or self._start_writer(info)
        if writer is not None:
            writer.note_lost(name, reason)

    def _fail(self, exc: BaseException) -> None:
        self.enabled = False
        self._warn_once(
            "failure",
            f"dumpcmp: dumping disabled after an error ({type(exc).__name__}: {exc}); the engine continues",
        )

    def _warn_once(self, key: str, message: str) -> None:
        if key in self._warned:
            return
        self._warned.add(key)
        log.warning(message)

    def _reset_after_fork(self) -> None:
        # The parent's writer thread does not exist in the child, and its rank
        # directory is the parent's: start over with the same configuration.
        self._writer = None
        self._rank_dir = None
        self._lock = threading.Lock()
        self._closed_writer = threading.Event()
        self._closed_writer.set()
        self._local = threading.local()
        self._parallel.invalidate()
        self._exit_hook_installed = False
        self._seq = 0
        self._online = None  # the child is another rank: it compares against its own baseline index
        self._graphs = None  # a forked child captures its own graphs
        if self._collectives is not None:
            self._collectives.reset_after_fork()


def _compiling() -> bool:
    """True while torch.compile's dynamo traces the caller; never imports torch."""
    torch = sys.modules.get("torch")
    return torch is not None and torch.compiler.is_compiling()


def _capturing() -> bool:
    """Is this thread's current CUDA stream capturing a graph? (False, cheaply, without CUDA.)"""
    torch = sys.modules.get("torch")
    return torch is not None and torch.cuda.is_initialized() and torch.cuda.is_current_stream_capturing()


def _is_tensor(value: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)


dumper = Dumper()
os.register_at_fork(after_in_child=dumper._reset_after_fork)
dumper_process.process_dumper = dumper
