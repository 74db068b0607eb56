"""The dumper object engines call: ``from dumper import dumper``.

``dumper.dump(name, value, dims=..., **tags)`` is a no-op costing one attribute
test when dumping is off. When on, the engine thread filters the call, snapshots
the tensor and hands it to this process's background writer.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import uuid
from typing import TYPE_CHECKING, Any, Callable, Iterator

from dumper.config import DumpConfig, config_from_env
from dumper.errors import DumpcmpError
from dumper.filters import parse_filter
from dumper.format import RankInfo
from dumper import process as dumper_process
from dumper.parallel import ParallelState, Provider
from dumper import graph_api, patch_sites, rank_session, record_path
from dumper.sticky_tags import StickyTags
from dumper.torch_state import compiling as _compiling

if TYPE_CHECKING:  # imported when first needed: importing dumper stays cheap
    from dumper.collectives import CollectiveTracer
    from dumper.cudagraph import GraphDumps
    from dumper.graft import Grafter
    from dumper.online import OnlineMonitor
    from dumper.snapshot import Snapshotter
    from dumper.writer import RankWriter

log = logging.getLogger(__name__)


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
        self._rank_info: RankInfo  # set when the writer starts (dumper/rank_session.py)
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
    def tags(self, **tags: Any) -> StickyTags:
        return StickyTags(self, tags)

    # ------------------------------------------------------- patched sites
    # Patch files (patches/) call these with their expressions wrapped in a lambda, so
    # that nothing is evaluated while dumping is off, and an expression that fails at
    # one site warns once and turns that site off instead of raising in the engine.
    def dump_site(self, site: str, thunk: Callable[[], Any]) -> None:
        patch_sites.dump_site(self, site, thunk)

    def graft_site(self, site: str, thunk: Callable[[], Any], fallback: Any) -> Any:
        return patch_sites.graft_site(self, site, thunk, fallback)

    def site_tags(self, site: str, thunk: Callable[[], dict[str, Any]]) -> contextlib.AbstractContextManager[Any]:
        return patch_sites.site_tags(self, site, thunk)

    def _site_failed(self, site: str, exc: BaseException) -> None:
        patch_sites.site_failed(self, site, exc)

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
        return patch_sites.dims_when(self, root, path, then, otherwise)

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
        record_path.dump(self, name, value, dims, tags, graft=graft)

    def _dump_value(self, name: str, value: Any, dims: str | None, tags: dict[str, Any], info,
                    graft: str | None = None) -> None:
        return record_path.dump_value(self, name, value, dims, tags, info, graft)

    def _enqueue(self, name: str, tensor: Any, dims: str | None, tags: dict[str, Any], info,
                 graft: str | None = None) -> None:
        return record_path.enqueue(self, name, tensor, dims, tags, info, graft)

    def _submit(self, writer, name: str, tensor: Any, dims: str | None, tags: dict[str, Any], info,
                graft: str | None = None):
        """Snapshot ``tensor`` and queue it; returns the snapshot's completion event (None on the CPU)."""
        return record_path.submit(self, writer, name, tensor, dims, tags, info, graft)

    # ---------------------------------------------------------------- graphs
    def set_real_tokens(self, count: int | None) -> None:
        """Rows of the batch that runs next (engine presets call it before a graph replay).

        At capture it is the graph's (padded) batch size; before a replay, the real
        count: records of the replay keep that many rows (docs/graphs.md).
        """
        graph_api.set_real_tokens(self, count)

    def _graph_dumps(self):
        """This dumper's CUDA-graph buffers, with CUDAGraph hooked while it dumps."""
        return graph_api.graph_dumps(self)

    def _graph_coverage(self) -> dict[str, Any] | None:
        return graph_api.graph_coverage(self)

    def _graph_event(self, event: str, graph: Any) -> None:
        """From dumper/graph_hooks.py: a CUDAGraph was captured, replayed or reset. Never raises."""
        graph_api.graph_event(self, event, graph)

    def report_not_dumped(self, name: str, reason: str) -> None:
        """A dump site that cannot be taken: warned once with the reason, counted in rank.json."""
        rank_session.report_not_dumped(self, name, reason)

    # ----------------------------------------------------------- fingerprint
    def record_model(self, *, env: tuple[str, ...] | list[str] = (), **identity: Any) -> None:
        """What the engine runs, for the run's fingerprint (engine presets call this once the model is loaded).

        ``identity``: engine, architecture, config, weights, dtype, quantization, settings
        (see :func:`dumper.fingerprint.model_identity`); ``env``: globs of the engine's
        environment settings worth recording (e.g. ``VLLM_*``). Never raises.
        """
        rank_session.record_model(self, env=env, **identity)

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

    # ------------------------------------------------------------ request ids
    @staticmethod
    def token_request_ids(request_ids: Any, **layout: Any) -> Any:
        """Each row's request as an int64, -1 on padding: a preset's ``token_req_ids`` (dumper/request_ids.py)."""
        from dumper.request_ids import token_request_ids

        return token_request_ids(request_ids, **layout)

    @staticmethod
    def sequence_request_ids(owner: Any, positions: Any) -> Any:
        """[batch, tokens] request numbers of a whole-sequence batch, counted on ``owner`` (dumper/request_ids.py)."""
        from dumper.request_ids import sequence_request_ids

        return sequence_request_ids(owner, positions)

    def _write_fingerprint(self) -> None:
        rank_session.write_fingerprint(self)

    # ---------------------------------------------------------------- writer
    def _start_writer(self, info):
        return rank_session.start_writer(self, info)

    def _start_collective_trace(self, rank_dir: str) -> None:
        rank_session.start_collective_trace(self, rank_dir)

    def _reopen_writer(self, config: DumpConfig, rank_dir: str) -> RankWriter:
        return rank_session.reopen_writer(self, config, rank_dir)

    def _install_exit_hook(self) -> None:
        rank_session.install_exit_hook(self)

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
        rank_session.close(self)

    def _refuse(self, name: str, reason: str, info) -> None:
        """Skip one record with one warning per name and reason; counted in rank.json ``lost``."""
        rank_session.refuse(self, name, reason, info)

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
        rank_session.reset_after_fork(self)




dumper = Dumper()
os.register_at_fork(after_in_child=dumper._reset_after_fork)
dumper_process.process_dumper = dumper
