"""dumper/writer.py as a module: RankWriter driven directly, in this process, on real files."""

from __future__ import annotations

import json
import os
import threading

import pytest
import torch

import dumper.writer as writer_module
from dumper.format import INDEX_FILE, RANK_INFO_FILE, RankInfo
from dumper.reader import open_run, read_index
from dumper.safetensors_io import read_header
from dumper.snapshot import Snapshotter
from dumper.writer import PendingRecord, RankWriter


def rank_info() -> RankInfo:
    return RankInfo(rank=0, world_size=1, pid=os.getpid(), host="test", argv=["test"], run_id="r1",
                    start_time=0.0, parallel={}, status="running")


class Rank:
    """One rank directory under a run, and the pieces a Dumper would give its writer."""

    def __init__(self, tmp_path, **writer_options):
        self.run_dir = tmp_path / "run"
        self.dir = self.run_dir / "rank-00000"
        self.dir.mkdir(parents=True)
        (self.run_dir / "run.json").write_text(json.dumps(
            {"schema_version": 1, "tool_version": "test", "run_id": "r1", "command": [], "mode": "tensor", "start_time": 0}))
        self.snapshotter = Snapshotter(pool_bytes=1 << 20)
        self.failures: list[BaseException] = []
        self.seq = 0
        self.writer = self.open(**writer_options)

    def open(self, *, mode="tensor", file_bytes=1 << 20, queue_bytes=1 << 20, info=None, **options):
        return RankWriter(rank_dir=str(self.dir), rank_info=info or rank_info(), mode=mode, queue_bytes=queue_bytes,
                          file_bytes=file_bytes, on_failure=self.failures.append, **options)

    def record(self, name: str, tensor: torch.Tensor, *, step: int = 0) -> PendingRecord:
        record = PendingRecord(seq=self.seq, step=step, name=name, tags={"layer": self.seq}, rank=0, world_size=1,
                               parallel={}, dims=None, time=1.5, nbytes=tensor.numel() * tensor.element_size(),
                               snapshot=self.snapshotter.take(tensor))
        self.seq += 1
        return record

    def rank_json(self) -> dict:
        return json.loads((self.dir / RANK_INFO_FILE).read_text())

    def index(self):
        records, torn, problems = read_index(str(self.dir / INDEX_FILE), source=self.dir.name)
        assert torn == 0 and problems == []
        return records


def test_batches_split_at_the_file_size_and_every_index_line_points_at_complete_data(tmp_path):
    rank = Rank(tmp_path, file_bytes=1000)
    tensors = [torch.full((100,), float(i)) for i in range(5)]  # 400 bytes each: two per file
    rank.writer.submit_many([rank.record(f"x{i}", t) for i, t in enumerate(tensors)])
    rank.writer.close()
    records = rank.index()
    assert [r.file for r in records] == ["data-000000.safetensors"] * 2 + ["data-000001.safetensors"] * 2 + [
        "data-000002.safetensors"]
    for record in records:
        entry = read_header(str(rank.dir / record.file))[record.key]
        assert (entry.dtype, entry.shape, entry.nbytes) == ("float32", (100,), 400)
    with open_run(rank.run_dir) as run:
        assert [float(run.load(r, verify=True)[0]) for r in run.records] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert rank.rank_json()["status"] == "closed" and rank.rank_json()["records"] == 5


def test_a_reopened_writer_appends_files_and_counts(tmp_path):
    rank = Rank(tmp_path)
    rank.writer.submit(rank.record("a", torch.ones(3)))
    rank.writer.close()
    again = rank.open(info=RankInfo.from_json(rank.rank_json()))
    again.submit(rank.record("b", torch.zeros(3), step=4))
    again.close()
    assert [(r.name, r.file) for r in rank.index()] == [("a", "data-000000.safetensors"), ("b", "data-000001.safetensors")]
    assert (rank.rank_json()["records"], rank.rank_json()["last_step"]) == (2, 4)


