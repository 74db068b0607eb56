"""Dumps issued while a CUDA graph is being captured.

A copy enqueued during capture is not run then: it becomes a node of the graph and
runs at every replay. So a dump under capture allocates a static device buffer that
belongs to the graph being captured (keyed by dump site and occurrence, sized at
capture) and enqueues one device-to-device copy into it; the copy is captured with
the engine's kernels. After each replay of that graph the dumper emits the buffers as
ordinary records, with the replay's step, through the same asynchronous
device-to-host path as eager dumps (dumper/graph_replay.py does the emitting;
dumper/graph_hooks.py tells it when).

Engines capture a graph for a padded batch size and replay it for any real batch up
to that size; ``set_real_tokens`` (an engine preset calls ``dumper.set_real_tokens``)
says how many rows are real, and the emitted records keep only those rows.

Static buffers count against a budget (``DUMPCMP_GRAPH_MB``); a site that does not fit
is dropped with one warning naming it, and the graph is captured without it. Every
site that fired under capture, how often, and what was lost and why, is summed in
``GraphDumps.coverage()``: the ``graphs`` entry of rank.json (docs/format.md).

Nothing here synchronises with the device. Everything runs on the engine thread.
"""

from __future__ import annotations

import json
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable

# Why a dump under capture could not be recorded (the "why" of the coverage line).
LOST_BUDGET = "graph buffer budget exceeded (raise DUMPCMP_GRAPH_MB)"
LOST_CALLABLE = "a callable cannot be re-evaluated at replay (pass the tensor itself)"
LOST_NOT_CUDA = "not a CUDA tensor: its value at replay is unknown to the graph"
LOST_CAPTURE_FAILED = "the capture was abandoned before capture_end"
LOST_INDUCTOR_GRAPHS = ("inside inductor's own CUDA graphs (torch.compile mode='reduce-overhead'), which refuse "
                        "memory they do not track; compile without it and capture with torch.cuda.graph, as vLLM does")
# Captures that check their memory pool for allocations they did not make (and fail the
# engine's run if they find one): a static buffer cannot live there.
POOL_CHECKING_CAPTURERS = ("torch._inductor.cudagraph_trees",)

# Dim names of the batch axis that padding extends (dumper/dims.py): tokens, requests.
_BATCH_DIM_NAMES = ("t", "r")


@dataclass(frozen=True, kw_only=True)
class SiteKey:
    """A dump site within one capture: its name, its tags, and which call of it this is."""

    name: str
    tags: str  # the tags as sorted JSON: one site per tag set (e.g. per layer)
    occurrence: int


@dataclass(kw_only=True)
class GraphSlot:
    """One static buffer of a captured graph and what to write with it after each replay."""

    key: SiteKey
    tags: dict[str, Any]
    dims: str | None
    parallel: Any  # dumper.parallel.ParallelInfo at capture
    buffer: Any  # torch.Tensor, on the capturing device; refreshed by every replay
    batch_dim: int | None  # the axis padded to the graph's batch size, if any
    captured_rows: int | None  # that axis' size at capture

    @property
    def nbytes(self) -> int:
        return self.buffer.numel() * self.buffer.element_size()

    def rows_for(self, real_tokens: int | None) -> Any:
        """The buffer trimmed to the replay's real batch (a view; no copy, no sync)."""
        if self.batch_dim is None or real_tokens is None or self.captured_rows is None:
            return self.buffer
        if not 0 <= real_tokens < self.captured_rows:
            return self.buffer
        return self.buffer.narrow(self.batch_dim, 0, real_tokens)


@dataclass(kw_only=True)
class SiteCoverage:
    captured: int = 0  # static buffers made for this site (all graphs, all occurrences)
    emitted: int = 0  # records written from them after replays
    lost: dict[str, int] = field(default_factory=dict)  # reason -> dump calls not recorded
    steps: tuple[int, int] | None = None  # first and last step of an emitted record

    def to_json(self) -> dict[str, Any]:
        return {"captured": self.captured, "emitted": self.emitted, "lost": dict(self.lost),
                "steps": None if self.steps is None else list(self.steps)}


