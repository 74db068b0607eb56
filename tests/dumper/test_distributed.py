"""Four gloo processes write one run; the reader sees every rank with its parallel axes."""

from __future__ import annotations

import pytest

from dumper.reader import open_run
from tests.helpers.procs import torchrun_like

CHILD = """
import torch, torch.distributed as dist
from dumper import dumper
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
dumper.set_parallel(tp=(rank % 2, 2), ep=(rank // 2, 2))
for step in range(3):
    for layer in range(2):
        with dumper.tags(layer=layer):
            x = torch.full((4, 8), float(rank * 100 + step * 10 + layer))
            dist.all_reduce(x)
            dumper.dump("hidden", x, dims="t h # tp:replicated ep:replicated")
            dumper.dump("shard", torch.full((4, 2), float(rank)), dims="t h[tp] # ep:replicated")
    dumper.step()
dist.barrier()
dist.destroy_process_group()
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("dist") / "run"
    torchrun_like(run_dir, CHILD, world_size=4)
    with open_run(run_dir) as opened:
        yield opened


def test_all_four_ranks_present_and_closed(run):
    assert [r.rank for r in run.ranks] == [0, 1, 2, 3]
    assert [r.directory for r in run.ranks] == [f"rank-0000{i}" for i in range(4)]
    assert all(r.status == "closed" for r in run.ranks)
    assert run.world_size == 4
    assert run.problems == []


def test_parallel_metadata_per_rank(run):
    for rank in run.ranks:
        for record in rank.records:
            assert record.rank == rank.rank and record.world_size == 4
            assert record.parallel["tp"].rank == rank.rank % 2 and record.parallel["tp"].size == 2
            assert record.parallel["ep"].rank == rank.rank // 2 and record.parallel["ep"].size == 2
        assert rank.info.parallel == {"tp": {"rank": rank.rank % 2, "size": 2}, "ep": {"rank": rank.rank // 2, "size": 2}}


def test_values_and_order(run):
    for rank in run.ranks:
        assert [r.seq for r in rank.records] == list(range(12))
        assert rank.steps == [0, 1, 2]
        hidden = [r for r in rank.records if r.name == "hidden" and r.step == 2 and r.tags == {"layer": 1}]
        (record,) = hidden
        expected = sum(r * 100 + 2 * 10 + 1 for r in range(4))
        assert float(run.load(record, verify=True)[0, 0]) == expected
    # execution order across the run: step, then rank, then seq
    keys = [(r.step, r.rank, r.seq) for r in run.records]
    assert keys == sorted(keys)
