"""dumper/reader.py, dumper/run.py and dumper/loader.py as modules, on a run a real process wrote."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace

import pytest
import torch

from dumper.errors import RunFormatError, RunNotFoundError
from dumper.format import IndexRecord
from dumper.loader import TensorLoader
from dumper.reader import open_run, read_index
from tests.helpers.procs import dump_run

DUMPS = """
import torch
from dumper import dumper
for step in range(3):
    dumper.dump("x", torch.arange(4, dtype=torch.float32) + step, dims="t")
    dumper.dump("ids", torch.tensor([step, 7]))
    dumper.step()
"""


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("written") / "run"
    dump_run(run_dir, DUMPS)
    return run_dir


@pytest.fixture
def run_dir(written, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(written, copy)
    return copy


def _rank_json(run_dir, directory="rank-00000"):
    return run_dir / directory / "rank.json"


def test_a_clean_run_opens_complete(run_dir):
    with open_run(run_dir) as run:
        assert run.complete and run.mode == "tensor" and run.world_size == 1
        (rank,) = run.ranks
        assert (rank.steps, rank.last_step, rank.status) == ([0, 1, 2], 2, "closed")
        assert [(r.step, r.name) for r in run.records] == [(s, n) for s in range(3) for n in ("x", "ids")]
        assert run.load(run.records[2], verify=True).tolist() == [1.0, 2.0, 3.0, 4.0]


def test_torn_last_line_and_bad_middle_line_are_problems_not_failures(run_dir):
    index = run_dir / "rank-00000" / "index.jsonl"
    lines = index.read_text().splitlines()
    lines[1] = json.dumps({**json.loads(lines[1]), "seq": "one"})
    index.write_text("\n".join(lines) + "\n" + lines[0][:40])  # the writer died mid-line
    records, torn, problems = read_index(str(index), source="rank-00000")
    assert len(records) == 5 and torn == 1
    assert [p.split(": ", 1)[1] for p in problems] == [
        "line 2 is not a valid record (seq must be an integer, not 'one'); ignored",
        "line 7 is torn (the writer stopped mid-line); ignored",
    ]


def test_an_index_line_naming_a_path_is_refused(run_dir):
    index = run_dir / "rank-00000" / "index.jsonl"
    first = json.loads(index.read_text().splitlines()[0])
    index.write_text(json.dumps({**first, "file": "../../elsewhere.safetensors"}) + "\n")
    records, _, problems = read_index(str(index), source="rank-00000")
    assert records == [] and "outside its rank directory" in problems[0]


def test_leftovers_missing_ranks_and_unclosed_ranks_are_named(run_dir):
    stale = run_dir / "rank-00003"
    shutil.copytree(run_dir / "rank-00000", stale)
    info = json.loads(_rank_json(run_dir, "rank-00003").read_text())
    _rank_json(run_dir, "rank-00003").write_text(json.dumps({**info, "run_id": "an-older-run", "rank": 3, "world_size": 4}))
    info = json.loads(_rank_json(run_dir).read_text())
    _rank_json(run_dir).write_text(json.dumps({**info, "world_size": 2, "status": "running"}))
    with open_run(run_dir) as run:
        assert [r.directory for r in run.ranks] == ["rank-00000"]
        assert run.problems == [
            "rank-00000: did not close (still running, or killed); last step 2",
            "rank-00003: left over from an earlier run (run id an-older-run); ignored",
            "rank(s) 1 of 2 are absent",
        ]


def test_a_newer_schema_is_refused_with_what_to_do(run_dir):
    run_json = run_dir / "run.json"
    run_json.write_text(json.dumps({**json.loads(run_json.read_text()), "schema_version": 99}))
    with pytest.raises(RunFormatError, match="schema version 99, this dumpcmp reads up to 2; upgrade dumpcmp"):
        open_run(run_dir)


def test_not_a_run(tmp_path):
    with pytest.raises(RunNotFoundError, match="no such directory"):
        open_run(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunNotFoundError, match="no run here"):
        open_run(tmp_path / "empty")


# ----------------------------------------------------------------------------- the loader
def test_loader_reads_each_tensor_positionally_and_checks_against_the_index(run_dir):
    with open_run(run_dir) as run:
        loader = TensorLoader(run, verify_checksums=True)
        for record in run.records:
            loader.check(record)
            tensor = loader.load(record)
            assert str(tensor.dtype).removeprefix("torch.") == record.dtype and tuple(tensor.shape) == record.shape
        ids = [loader.load(r).tolist() for r in run.records if r.name == "ids"]
        assert ids == [[0, 7], [1, 7], [2, 7]]


def test_loader_refuses_an_index_that_disagrees_with_the_file(run_dir):
    with open_run(run_dir) as run:
        record = run.records[0]
        loader = TensorLoader(run)
        with pytest.raises(RunFormatError, match=r"holds \[4\] float32, but the index says \[4\] bfloat16"):
            loader.check(replace(record, dtype="bfloat16"))
        with pytest.raises(RunFormatError, match="no tensor '999' for x"):
            loader.load(replace(record, key="999"))
        with pytest.raises(RunFormatError, match="has no data: run dumped in stats mode"):
            loader.load(replace(record, file=None, key=None))


def test_loader_verifies_checksums_when_asked(run_dir):
    with open_run(run_dir) as run:
        record = run.records[0]
        path = run_dir / "rank-00000" / record.file
        data = bytearray(path.read_bytes())
        data[-1] ^= 0xFF  # flip bits of the last tensor's data, not of the header
        path.write_bytes(bytes(data))
        last = [r for r in run.records if r.file == record.file][-1]  # the file's last tensor
        assert TensorLoader(run).load(last) is not None  # without verifying, the bytes are read as they are
        with pytest.raises(RunFormatError, match=f"checksum mismatch for {last.name} seq {last.seq}"):
            TensorLoader(run, verify_checksums=True).load(last)


def test_a_data_file_linked_from_outside_the_run_is_refused(run_dir, tmp_path):
    with open_run(run_dir) as run:
        record = run.records[0]
        inside = run_dir / "rank-00000" / record.file
        outside = tmp_path / "outside.safetensors"
        shutil.move(inside, outside)
        os.symlink(outside, inside)
        with pytest.raises(RunFormatError, match="points outside the run directory"):
            run.load(record)


def test_a_corrupt_file_is_reported_for_each_of_its_records(run_dir):
    with open_run(run_dir) as run:
        # NOTE: how many records share a data file depends on the writer's timing: all of them.
        same_file = [r for r in run.records if r.file == run.records[0].file]
        (run_dir / "rank-00000" / same_file[0].file).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
        loader = TensorLoader(run)
        for record in same_file:
            with pytest.raises(RunFormatError, match="corrupt safetensors file"):
                loader.load(record)


def test_load_copies_so_tensors_outlive_the_run(run_dir):
    with open_run(run_dir) as run:
        tensor = run.load(run.records[0])
    tensor += 1  # writable, owned memory
    assert torch.equal(tensor, torch.arange(4, dtype=torch.float32) + 1)


def test_a_bad_line_inside_a_decoded_batch_is_named_and_the_rest_kept(run_dir):
    # Lines are decoded 2048 at a time (issue 23); a line that breaks its batch's JSON
    # must still cost only itself, named by its line number.
    index = run_dir / "rank-00000" / "index.jsonl"
    first = json.loads(index.read_text().splitlines()[0])
    lines = [json.dumps({**first, "seq": seq}) for seq in range(3000)]
    lines[2500] = "{not json"
    lines[10] = "[1, 2]"  # decodes, but is not a record
    index.write_text("\n".join(lines) + "\n")
    records, torn, problems = read_index(str(index), source="rank-00000")
    assert [r.seq for r in records] == [seq for seq in range(3000) if seq not in (10, 2500)] and torn == 0
    assert [p.split(": ", 1)[1].split(" (")[0] for p in problems] == ["line 11 is not a valid record",
                                                                      "line 2501 is not a valid record"]


def test_the_fast_path_reads_what_the_validating_path_reads(run_dir):
    index = run_dir / "rank-00000" / "index.jsonl"
    records, _, problems = read_index(str(index), source="rank-00000")
    slow = [IndexRecord.from_json(json.loads(line), source="rank-00000") for line in index.read_text().splitlines()]
    assert not problems and records == slow and len(records) == 6


def test_run_records_are_ordered_by_step_rank_source_seq(written):
    """Run.records sorts by (step, rank, source, seq) with stable single-key sorts: same order as one tuple-key sort."""
    import random

    from dumper.run import RankContents, Run

    with open_run(written) as run:
        base = run.records
    generator = random.Random(0)
    made = [replace(base[i % len(base)], seq=generator.randrange(50), step=generator.randrange(3),
                    rank=generator.randrange(2), source=generator.choice(["rank-00000", "proc-7"]))
            for i in range(200)]
    ranks = [RankContents(directory=f"d{i}", rank=0, info=None, records=made[i::3]) for i in range(3)]
    ordered = Run(path=str(written), info=None, ranks=ranks).records
    expected = sorted([r for rank in ranks for r in rank.records], key=lambda r: (r.step, r.rank, r.source, r.seq))
    assert [id(r) for r in ordered] == [id(r) for r in expected]  # ties (equal keys) too: both sorts are stable
