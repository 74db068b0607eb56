"""Dumps under CUDA graphs, the parts that need no device (CI has none).

The bookkeeping of dumper/cudagraph.py (keying by site and occurrence, trimming to the
real batch, the memory budget, the coverage line) and the replay hook's lifecycle,
with real dumper runs read back from disk. On the CPU nothing captures: a test
``HostGraph`` plays the part of the CUDA graph (the dumper's copy into a static buffer
becomes one of its nodes, re-run at each replay, as stream capture would). The
capture itself runs on a GPU in tests/dumper/test_cuda_graphs.py.
"""

from __future__ import annotations

import json
import logging

import pytest
import torch

from dumper import graph_hooks
from dumper.api import Dumper
from dumper.config import config_from_env
from dumper.cudagraph import LOST_BUDGET, GraphDumps, batch_dim_of
from dumper.graph_replay import on_graph_event
from dumper.errors import ConfigError
from dumper.parallel import ParallelInfo
from dumper.reader import open_run
from dumper.stats import checksum

INFO = ParallelInfo(rank=0, world_size=1)


class HostGraph:
    """A stand-in for a CUDA graph on the CPU: the work of the "captured" function, re-run at replay."""

    def __init__(self) -> None:
        self.nodes: list = []

    def node(self, work) -> None:
        self.nodes.append(work)
        work()

    def replay(self) -> None:
        for work in self.nodes:
            work()


def _capture(graphs: GraphDumps, graph: HostGraph, function) -> None:
    graphs.copy = lambda buffer, tensor: graph.node(lambda: buffer.copy_(tensor))
    graphs.begin()
    function()
    graphs.end(graph)


def _dumper(tmp_path, **changes) -> Dumper:
    local = Dumper()
    local.configure(dir=str(tmp_path / "run"), run_id="graphs-test", **changes)
    return local


def _records(tmp_path):
    with open_run(tmp_path / "run") as run:
        return [(record, run.load(record, verify=True)) for record in run.records]


def _rank_json(local: Dumper) -> dict:
    with open(f"{local.rank_dir}/rank.json", encoding="utf-8") as handle:
        return json.load(handle)


# ------------------------------------------------------------------ trimming axis
def test_batch_dim_is_the_token_or_request_axis_of_the_graph_batch_size():
    assert batch_dim_of((8, 64), "t h", 8) == 0
    assert batch_dim_of((2, 8, 16), "k t d", 8) == 1  # the dims name the token axis
    assert batch_dim_of((8, 128), "r v", 8) == 0  # requests: one decode token each
    assert batch_dim_of((8, 64), None, 8) == 0  # no dims: the leading axis
    assert batch_dim_of((16,), "e", 8) is None  # per-expert counts are not padded
    assert batch_dim_of((8, 64), "t h", None) is None  # no batch size declared at capture
    assert batch_dim_of((8, 64), "t h[", 8) == 0  # unparsable dims: the leading axis


# -------------------------------------------------------- keying, budget, coverage
def test_sites_are_keyed_by_name_tags_and_occurrence():
    graphs = GraphDumps(budget_bytes=1 << 20, warn=lambda key, message: None)
    graph = HostGraph()
    x = torch.arange(8.0)

    def work():
        for layer in range(2):
            for _ in range(3):
                graphs.record("hidden", x, dims=None, tags={"layer": layer}, parallel=INFO)

    _capture(graphs, graph, work)
    slots = [slot for slot, _ in graphs.replayed(graph)]
    keys = [(slot.key.name, json.loads(slot.key.tags)["layer"], slot.key.occurrence) for slot in slots]
    assert keys == [("hidden", layer, occurrence) for layer in range(2) for occurrence in range(3)]
    assert graphs.used_bytes == 6 * 8 * 4
    assert graphs.coverage()["sites"]["hidden"] == {"captured": 6, "emitted": 0, "lost": {}, "steps": None}


