"""``--executor ray``: the per-tensor work as Ray tasks, each next to its shards; results in order.

The comparing process opens the runs and plans as always (indexes and small metadata);
the work items that load tensor data go to Ray tasks, each item to a node that
advertises the directory holding most of its bytes (comparator/locality.py), or to any
node; items bound for one directory share a task, up to ``BATCH_ITEMS`` of them or
``BATCH_BYTES`` of shards. Every task builds its executor from one :class:`WorkerSetup` (the factory of the
serial path and of ``--jobs``), sent once per comparison and kept by each Ray worker
process, so the report is the local executor's. Items that load no data (stats-only,
one-sided, unplannable) are judged here: a task would only add a round trip.

Ray is an optional extra (``dumpcmp[ray]``): it is imported here, inside functions,
and only when ``--executor ray`` is asked for.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

from comparator.errors import ClusterError
from comparator.execute import Executor, WorkerSetup, make_executor
from comparator.locality import (RESOURCE_PER_TASK, advertised_directories, bytes_by_directory, choose_directory,
                                 directory_resource, reads_data)
from comparator.matching import tensor_label
from comparator.options import CompareOptions
from comparator.plan import WorkItem
from comparator.results import Pair, TensorResult
from dumper.errors import DumpcmpError
from dumper.format import TOOL_VERSION
from dumper.run import Run

log = logging.getLogger(__name__)

TASKS_PER_CPU = 2  # tasks in flight per cluster CPU: each node always has its next batch queued
# A task compares up to BATCH_ITEMS work items, or fewer holding BATCH_BYTES of shards (a big
# tensor is a task of its own): small tensors amortise Ray's cost per task, big ones spread.
BATCH_ITEMS = 16
BATCH_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True, kw_only=True)
class TaskPlacement:
    """Where one task ran, for the summary (and tests): the directory it was sent next to, the node."""

    label: str
    directory: str | None  # None: no node advertises any of its directories, so any node
    node: str  # Ray node id


@dataclass(frozen=True, kw_only=True)
class _Setup:
    """A comparison's worker setup, tagged so each Ray worker process builds its executor once."""

    token: str
    tool_version: str
    worker: WorkerSetup


@dataclass(eq=False)
class _Batch:
    """Work items bound for one node directory, sent as one task: Ray adds milliseconds a task."""

    directory: str | None
    items: list[WorkItem] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    nbytes: int = 0
    ref: Any = None  # ray.ObjectRef, once submitted
    results: list[TensorResult] | None = None  # once collected
    node: str = ""

    @property
    def full(self) -> bool:
        return len(self.items) >= BATCH_ITEMS or self.nbytes >= BATCH_BYTES

    def describe(self) -> str:
        return self.labels[0] + (f" and {len(self.labels) - 1} more" if len(self.labels) > 1 else "")


@dataclass(frozen=True)
class _Slot:
    """A work item's place in the plan's order: its batch and its index there."""

    batch: _Batch
    index: int