def test_stats_mode_writes_stats_and_checksums_but_no_data(tmp_path):
    rank = Rank(tmp_path, mode="stats")
    rank.writer.submit(rank.record("a", torch.tensor([3.0, 4.0])))
    rank.writer.close()
    (record,) = rank.index()
    assert record.file is None and record.key is None
    assert record.stats.l2 == 5.0 and record.checksum.startswith("xxh3_64:")
    assert not [name for name in os.listdir(rank.dir) if name.endswith(".safetensors")]


def test_a_failed_write_is_reported_once_and_later_records_are_dropped(tmp_path, monkeypatch):
    rank = Rank(tmp_path)
    rank.writer.submit(rank.record("kept", torch.ones(2)))
    rank.writer.flush()

    def full_disk(tensors, path, **options):
        open(path, "wb").close()
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(writer_module, "write_safetensors", full_disk)
    rank.writer.submit(rank.record("lost", torch.ones(2)))
    rank.writer.flush()
    rank.writer.submit(rank.record("after", torch.ones(2)))
    rank.writer.close()
    assert [type(exc) for exc in rank.failures] == [OSError]
    assert [r.name for r in rank.index()] == ["kept"]
    info = rank.rank_json()
    assert info["status"] == "failed" and "No space left on device" in info["error"] and info["records"] == 1
    # The half-written file is removed: the space goes back first.
    assert sorted(n for n in os.listdir(rank.dir) if "safetensors" in n) == ["data-000000.safetensors"]


def test_lost_records_are_counted_in_rank_json_at_once(tmp_path):
    rank = Rank(tmp_path)
    rank.writer.note_lost("x", "dumped during CUDA graph capture")
    assert rank.rank_json()["lost"] == {"x: dumped during CUDA graph capture": 1}
    rank.writer.note_lost("x", "dumped during CUDA graph capture")
    rank.writer.close()
    assert rank.rank_json()["lost"] == {"x: dumped during CUDA graph capture": 2}


def test_rank_json_keeps_its_padding_through_updates(tmp_path):
    rank = Rank(tmp_path)
    assert os.path.getsize(rank.dir / RANK_INFO_FILE) == 8192
    rank.writer.submit(rank.record("a", torch.ones(1)))
    rank.writer.close()
    assert os.path.getsize(rank.dir / RANK_INFO_FILE) == 8192


@pytest.mark.parametrize("workers", [0, 3])
def test_digest_workers_give_the_same_index(tmp_path, monkeypatch, workers):
    monkeypatch.setattr(writer_module, "DIGEST_WORKERS", workers)
    rank = Rank(tmp_path)
    generator = torch.Generator().manual_seed(0)
    tensors = [torch.randn(64, generator=generator) for _ in range(8)]
    submitters = [threading.Thread(target=rank.writer.submit, args=(rank.record(f"t{i}", t),)) for i, t in enumerate(tensors)]
    for thread in submitters:
        thread.start()
    for thread in submitters:
        thread.join()
    rank.writer.close()
    by_name = {r.name: r for r in rank.index()}
    for i, tensor in enumerate(tensors):
        record = by_name[f"t{i}"]
        assert record.stats.l2 == pytest.approx(float(tensor.double().norm()), rel=1e-12)


def test_submit_many_queues_in_order_and_waits_for_room_when_the_queue_is_full(tmp_path):
    """A CUDA-graph replay's records arrive together (dumper/graph_replay.py): more than the queue holds."""
    rank = Rank(tmp_path, queue_bytes=4096, file_bytes=2048)
    tensors = [torch.full((256,), float(index)) for index in range(12)]  # 1 KB each, 12 KB in all
    rank.writer.submit_many([rank.record(f"t{index}", tensor) for index, tensor in enumerate(tensors)])
    rank.writer.close()
    records = rank.index()
    assert [r.name for r in records] == [f"t{index}" for index in range(12)]
    with open_run(rank.run_dir) as run:
        assert all(torch.equal(run.load(r, verify=True), tensors[index]) for index, r in enumerate(records))
    assert rank.failures == []
