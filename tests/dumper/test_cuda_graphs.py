"""Dumps under CUDA-graph capture, on a real device: recorded into the graph, emitted after each replay.

Skipped without a GPU (CI has none; the bookkeeping is tested on the CPU in
tests/dumper/test_cudagraph.py); run on a GPU machine and recorded in docs/gpu.md.
"""

from __future__ import annotations

import json
import logging
import time

import pytest
import torch

from dumper import graph_hooks
from dumper.api import Dumper
from dumper.reader import open_run
from dumper.stats import checksum

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (CI has none)")

PADDED = 8


def _dumper(run_dir, **changes) -> Dumper:
    local = Dumper()
    local.configure(dir=str(run_dir), run_id="cuda-graph-test", **changes)
    return local


def _records(run_dir):
    with open_run(run_dir) as run:
        return [(record, run.load(record, verify=True)) for record in run.records]


def _rank_json(local: Dumper) -> dict:
    with open(f"{local.rank_dir}/rank.json", encoding="utf-8") as handle:
        return json.load(handle)


def _forward(local: Dumper, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """A small decode-like step with dumps at several sites, one of them twice."""
    hidden = torch.tanh(x * 1.5 + 0.25)
    local.dump("hidden", hidden, dims="t h", layer=0)
    scores = (hidden * weight).sum(dim=-1, keepdim=True)
    local.dump("scores", scores, dims="t 1", layer=0)
    out = hidden * torch.sigmoid(scores)
    local.dump("hidden", out, dims="t h", layer=0)  # the same site again: occurrence 1
    local.dump("weight", weight, dims="h")  # not per token: emitted whole
    return out


def _capture(local: Dumper, static_x: torch.Tensor, weight: torch.Tensor):
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        was = local.enabled
        local.enabled = False  # warm-up: no records
        _forward(local, static_x, weight)
        local.enabled = was
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    local.flush()
    graph = torch.cuda.CUDAGraph()
    local.set_real_tokens(PADDED)
    with torch.cuda.graph(graph):
        static_out = _forward(local, static_x, weight)
    return graph, static_out


def _inputs(step: int, rows: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(step)
    return torch.randn(rows, 64, generator=generator).cuda()


def test_graph_dumps_equal_eager_dumps_bit_for_bit(tmp_path):
    weight = torch.randn(64, device="cuda")
    real_rows = {1: 5, 2: 8, 3: 1}
    # Eager: the real rows only, as an engine without graphs runs them.
    eager = _dumper(tmp_path / "eager")
    for step, rows in real_rows.items():
        eager.set_step(step)
        _forward(eager, _inputs(step, rows), weight)
    eager.close()
    # Graph: captured once for 8 rows, replayed with the real rows and padding.
    local = _dumper(tmp_path / "graph")
    local.dump("warmup", torch.zeros(1, device="cuda"))
    static_x = torch.zeros(PADDED, 64, device="cuda")
    graph, static_out = _capture(local, static_x, weight)
    outputs = {}
    for step, rows in real_rows.items():
        local.set_step(step)
        static_x.normal_()  # padding rows hold garbage, as in engines
        static_x[:rows].copy_(_inputs(step, rows))
        local.set_real_tokens(rows)
        graph.replay()
        outputs[step] = static_out[:rows].clone()
    local.close()
    graph_records = [(r, v) for r, v in _records(tmp_path / "graph") if r.name != "warmup"]
    eager_records = _records(tmp_path / "eager")
    assert [(r.name, r.step, r.tags, r.shape) for r, _ in graph_records] == [
        (r.name, r.step, r.tags, r.shape) for r, _ in eager_records]
    assert len(graph_records) == 4 * len(real_rows)
    for (graph_record, value), (eager_record, _) in zip(graph_records, eager_records):
        assert graph_record.checksum == eager_record.checksum == checksum(value), graph_record.name
    hidden_out = [v for r, v in graph_records if r.name == "hidden"][1::2]
    assert all(torch.equal(value, outputs[step].cpu()) for value, step in zip(hidden_out, real_rows))
    coverage = _rank_json(local)["graphs"]
    assert coverage["replays"] == 3 and coverage["lost_sites"] == []
    assert coverage["sites"]["hidden"] == {"captured": 2, "emitted": 6, "lost": {}, "steps": [1, 3]}


def test_replays_do_not_wait_for_the_device_and_the_next_replay_waits_for_the_copies(tmp_path):
    local = _dumper(tmp_path / "run")
    local.dump("warmup", torch.zeros(1 << 20, device="cuda"))
    local.flush()
    big = 1 << 22  # 16 MB per record: the copies take a while
    static_x = torch.zeros(big, device="cuda")
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = static_x * 2
        local.dump("y", y)
    torch.cuda._sleep(1000)  # the spin kernel's first launch, outside the timing
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    torch.cuda._sleep(10**7)
    end.record()
    end.synchronize()
    cycles_per_ms = 10**7 / start.elapsed_time(end)
    done = torch.cuda.Event()
    torch.cuda._sleep(int(cycles_per_ms * 500))  # the device is busy for 0.5 s
    queued = time.perf_counter()
    for step in range(10):
        local.set_step(step)
        static_x.fill_(float(step))  # queued behind the spin kernel, like the replays
        graph.replay()
    returned = time.perf_counter()
    done.record()
    still_busy = not done.query()
    torch.cuda.synchronize()
    local.close()
    timing = f"10 replays with dumps {1e3 * (returned - queued):.1f} ms on the host"
    print(timing)
    assert still_busy and returned - queued < 0.4, timing  # no replay waited for the device
    values = {record.step: value for record, value in _records(tmp_path / "run") if record.name == "y"}
    # Each copy saw its own replay's values: the next fill_ and replay waited for it.
    assert sorted(values) == list(range(10))
    assert all(bool((value == 2.0 * step).all()) for step, value in values.items())


def test_the_budget_drops_sites_with_a_warning_and_the_graph_still_runs(tmp_path, caplog):
    local = _dumper(tmp_path / "run", graph_bytes=2100)
    local.dump("warmup", torch.zeros(1, device="cuda"))
    static_x = torch.randn(4, 64, device="cuda")
    weight = torch.randn(64, device="cuda")
    with caplog.at_level(logging.WARNING, logger="dumper.api"):
        graph, static_out = _capture(local, static_x, weight)  # hidden 1024 B twice, scores 16 B, weight 256 B: weight does not fit
    local.set_real_tokens(4)
    graph.replay()
    torch.cuda.synchronize()
    expected = _forward(Dumper(), static_x, weight)  # an undumped eager run
    assert torch.equal(static_out, expected)
    local.close()
    coverage = _rank_json(local)["graphs"]
    assert coverage["used_bytes"] <= 3000 and coverage["lost_sites"]
    for name in coverage["lost_sites"]:
        assert any(f"'{name}'" in r.getMessage() and "DUMPCMP_GRAPH_MB" in r.getMessage() for r in caplog.records)
    written = {record.name for record, _ in _records(tmp_path / "run")}
    assert written - {"warmup"} == set(coverage["sites"]) - set(coverage["lost_sites"])


def test_first_dump_inside_a_capture_is_still_recorded(tmp_path):
    local = _dumper(tmp_path / "run")
    static_x = torch.randn(16, device="cuda")
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):  # the process's first dump happens during this capture
        local.dump("x2", static_x * 2)
    assert graph_hooks.installed()
    for step in range(2):
        local.set_step(step)
        graph.replay()
    local.close()
    values = [(r.step, v) for r, v in _records(tmp_path / "run")]
    assert [step for step, _ in values] == [0, 1]
    assert all(torch.equal(v, (static_x * 2).cpu()) for _, v in values)
    assert not graph_hooks.installed()


def test_what_cannot_be_replayed_is_reported_once_with_its_reason(tmp_path, caplog):
    local = _dumper(tmp_path / "run")
    local.dump("warmup", torch.zeros(1, device="cuda"))
    static_x = torch.randn(16, device="cuda")
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with caplog.at_level(logging.WARNING, logger="dumper.api"), torch.cuda.graph(graph):
        for _ in range(2):
            local.dump("lazy", lambda: static_x * 3)
            local.dump("host", torch.ones(3))
        out = static_x + 1
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, static_x + 1)  # the capture was not disturbed
    local.close()
    messages = [r.getMessage() for r in caplog.records if "under CUDA graph capture" in r.getMessage()]
    assert len(messages) == 2
    assert any("'lazy'" in m and "callable" in m for m in messages)
    assert any("'host'" in m and "not a CUDA tensor" in m for m in messages)
    info = _rank_json(local)
    assert info["graphs"]["lost_sites"] == ["host", "lazy"]
    assert sum(info["lost"].values()) == 4
    assert [r.name for r, _ in _records(tmp_path / "run")] == ["warmup"]


