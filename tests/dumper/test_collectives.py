"""The collective trace: wrapping torch.distributed, the records, restoring, failing safely."""

from __future__ import annotations

import json
import socket

import pytest
import torch
import torch.distributed as dist

from dumper import collectives
from dumper.api import Dumper
from dumper.collectives import CollectiveTracer, installed, read_collectives


@pytest.fixture(scope="module")
def world_of_one():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    if dist.is_initialized():
        yield
        return
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def _dumper(tmp_path) -> Dumper:
    d = Dumper()
    d.configure(dir=str(tmp_path / "run"), mode="stats", collectives=False)
    d.set_parallel(ep=(0, 1))
    return d


def test_records_sit_between_dumps_and_name_their_group(tmp_path, world_of_one):
    d = _dumper(tmp_path)
    tracer = CollectiveTracer(owner=d)
    rank_dir = tmp_path / "rank"
    rank_dir.mkdir()
    original = dist.all_reduce
    with installed(tracer):
        # (another test's dumping process may have wrapped it already: installs do not stack)
        assert hasattr(dist.all_reduce, "__dumpcmp_original__")
        tracer.attach(str(rank_dir))
        d.dump("a", torch.ones(3))
        group = dist.new_group([0])
        d.name_group(group, "ep")
        x = torch.ones(2, 4)
        dist.all_reduce(x, group=group)
        dist.all_gather([torch.empty(2, 4)], x)
        d.dump("b", x)
        d.step()
        dist.broadcast(x, 0)
    assert dist.all_reduce is original  # restored
    d.close()
    records = read_collectives(str(rank_dir))
    assert [(r["op"], r["after_seq"], r["step"], r["shape"], r["group"]["axis"]) for r in records] == [
        ("all_reduce", 0, 0, [2, 4], "ep"),
        ("all_gather", 0, 0, [2, 4], "world|ep"),  # the default group: every axis of size 1 fits
        ("broadcast", 1, 1, [2, 4], "world|ep"),
    ]
    assert records[0]["group"]["ranks"] == [0] and records[0]["dtype"] == "float32"
    assert records[0]["caller"][0].endswith("test_records_sit_between_dumps_and_name_their_group")


def test_a_failing_tracer_warns_once_and_the_collective_still_runs(tmp_path, world_of_one, caplog):
    d = _dumper(tmp_path)
    tracer = CollectiveTracer(owner=d)
    tracer.attach(str(tmp_path))
    tracer._group_info = None  # type: ignore[assignment]  # any bug inside the tracer
    with installed(tracer):
        x = torch.ones(2)
        dist.all_reduce(x)
        dist.all_reduce(x)
    assert x.tolist() == [1.0, 1.0]
    assert not tracer.active
    assert sum("collective tracing disabled" in r.message for r in caplog.records) == 1


def test_older_runs_and_torn_lines_read(tmp_path):
    assert read_collectives(str(tmp_path)) == []
    good = {"op": "all_reduce", "after_seq": 3, "step": 0}
    (tmp_path / collectives.COLLECTIVES_FILE).write_text(json.dumps(good) + "\n{\"op\": \"all_re")
    assert read_collectives(str(tmp_path)) == [good]