def test_budget_drops_sites_with_a_warning_naming_them_and_frees_with_the_graph():
    warnings: dict[str, str] = {}
    graphs = GraphDumps(budget_bytes=100, warn=warnings.setdefault)
    first, second = HostGraph(), HostGraph()
    small, big = torch.zeros(4), torch.zeros(40)  # 16 and 160 bytes

    def work():
        graphs.record("small", small, dims=None, tags={}, parallel=INFO)
        graphs.record("big", big, dims=None, tags={}, parallel=INFO)

    _capture(graphs, first, work)
    assert [slot.key.name for slot, _ in graphs.replayed(first)] == ["small"]
    assert graphs.used_bytes == 16
    (message,) = warnings.values()
    assert "'big'" in message and "DUMPCMP_GRAPH_MB" in message and "100 bytes" in message
    coverage = graphs.coverage()
    assert coverage["lost_sites"] == ["big"]
    assert coverage["sites"]["big"] == {"captured": 0, "emitted": 0, "lost": {LOST_BUDGET: 1}, "steps": None}
    graphs.discard(first)  # CUDAGraph.reset: the buffers go back to the budget
    assert graphs.used_bytes == 0
    _capture(graphs, second, lambda: graphs.record("small", small, dims=None, tags={}, parallel=INFO))
    assert graphs.used_bytes == 16 and not graphs.knows(first) and graphs.knows(second)


def test_an_abandoned_capture_gives_its_buffers_back_and_counts_them_lost():
    graphs = GraphDumps(budget_bytes=1 << 20, warn=lambda key, message: None)
    graphs.begin()
    graphs.record("x", torch.zeros(4), dims=None, tags={}, parallel=INFO)
    graphs.begin()  # the previous capture never reached capture_end
    assert graphs.used_bytes == 0
    assert graphs.coverage()["sites"]["x"]["lost"] == {"the capture was abandoned before capture_end": 1}


# ------------------------------------------------- replays written by a real dumper
def test_replays_are_written_with_their_step_trimmed_to_the_real_batch(tmp_path):
    local = _dumper(tmp_path)
    local.dump("warmup", torch.zeros(1))  # the writer runs before any capture, as in engines
    graphs = local._graph_dumps()
    assert graph_hooks.installed() and local in graph_hooks.owners()
    padded = 4
    static_in = torch.zeros(padded, 3)
    hidden = torch.zeros(padded, 3)
    graph = HostGraph()
    local.set_real_tokens(padded)  # at capture: the graph's batch size

    def forward():
        graph.node(lambda: torch.mul(static_in, 2, out=hidden))
        with local.tags(layer=0):
            graphs.record("hidden", hidden, dims="t h", tags={"layer": 0}, parallel=INFO)
        graphs.record("per_expert", torch.arange(5.0), dims="e", tags={}, parallel=INFO)

    _capture(graphs, graph, forward)
    expected = []
    for step, real in ((1, 3), (2, 1), (3, 4)):
        local.set_step(step)
        static_in.copy_(torch.arange(padded * 3.0).view(padded, 3) + step)
        static_in[real:] = -1.0  # padding rows
        local.set_real_tokens(real)  # before the replay: the real count
        graph.replay()
        on_graph_event(local, "replay", graph)  # what the CUDAGraph.replay hook does
        expected.append((step, real, (static_in[:real] * 2).clone()))
    local.close()
    assert not graph_hooks.installed()  # the last owner out unhooks CUDAGraph
    records = [(r, value) for r, value in _records(tmp_path) if r.name != "warmup"]
    hidden_records = [(r, value) for r, value in records if r.name == "hidden"]
    assert [(r.step, r.tags, tuple(r.shape)) for r, _ in hidden_records] == [
        (step, {"layer": 0}, (real, 3)) for step, real, _ in expected]
    for (_, value), (_, _, want) in zip(hidden_records, expected):
        assert checksum(value) == checksum(want)  # exactly the real rows of that replay
    counts = [value for r, value in records if r.name == "per_expert"]
    assert len(counts) == 3 and all(torch.equal(value, torch.arange(5.0)) for value in counts)
    coverage = _rank_json(local)["graphs"]
    assert coverage["replays"] == 3 and coverage["graphs_captured"] == 1
    assert coverage["sites"] == {"hidden": {"captured": 1, "emitted": 3, "lost": {}, "steps": [1, 3]},
                                 "per_expert": {"captured": 1, "emitted": 3, "lost": {}, "steps": [1, 3]}}


