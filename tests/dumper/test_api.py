"""dumper/api.py and dumper/rundir.py as modules: a Dumper object driven in this process.

(The process-wide ``dumper`` and its environment variables are tested through real
processes in test_disabled.py, test_bad_input.py and test_roundtrip.py.)
"""

from __future__ import annotations

import json
import logging
import os

import pytest
import torch

from dumper.api import Dumper
from dumper.config import DumpConfig
from dumper.errors import RunConflictError
from dumper.format import AxisInfo
from dumper.parallel import ParallelInfo
from dumper.reader import open_run
from dumper.rundir import claim_rank_dir


@pytest.fixture
def make_dumper(tmp_path):
    made: list[Dumper] = []

    def make(**config) -> Dumper:
        dumper = Dumper()
        dumper.configure(dir=str(tmp_path / "run"), collectives=False, **config)
        made.append(dumper)
        return dumper

    yield make
    for dumper in made:
        dumper.close()


def records_of(dumper: Dumper):
    dumper.close()
    with open_run(os.path.dirname(dumper.rank_dir)) as run:
        return run.records, run


def test_containers_numbers_and_none_become_named_records(make_dumper):
    dumper = make_dumper()
    dumper.dump("out", (torch.ones(2), None, {"k": torch.zeros(1), "v": [torch.ones(1)]}))
    dumper.dump("scalar", 3)
    dumper.dump("flag", True)
    dumper.dump("nothing", None)
    records, run = records_of(dumper)
    assert [(r.name, r.dtype, r.shape) for r in records] == [
        ("out.0", "float32", (2,)), ("out.2.k", "float32", (1,)), ("out.2.v.0", "float32", (1,)),
        ("scalar", "int64", ()), ("flag", "bool", ()),
    ]


def test_sticky_tags_nest_restore_and_yield_to_call_tags(make_dumper):
    dumper = make_dumper()

    @dumper.tags(block="mlp")
    def block(x):
        dumper.dump("inner", x, layer=9)

    with dumper.tags(layer=1):
        block(torch.ones(1))
        with pytest.raises(ZeroDivisionError), dumper.tags(layer=2, phase="x"):
            raise ZeroDivisionError("inside the tags")
        dumper.dump("after_error", torch.ones(1))
    dumper.dump("outside", torch.ones(1))
    records, _ = records_of(dumper)
    assert [(r.name, r.tags) for r in records] == [
        ("inner", {"layer": 9, "block": "mlp"}), ("after_error", {"layer": 1}), ("outside", {}),
    ]


def test_a_callable_is_evaluated_only_when_the_filter_keeps_it(make_dumper):
    dumper = make_dumper(filter="name~^kept")
    calls = []

    def value(tag):
        return lambda: calls.append(tag) or torch.full((1,), float(len(calls)))

    dumper.dump("dropped", value("dropped"))
    dumper.dump("kept", value("kept"))
    records, run = records_of(dumper)
    assert calls == ["kept"]
    assert [r.name for r in records] == ["kept"] and run.load(records[0]).tolist() == [1.0]


def test_steps_and_parallel_axes_reach_the_records(make_dumper):
    dumper = make_dumper()
    dumper.set_parallel(tp=(1, 2))
    dumper.dump("a", torch.ones(1))
    assert dumper.step() == 1 and dumper.current_step == 1
    dumper.set_step(7)
    dumper.set_parallel(tp=None)
    dumper.dump("b", torch.ones(1))
    records, _ = records_of(dumper)
    assert [(r.name, r.step, r.parallel) for r in records] == [
        ("a", 0, {"tp": AxisInfo(rank=1, size=2)}), ("b", 7, {})]


def test_an_unsupported_value_warns_once_per_name_and_dumping_goes_on(make_dumper, caplog):
    dumper = make_dumper()
    with caplog.at_level(logging.WARNING, logger="dumper.api"):
        for _ in range(3):
            dumper.dump("text", "not a tensor")
        dumper.dump("complex", torch.zeros(1, dtype=torch.complex64))
        dumper.dump("fine", torch.ones(1))
    assert [r.getMessage().split(":")[1].strip() for r in caplog.records] == [
        "not dumping 'text'", "not dumping 'complex'"]
    assert dumper.enabled
    records, _ = records_of(dumper)
    assert [r.name for r in records] == ["fine"]


def test_an_error_disables_dumping_with_one_warning_and_never_raises(tmp_path, caplog):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    dumper = Dumper()
    dumper.configure(dir=str(blocker / "run"), collectives=False)  # cannot create a directory inside a file
    with caplog.at_level(logging.WARNING, logger="dumper.api"):
        dumper.dump("x", torch.ones(1))
        dumper.dump("y", torch.ones(1))
    assert not dumper.enabled
    (warning,) = caplog.records
    assert "dumping disabled after an error (ConfigError: cannot create dump directory" in warning.getMessage()


def test_configuring_a_new_directory_closes_the_old_run(tmp_path):
    dumper = Dumper()
    dumper.configure(dir=str(tmp_path / "first"), collectives=False)
    dumper.dump("a", torch.ones(1))
    first = dumper.rank_dir
    dumper.configure(dir=str(tmp_path / "second"))
    dumper.dump("b", torch.ones(1))
    dumper.close()
    with open_run(tmp_path / "first") as run:
        assert [r.name for r in run.records] == ["a"] and run.ranks[0].status == "closed"
    with open_run(tmp_path / "second") as run:
        assert [r.name for r in run.records] == ["b"]
    assert first != dumper.rank_dir


# ----------------------------------------------------------------------------- run directories
RANK0 = ParallelInfo(rank=0, world_size=1, axes={}, rank_known=False)


def test_processes_of_one_run_share_it_and_a_second_rank_0_gets_its_own_directory(tmp_path):
    config = DumpConfig(dir=str(tmp_path), run_id="run-a", command=("engine",))
    first, run_id = claim_rank_dir(str(tmp_path), RANK0, config, "run-a")
    with open(os.path.join(first, "rank.json"), "w") as handle:  # what the first process's writer writes
        json.dump({"rank": 0, "run_id": "run-a"}, handle)
    second, _ = claim_rank_dir(str(tmp_path), RANK0, config, "run-a")
    assert (os.path.basename(first), run_id) == ("rank-00000", "run-a")
    assert os.path.basename(second) == f"proc-{os.getpid()}"


def test_without_a_run_id_a_process_joins_the_run_it_finds(tmp_path):
    claim_rank_dir(str(tmp_path), RANK0, DumpConfig(dir=str(tmp_path), run_id="run-a"), "run-a")
    rank1 = ParallelInfo(rank=1, world_size=2, axes={}, rank_known=True)
    directory, run_id = claim_rank_dir(str(tmp_path), rank1, DumpConfig(dir=str(tmp_path)), "generated")
    assert (os.path.basename(directory), run_id) == ("rank-00001", "run-a")


def test_an_earlier_run_is_refused_unless_overwritten(tmp_path):
    first, _ = claim_rank_dir(str(tmp_path), RANK0, DumpConfig(dir=str(tmp_path), run_id="old"), "old")
    open(os.path.join(first, "index.jsonl"), "w").close()
    with pytest.raises(RunConflictError, match=r"already holds an earlier run \(run id old\); choose a new directory"):
        claim_rank_dir(str(tmp_path), RANK0, DumpConfig(dir=str(tmp_path), run_id="new"), "new")
    directory, run_id = claim_rank_dir(str(tmp_path), RANK0, DumpConfig(dir=str(tmp_path), run_id="new", overwrite=True),
                                       "new")
    assert run_id == "new" and os.listdir(directory) == []