@dataclass(kw_only=True)
class _Capture:
    """The capture in progress: its slots so far and each site's next occurrence."""

    batch_tokens: int | None
    slots: list[GraphSlot] = field(default_factory=list)
    occurrences: dict[tuple[str, str], int] = field(default_factory=dict)
    refused: str | None = None  # why no dump of this capture can be recorded (decided at its first dump)
    checked: bool = False


@dataclass(kw_only=True)
class _Graph:
    slots: list[GraphSlot]
    batch_tokens: int | None
    nbytes: int


def batch_dim_of(shape: tuple[int, ...], dims: str | None, batch_tokens: int | None) -> int | None:
    """The axis a padded batch extends: the dims' token (``t``) or request (``r``) axis, else axis 0.

    Only an axis whose size equals the graph's batch size at capture counts: a tensor
    that is not per token (weights, counts per expert) is emitted whole.
    """
    if batch_tokens is None or not shape:
        return None
    axis = 0
    if dims:
        from dumper.dims import parse_dims
        from dumper.errors import DumpcmpError

        try:
            spec = parse_dims(dims)
        except DumpcmpError:
            spec = None
        if spec is not None and spec.ndim == len(shape):
            named = [index for index, dim in enumerate(spec.dims) if dim.name in _BATCH_DIM_NAMES]
            if named:
                axis = named[0]
    return axis if shape[axis] == batch_tokens else None