def test_replays_obey_the_filter_by_step(tmp_path):
    local = _dumper(tmp_path, filter="step=2")
    local.set_step(2)
    local.dump("warmup", torch.zeros(1))
    graphs = local._graph_dumps()
    graph = HostGraph()
    x = torch.ones(2)
    _capture(graphs, graph, lambda: graphs.record("x", x, dims=None, tags={}, parallel=INFO))
    for step in (1, 2, 3):
        local.set_step(step)
        graph.replay()
        on_graph_event(local, "replay", graph)
    local.close()
    assert [(r.name, r.step) for r, _ in _records(tmp_path)] == [("warmup", 2), ("x", 2)]


def test_a_dumper_that_never_dumps_cuda_tensors_leaves_cudagraph_alone(tmp_path):
    original = torch.cuda.CUDAGraph.__dict__.get("replay")
    local = _dumper(tmp_path)
    local.dump("cpu", torch.ones(3))
    assert not graph_hooks.installed() and torch.cuda.CUDAGraph.__dict__.get("replay") is original
    local.close()
    assert _rank_json(local)["graphs"] is None


# ------------------------------------------------------------ the hook's lifecycle
def test_install_wraps_cudagraph_once_and_the_last_owner_restores_it():
    cls = torch.cuda.CUDAGraph
    before = {name: cls.__dict__.get(name) for name in ("capture_begin", "capture_end", "replay", "reset")}
    first, second = Dumper(), Dumper()
    graph_hooks.install(first)
    wrapped = cls.__dict__["replay"]
    graph_hooks.install(second)
    graph_hooks.install(first)
    assert cls.__dict__["replay"] is wrapped and getattr(wrapped, "__dumpcmp_hook__", False)
    assert graph_hooks.owners() == (first, second)
    graph_hooks.uninstall(first)
    assert cls.__dict__["replay"] is wrapped  # second still dumps
    graph_hooks.uninstall(second)
    assert {name: cls.__dict__.get(name) for name in before} == before
    assert not graph_hooks.installed()


def test_a_hooked_method_calls_torch_then_tells_every_owner():
    seen: list[tuple[str, object]] = []

    class Owner:
        def _graph_event(self, event, graph):
            seen.append((event, graph))

    calls = []
    owner = Owner()
    graph_hooks._owners.append(owner)
    try:
        replay = graph_hooks._wrapped("replay", lambda graph: calls.append(("torch", graph)) or "done")
        begin = graph_hooks._wrapped("capture_begin", lambda graph: calls.append(("torch", graph)))
        assert replay("g") == "done"
        begin("g")
    finally:
        graph_hooks._owners.remove(owner)
    # replay: torch first, then the dumper; capture_begin: the dumper first.
    assert calls == [("torch", "g"), ("torch", "g")]
    assert seen == [("replay", "g"), ("capture_begin", "g")]


def test_a_failing_graph_event_disables_dumping_and_never_reaches_the_engine(tmp_path, caplog):
    local = _dumper(tmp_path)
    local.dump("warmup", torch.zeros(1))
    graphs = local._graph_dumps()
    graph = HostGraph()
    _capture(graphs, graph, lambda: graphs.record("x", torch.ones(2), dims=None, tags={}, parallel=INFO))
    graphs.replayed = None  # a bug in the dumper
    with caplog.at_level(logging.WARNING, logger="dumper.api"):
        local._graph_event("replay", graph)
    local.close()
    assert not local.enabled
    assert any("dumping disabled after an error" in r.getMessage() for r in caplog.records)