def test_dumps_inside_compiled_code_that_an_engine_captures(tmp_path):
    """vLLM's way: torch.compile the model, then capture the compiled code in a CUDA graph."""
    from dumper import dumper as engine_dumper  # the compiled dump operator runs the global dumper

    engine_dumper.configure(dir=str(tmp_path / "run"), run_id="compiled-graph-test")
    try:
        weight = torch.randn(64, 64, device="cuda") / 8

        def step(x: torch.Tensor) -> torch.Tensor:
            hidden = torch.tanh(x @ weight)
            engine_dumper.dump("hidden", hidden, dims="t h", layer=0)
            out = hidden * 2 + x
            engine_dumper.dump("out", out, dims="t h")
            return out

        compiled = torch.compile(step, fullgraph=True, dynamic=False)
        static_x = torch.randn(PADDED, 64, device="cuda")
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):  # compiles (dumping on: the dump operators are in the code) and warms up
                compiled(static_x)
        torch.cuda.current_stream().wait_stream(side)
        torch.cuda.synchronize()
        engine_dumper.flush()
        graph = torch.cuda.CUDAGraph()
        engine_dumper.set_real_tokens(PADDED)
        with torch.cuda.graph(graph):
            static_out = compiled(static_x)
        outputs = {}
        for step_number, rows in ((10, 5), (11, 8)):
            engine_dumper.set_step(step_number)
            static_x.normal_()
            engine_dumper.set_real_tokens(rows)
            graph.replay()
            outputs[step_number] = static_out[:rows].clone().cpu()
        engine_dumper.close()
    finally:
        engine_dumper.configure(dir=None)
    replayed = [(r, v) for r, v in _records(tmp_path / "run") if r.step >= 10]
    assert [(r.name, r.step, r.tags, r.shape) for r, _ in replayed] == [
        ("hidden", 10, {"layer": 0}, (5, 64)), ("out", 10, {}, (5, 64)),
        ("hidden", 11, {"layer": 0}, (8, 64)), ("out", 11, {}, (8, 64))]
    for record, value in replayed:
        if record.name == "out":
            assert torch.equal(value, outputs[record.step])  # the graph's own output, bit for bit