class GraphDumps:
    """Static buffers of the graphs this process captured with dumps, and their coverage."""

    def __init__(self, *, budget_bytes: int, warn: Callable[[str, str], None]) -> None:
        self.budget_bytes = budget_bytes
        self.used_bytes = 0
        self._warn = warn  # (once-key, message)
        self._capture: _Capture | None = None
        self._graphs: dict[int, _Graph] = {}
        self._sites: dict[str, SiteCoverage] = {}
        self._real_tokens: int | None = None
        self.graphs_captured = 0
        self.replays = 0
        # NOTE: the copy into a static buffer; under stream capture it becomes a graph
        # node. Replaceable so that the bookkeeping can be tested without a device.
        self.copy: Callable[[Any, Any], None] = _copy

    # ------------------------------------------------------------ batch size
    @property
    def real_tokens(self) -> int | None:
        return self._real_tokens

    def set_real_tokens(self, count: int | None) -> None:
        """Rows of the batch that runs next: at capture the graph's batch size, before a replay the real count."""
        self._real_tokens = None if count is None else int(count)

    # --------------------------------------------------------------- capture
    @property
    def capturing(self) -> bool:
        return self._capture is not None

    def begin(self) -> None:
        """A capture starts (``CUDAGraph.capture_begin``); slots recorded from now on belong to it."""
        if self._capture is not None:
            self._abandon()
        self._capture = _Capture(batch_tokens=self._real_tokens)

    def record(self, name: str, tensor: Any, *, dims: str | None, tags: dict[str, Any], parallel: Any) -> bool:
        """A dump under capture: copy ``tensor`` into a new static buffer of the graph. False if lost.

        The caller has checked that ``tensor`` lives on the capturing device.
        """
        import torch

        capture = self._capture
        if capture is None:
            # A capture begun before the hooks were installed (the first dump of the
            # process happened inside it): its capture_end, now hooked, binds it.
            capture = self._capture = _Capture(batch_tokens=self._real_tokens)
        tag_key = json.dumps(tags, sort_keys=True, default=str)
        site = (name, tag_key)
        occurrence = capture.occurrences.get(site, 0)
        capture.occurrences[site] = occurrence + 1
        nbytes = tensor.numel() * tensor.element_size()
        if self.used_bytes + nbytes > self.budget_bytes:
            self.lose(name, LOST_BUDGET)
            self._warn(
                f"graph-budget:{name}",
                f"dumpcmp: not dumping {name!r} under CUDA graphs: its static buffer ({nbytes} bytes) would pass "
                f"the graph buffer budget ({self.used_bytes} of {self.budget_bytes} bytes used); raise "
                "DUMPCMP_GRAPH_MB or filter sites out with DUMPCMP_FILTER (dropped sites are listed in rank.json)",
            )
            return False
        # NOTE: allocated on the capturing stream: the graph's private memory pool
        # holds it, and nothing else reuses it while the graph (and this slot) lives.
        buffer = torch.empty(tensor.shape, dtype=tensor.dtype, device=tensor.device)
        self.copy(buffer, tensor)
        shape = tuple(tensor.shape)
        batch_dim = batch_dim_of(shape, dims, capture.batch_tokens)
        capture.slots.append(GraphSlot(
            key=SiteKey(name=name, tags=tag_key, occurrence=occurrence), tags=dict(tags), dims=dims,
            parallel=parallel, buffer=buffer, batch_dim=batch_dim,
            captured_rows=None if batch_dim is None else shape[batch_dim],
        ))
        self.used_bytes += nbytes
        self._site(name).captured += 1
        return True

    def refusal(self, *, captured_by: Callable[[], str | None]) -> str | None:
        """Why the capture in progress can hold no static buffer, or None; asked once per capture."""
        capture = self._capture
        if capture is None:
            capture = self._capture = _Capture(batch_tokens=self._real_tokens)
        if not capture.checked:
            capture.checked = True
            if captured_by() in POOL_CHECKING_CAPTURERS:
                capture.refused = LOST_INDUCTOR_GRAPHS
        return capture.refused

    def new_run(self) -> None:
        """The dumper moved to another run directory: coverage starts again; live graphs keep their buffers."""
        self._sites = {}
        self.graphs_captured = len(self._graphs)
        self.replays = 0

    def lose(self, name: str, reason: str) -> None:
        lost = self._site(name).lost
        lost[reason] = lost.get(reason, 0) + 1

    def end(self, graph: Any) -> None:
        """The capture of ``graph`` completed: its slots are refreshed by every replay from now on."""
        capture, self._capture = self._capture, None
        if capture is None:
            return
        key = id(graph)
        if key in self._graphs:
            self.discard(graph)
        nbytes = sum(slot.nbytes for slot in capture.slots)
        self._graphs[key] = _Graph(slots=capture.slots, batch_tokens=capture.batch_tokens, nbytes=nbytes)
        self.graphs_captured += 1
        try:
            # The buffers go when the graph goes.
            weakref.finalize(graph, self._forget, key)
        except TypeError:
            pass

    def discard(self, graph: Any) -> None:
        """``CUDAGraph.reset``: the graph and its buffers are gone."""
        self._forget(id(graph))

    def _forget(self, key: int) -> None:
        entry = self._graphs.pop(key, None)
        if entry is not None:
            self.used_bytes -= entry.nbytes

    def _abandon(self) -> None:
        capture, self._capture = self._capture, None
        if capture is None:
            return
        for slot in capture.slots:
            self.used_bytes -= slot.nbytes
            site = self._site(slot.key.name)
            site.captured -= 1
            self.lose(slot.key.name, LOST_CAPTURE_FAILED)

    # ---------------------------------------------------------------- replay
    def knows(self, graph: Any) -> bool:
        return id(graph) in self._graphs

    def replayed(self, graph: Any) -> list[tuple[GraphSlot, Any]]:
        """After a replay of ``graph``: each slot with its buffer trimmed to the real batch."""
        entry = self._graphs.get(id(graph))
        if entry is None:
            return []
        self.replays += 1
        real = self._real_tokens
        return [(slot, slot.rows_for(real)) for slot in entry.slots]

    def emitted(self, name: str, step: int) -> None:
        site = self._site(name)
        site.emitted += 1
        site.steps = (step, step) if site.steps is None else (min(site.steps[0], step), max(site.steps[1], step))

    # -------------------------------------------------------------- coverage
    def _site(self, name: str) -> SiteCoverage:
        site = self._sites.get(name)
        if site is None:
            site = self._sites[name] = SiteCoverage()
        return site

    def coverage(self) -> dict[str, Any]:
        """The ``graphs`` entry of rank.json."""
        dropped = sorted(name for name, site in self._sites.items() if site.lost)
        return {
            "graphs_captured": self.graphs_captured,
            "graphs_live": len(self._graphs),
            "replays": self.replays,
            "budget_bytes": self.budget_bytes,
            "used_bytes": self.used_bytes,
            "sites": {name: self._sites[name].to_json() for name in sorted(self._sites)},
            "lost_sites": dropped,
        }


def _copy(buffer: Any, tensor: Any) -> None:
    buffer.copy_(tensor)