# ------------------------------------------------------------------------ settings
def test_graph_budget_setting():
    assert config_from_env({"DUMPCMP_GRAPH_MB": "64"}).graph_bytes == 64 << 20
    assert config_from_env({}).graph_bytes == 1024 << 20
    with pytest.raises(ConfigError, match="DUMPCMP_GRAPH_MB"):
        config_from_env({"DUMPCMP_GRAPH_MB": "lots"})


# -------------------------------------------------------- what the comparator makes of it
def test_a_divergence_only_in_graph_replays_gets_the_graph_hint(tmp_path):
    from comparator import compare

    def value(step: int) -> torch.Tensor:
        return torch.arange(12.0).view(4, 3) * (step + 1)

    baseline = Dumper()
    baseline.configure(dir=str(tmp_path / "eager"), run_id="eager")
    for step in range(3):
        baseline.set_step(step)
        baseline.dump("hidden", value(step), dims="t h")
    baseline.close()
    target = Dumper()
    target.configure(dir=str(tmp_path / "graph"), run_id="graph")
    target.dump("hidden", value(0), dims="t h")  # step 0 runs eagerly (a prefill)
    graphs = target._graph_dumps()
    static = torch.zeros(4, 3)
    graph = HostGraph()
    target.set_real_tokens(4)
    _capture(graphs, graph, lambda: graphs.record("hidden", static, dims="t h", tags={}, parallel=INFO))
    for step in (1, 2):
        target.set_step(step)
        static.copy_(value(step))
        static[1] += 1.0 if step == 2 else 0.0  # a graph-only fault at step 2
        graph.replay()
        on_graph_event(target, "replay", graph)
    target.close()
    report = compare(tmp_path / "eager", tmp_path / "graph")
    first = report.first_divergence
    assert (first.name, first.step) == ("hidden", 2)
    assert first.hint.startswith("the target ran this step from a CUDA graph and the baseline eagerly")
    assert [r.status for r in report.results] == ["pass", "pass", "fail"]


def test_a_capture_by_inductors_cuda_graphs_refuses_buffers_once_per_capture():
    from dumper.cudagraph import LOST_INDUCTOR_GRAPHS

    graphs = GraphDumps(budget_bytes=1 << 20, warn=lambda key, message: None)
    asked = []

    def inductor():
        asked.append(1)
        return "torch._inductor.cudagraph_trees"

    graphs.begin()
    assert graphs.refusal(captured_by=inductor) == LOST_INDUCTOR_GRAPHS
    assert graphs.refusal(captured_by=inductor) == LOST_INDUCTOR_GRAPHS and len(asked) == 1
    graphs.end(HostGraph())
    graphs.begin()  # another capturer (torch.cuda.graph from an engine)
    assert graphs.refusal(captured_by=lambda: None) is None


def test_a_new_run_directory_starts_the_coverage_again(tmp_path):
    local = _dumper(tmp_path)
    local.dump("warmup", torch.zeros(1))
    graphs = local._graph_dumps()
    graph = HostGraph()
    _capture(graphs, graph, lambda: graphs.record("x", torch.ones(2), dims=None, tags={}, parallel=INFO))
    graph.replay()
    on_graph_event(local, "replay", graph)
    local.configure(dir=str(tmp_path / "second"))
    local.dump("warmup", torch.zeros(1))
    graph.replay()  # the graph lives on: its buffers are emitted into the new run
    on_graph_event(local, "replay", graph)
    local.close()
    with open(f"{local.rank_dir}/rank.json", encoding="utf-8") as handle:
        coverage = json.load(handle)["graphs"]
    assert coverage["replays"] == 1 and coverage["sites"]["x"]["emitted"] == 1