def import_ray() -> Any:
    """The ray module, or a one-line ClusterError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ClusterError("--executor ray needs Ray, which is not installed: pip install 'dumpcmp[ray]'") from None
    return ray


def connect(ray: Any, address: str | None) -> bool:
    """Join the cluster (``address``; None: RAY_ADDRESS, the local ``ray start`` cluster, else a new one).

    Returns whether this call connected, and so must disconnect; a caller's own ``ray.init`` is kept.
    """
    if ray.is_initialized():
        return False
    named = address if address not in (None, "auto") else os.environ.get("RAY_ADDRESS")
    if named and named not in ("auto", "local") and "://" not in named:
        # NOTE: Ray retries an address where nothing listens for minutes, deaf to Ctrl-C.
        problem = _unanswered(named)
        if problem is not None:
            raise ClusterError(f"cannot connect to the Ray cluster at {named}: nothing answers there ({problem}); "
                               "start its head with ray start --head, or give its address with --address")
    try:
        # NOTE: workers' logs stay in Ray's session logs; results carry every reason.
        ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError, TimeoutError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ClusterError(f"cannot connect to the Ray cluster at {address or 'auto'}: {first}") from None
    return True


def _unanswered(address: str, timeout: float = 10.0) -> str | None:
    """Why nothing answers at ``HOST:PORT`` (None: something listens, or Ray is left to read the address)."""
    host, separator, port = address.rpartition(":")
    if not separator or not port.isdigit():
        return None
    try:
        with socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=timeout):
            return None
    except OSError as exc:
        return exc.strerror or str(exc) or type(exc).__name__


_cached: tuple[str, Executor] | None = None  # in a Ray worker process: (token, executor) of the latest comparison


def compare_on_node(token: str, setup_box: list[Any], items: list[WorkItem]) -> tuple[list[TensorResult], str]:
    """The Ray task: the work items' results, in order, and the node that made them.

    ``setup_box`` holds the setup's object ref inside a list, so that Ray hands the ref
    over unresolved: a worker fetches the setup once per comparison, not once per task.
    """
    import ray

    global _cached
    if _cached is None or _cached[0] != token:
        _cached = None  # the previous comparison's executor goes first
        setup: _Setup = ray.get(setup_box[0])
        if setup.tool_version != TOOL_VERSION:
            raise ClusterError(f"node {ray.get_runtime_context().get_node_id()[:8]} runs dumpcmp {TOOL_VERSION}, the "
                               f"comparing machine {setup.tool_version}: install one version on every node")
        import torch

        torch.set_num_threads(1)  # as comparator/pipeline.py: parallelism comes from tasks
        _cached = (token, setup.worker.make_executor())
    executor = _cached[1]
    return [executor.run(item) for item in items], ray.get_runtime_context().get_node_id()


class RayExecutor:
    """Executes a plan's work items on a Ray cluster; ``results`` yields them in the plan's order."""

    def __init__(self, runs: Pair[Run], options: CompareOptions, axis_sizes: dict[str, int]) -> None:
        self.options = options
        self.setup = WorkerSetup.of(runs, options, axis_sizes)
        self.local = make_executor(runs, options, axis_sizes)  # items that read no data
        self.directories = sorted({os.path.abspath(directory) for _, run in runs.items()
                                   for directory in (run.directories or (run.root,))})
        self.placements: list[TaskPlacement] = []
        self._open: dict[str | None, _Batch] = {}  # per directory, the batch being filled
        self._in_flight: list[_Batch] = []  # submitted, not yet collected

    def results(self, items: Sequence[WorkItem]) -> Iterator[TensorResult]:
        ray = import_ray()
        started = connect(ray, self.options.address)
        pending: deque[TensorResult | _Slot] = deque()
        try:
            resources = ray.cluster_resources()
            advertised = advertised_directories(resources)
            self._log_locality(advertised)
            window = max(2, TASKS_PER_CPU * int(resources.get("CPU", 1)))
            token = uuid.uuid4().hex
            setup_box = [ray.put(_Setup(token=token, tool_version=TOOL_VERSION, worker=self.setup))]
            task = ray.remote(compare_on_node)

            def submit(batch: _Batch) -> None:
                wanted = {directory_resource(batch.directory): RESOURCE_PER_TASK} if batch.directory else {}
                batch.ref = task.options(num_cpus=1, resources=wanted).remote(token, setup_box, batch.items)
                self._in_flight.append(batch)
                if self._open.get(batch.directory) is batch:
                    del self._open[batch.directory]

            def take(head: TensorResult | _Slot) -> TensorResult:
                if isinstance(head, TensorResult):
                    return head
                if head.batch.ref is None:
                    submit(head.batch)  # the plan's order needs it now
                if head.batch.results is None:
                    self._collect(ray, head.batch)
                    self._in_flight.remove(head.batch)
                return head.batch.results[head.index]  # type: ignore[index]  # set by _collect

            for item in items:
                if not reads_data(item):
                    pending.append(self.local.run(item))
                    continue
                label = tensor_label(item.place.name, item.place.step, item.place.tags)
                held = bytes_by_directory(item, self.setup.roots)
                directory = choose_directory(held, advertised, label)
                batch = self._open.setdefault(directory, _Batch(directory))
                pending.append(_Slot(batch, len(batch.items)))
                batch.items.append(item)
                batch.labels.append(label)
                batch.nbytes += sum(held.values())
                if batch.full:
                    submit(batch)
                while len(self._in_flight) >= window:
                    yield take(pending.popleft())
            for batch in list(self._open.values()):
                submit(batch)
            while pending:
                yield take(pending.popleft())
            self._log_summary()
        finally:
            for batch in self._in_flight:
                ray.cancel(batch.ref)
            if started:
                ray.shutdown()

    def _collect(self, ray: Any, batch: _Batch) -> None:
        try:
            batch.results, batch.node = ray.get(batch.ref)
        except ray.exceptions.RayTaskError as exc:
            if isinstance(exc.cause, DumpcmpError):  # a user error on the node (e.g. another dumpcmp version)
                raise exc.cause from None
            raise  # a bug: its traceback, from the node
        except ray.exceptions.RayError as exc:  # a worker or node lost, the object store full
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ClusterError(f"the Ray cluster lost the task comparing {batch.describe()}: {first}") from None
        self.placements.extend(TaskPlacement(label=label, directory=batch.directory, node=batch.node)
                               for label in batch.labels)

    def _log_locality(self, advertised: frozenset[str]) -> None:
        unplaced = [directory for directory in self.directories if directory not in advertised]
        if unplaced:
            log.info("ray: no node advertises %s (resource %s): tasks reading mostly from there run on any node, "
                     "which must see it", ", ".join(unplaced), directory_resource(unplaced[0]))

    def _log_summary(self) -> None:
        nodes = Counter(p.node for p in self.placements)
        placed = sum(p.directory is not None for p in self.placements)
        log.info("ray: %d task(s) on %d node(s): %d next to their shards, %d on any node", len(self.placements),
                 len(nodes), placed, len(self.placements) - placed)