def test_an_engine_capture_in_global_mode_survives_a_busy_writer(tmp_path):
    """The writer thread polls the copies' events while the engine captures in torch's default ("global") mode.

    (CUDA forbids other threads "potentially unsafe" calls during a global-mode capture;
    an event query is not one of them here: the capture succeeds.)
    """
    local = _dumper(tmp_path / "run")
    local.dump("warmup", torch.zeros(1, device="cuda"))
    local.flush()
    static_x = torch.randn(1 << 20, device="cuda")
    torch.cuda._sleep(1000)
    torch.cuda.synchronize()
    torch.cuda._sleep(200_000_000)  # the copies below wait behind this: the writer keeps polling
    for index in range(8):
        local.dump("queued", static_x, index=index)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, capture_error_mode="global"):
        y = static_x * 3
        local.dump("y", y)
    graph.replay()
    torch.cuda.synchronize()
    local.close()
    names = [r.name for r, _ in _records(tmp_path / "run")]
    assert names.count("queued") == 8 and names.count("y") == 1


def test_dumps_under_inductors_own_cuda_graphs_are_refused_without_breaking_the_run(tmp_path, caplog):
    """torch.compile(mode="reduce-overhead"): inductor captures the graphs itself and fails a run
    whose graph pool holds memory it did not allocate, so no static buffer may go there."""
    from dumper import dumper as engine_dumper

    engine_dumper.configure(dir=str(tmp_path / "run"), run_id="reduce-overhead-test")
    try:
        weight = torch.randn(64, 64, device="cuda") / 8

        def step(x: torch.Tensor) -> torch.Tensor:
            hidden = torch.tanh(x @ weight)
            engine_dumper.dump("hidden", hidden, dims="t h")
            return hidden * 2

        compiled = torch.compile(step, mode="reduce-overhead", fullgraph=True, dynamic=False)
        outputs = {}
        with caplog.at_level(logging.WARNING, logger="dumper.api"):
            for step_number in range(6):
                engine_dumper.set_step(step_number)
                x = _inputs(step_number, PADDED)
                outputs[step_number] = compiled(x).clone()
                eager = torch.tanh(x @ weight) * 2
                assert torch.allclose(outputs[step_number], eager, rtol=1e-5, atol=1e-6)
        torch.cuda.synchronize()
        engine_dumper.close()
    finally:
        engine_dumper.configure(dir=None)
    with open(next((tmp_path / "run").glob("rank-*")) / "rank.json", encoding="utf-8") as handle:
        coverage = json.load(handle)["graphs"]
    assert coverage["lost_sites"] == ["hidden"]
    assert list(coverage["sites"]["hidden"]["lost"]) == [
        "inside inductor's own CUDA graphs (torch.compile mode='reduce-overhead'), which refuse memory they do "
        "not track; compile without it and capture with torch.cuda.graph, as vLLM does"]
    assert any("reduce-overhead" in r.getMessage() and "'hidden'" in r.getMessage() for r in caplog.records)
    # The steps inductor ran eagerly (its warm-up) are dumped as usual.
    eager_steps = [r.step for r, _ in _records(tmp_path / "run") if r.name == "hidden"]
    print("reduce-overhead: dumped steps", eager_steps, "coverage", coverage)
