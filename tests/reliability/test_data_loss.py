"""No completed record is lost, and a bad one costs itself alone (issue 21).

Real processes dump; the run is read back with the reader the comparator uses.
"""

from __future__ import annotations

import json
import textwrap

import pytest

from dumper.reader import open_run
from tests.helpers.procs import clean_env, run_python

PRELUDE = """
import math, os, sys, threading, time
import numpy as np
import torch
from dumper import dumper
"""


def dump(run_dir, code: str, **env: str):
    return run_python(PRELUDE + textwrap.dedent(code), env=clean_env(DUMPCMP_DIR=str(run_dir), **env))


def rank_json(run_dir, directory: str = "rank-00000") -> dict:
    return json.loads((run_dir / directory / "rank.json").read_text())


@pytest.mark.parametrize("mode", ["tensor", "stats"])
def test_a_bad_tag_costs_its_record_alone(tmp_path, mode):
    run_dir = tmp_path / "run"
    result = dump(run_dir, """
        class Unprintable:
            def __str__(self):
                raise RuntimeError("no")
        loop = []
        loop.append(loop)
        bad = {"tensor": torch.ones(3), "loop": loop, "unprintable": Unprintable(), "deep": [[[[[[[[[[1]]]]]]]]]]}
        converted = {"nan": float("nan"), "inf": float("inf"), "np_nan": np.nan, "np_scalar": np.float32(2.5),
                     "one_element": torch.tensor(7), "big": 2 ** 70, "set": {3, 1}}
        for key, value in {**bad, **converted}.items():
            dumper.dump("before", torch.ones(2), case=key)
            dumper.dump(f"value_{key}", torch.ones(2), v=value)
            dumper.dump("after", torch.ones(2), case=key)
        dumper.close()
        print("engine finished", dumper.enabled)
    """, DUMPCMP_MODE=mode)
    assert "engine finished True" in result.stdout
    with open_run(run_dir) as run:
        names = [r.name for r in run.records]
        tags = {r.name: r.tags for r in run.records}
    assert names.count("before") == names.count("after") == 11  # every neighbour of every bad record
    assert not any(f"value_{key}" in names for key in ("tensor", "loop", "unprintable", "deep"))
    assert tags["value_nan"] == {"v": "nan"} and tags["value_inf"] == {"v": "inf"} and tags["value_np_nan"] == {"v": "nan"}
    assert tags["value_np_scalar"] == {"v": 2.5} and tags["value_one_element"] == {"v": 7}
    assert tags["value_big"] == {"v": str(2 ** 70)} and tags["value_set"] == {"v": [1, 3]}
    lost = rank_json(run_dir)["lost"]
    assert sorted(key.split(":")[0] for key in lost) == ["value_deep", "value_loop", "value_tensor", "value_unprintable"]
    assert "is a Tensor of 3 elements" in result.stderr and "str() of its Unprintable raised RuntimeError" in result.stderr
    assert "written as the string 'nan'" in result.stderr


UNENCODABLE = ["float8_e4m3fnuz", "float8_e5m2fnuz", "float8_e8m0fnu", "float4_e2m1fn_x2", "bits8", "quint8", "uint7"]


@pytest.mark.parametrize("mode", ["tensor", "stats"])
def test_tensor_kinds_the_format_cannot_hold_are_skipped_and_counted(tmp_path, mode):
    run_dir = tmp_path / "run"
    result = dump(run_dir, f"""
        for name in {UNENCODABLE!r}:
            dumper.dump("before", torch.ones(2), kind=name)
            dumper.dump(name, torch.empty(4, dtype=getattr(torch, name)))
            dumper.dump("after", torch.ones(2), kind=name)
        dumper.dump("meta", torch.empty(3, device="meta"))
        dumper.dump("last", torch.ones(2))
        dumper.close()
        print("engine finished", dumper.enabled)
    """, DUMPCMP_MODE=mode)
    assert "engine finished True" in result.stdout
    for name in UNENCODABLE:
        assert result.stderr.count(f"dtype {name} cannot be written") == 1, result.stderr
    with open_run(run_dir) as run:
        names = [r.name for r in run.records]
        assert names.count("before") == names.count("after") == len(UNENCODABLE) and names[-1] == "last"
        assert any("dump call(s) not recorded" in p for p in run.problems)  # ls says incomplete, and why
    info = rank_json(run_dir)
    assert info["status"] == "closed" and info["error"] is None
    assert sorted(key.split(":")[0] for key in info["lost"]) == sorted([*UNENCODABLE, "meta"])


@pytest.mark.parametrize("mode", ["tensor", "stats"])
def test_an_expanded_tensor_is_refused_before_it_is_materialised(tmp_path, mode):
    run_dir = tmp_path / "run"
    result = dump(run_dir, """
        dumper.dump("expanded", torch.ones(1).expand(1 << 24))  # 64 MB logically, 4 bytes stored
        dumper.dump("real", torch.ones(1 << 16))
        dumper.close()
        print("engine finished", dumper.enabled)
    """, DUMPCMP_MODE=mode, DUMPCMP_QUEUE_MB="1")
    assert "engine finished True" in result.stdout
    assert "an expanded view of 67108864 bytes over 4 bytes of storage" in result.stderr
    with open_run(run_dir) as run:
        assert [r.name for r in run.records] == ["real"]


def test_what_the_writer_accepts_the_reader_reads(tmp_path):
    run_dir = tmp_path / "run"
    result = dump(run_dir, """
        dumper.dump(123, torch.ones(2))
        dumper.dump("dims_five", torch.ones(2), dims=5)
        for step in range(5):
            dumper.dump("x", torch.ones(2) * step)
            dumper.step()
        dumper.close()
    """, RANK="3", WORLD_SIZE="2")
    assert "the name must be a string, not int" in result.stderr
    assert "dims of 'dims_five' must be a string" in result.stderr
    with open_run(run_dir) as run:
        assert [r.name for r in run.records] == ["dims_five"] + ["x"] * 5
        assert run.records[0].dims is None


def test_close_while_another_thread_dumps_starts_no_second_writer(tmp_path):
    run_dir = tmp_path / "run"
    dump(run_dir, """
        done = threading.Event()
        def engine():
            for i in range(400):
                dumper.dump("t", torch.full((64,), float(i)), i=i)
            done.set()
        thread = threading.Thread(target=engine, daemon=True)
        thread.start()
        while not done.is_set():
            dumper.close()  # as an atexit handler would, while the daemon thread dumps
            time.sleep(0.002)
        dumper.close()
    """, DUMPCMP_FILE_MB="0.001")
    with open_run(run_dir) as run:
        assert not run.problems, run.problems
        values = sorted(int(run.load(r, verify=True)[0]) for r in run.records)
        assert values == list(range(400))
        assert sorted(r.tags["i"] for r in run.records) == list(range(400))


@pytest.mark.parametrize("overwrite", ["0", "1"])
def test_a_child_forked_after_the_writer_started_keeps_both_records(tmp_path, overwrite):
    run_dir = tmp_path / "run"
    result = dump(run_dir, """
        dumper.dump("parent_before", torch.ones(2))
        dumper.flush()
        pid = os.fork()
        if pid == 0:
            dumper.dump("child", torch.ones(2) * 2)
            dumper.close()
            os._exit(0)
        os.waitpid(pid, 0)
        dumper.dump("parent_after", torch.ones(2))
        dumper.close()
        print("child", pid)
    """, DUMPCMP_OVERWRITE=overwrite)
    child_pid = int(result.stdout.split()[-1])
    with open_run(run_dir) as run:
        by_dir = {rank.directory: [r.name for r in rank.records] for rank in run.ranks}
    assert by_dir["rank-00000"] == ["parent_before", "parent_after"], by_dir
    assert by_dir[f"proc-{child_pid}"] == ["child"], by_dir


def test_a_failing_preset_expression_warns_once_and_turns_its_site_off(tmp_path):
    (tmp_path / "tiny_engine.py").write_text(textwrap.dedent("""
        class Layer:
            def forward(self, x):
                y = x * 2
                return y + 1
    """))
    (tmp_path / "p.yaml").write_text(textwrap.dedent("""
        patches:
          - target: tiny_engine.Layer.forward
            tags: {layer: self.layer_id}
            edits:
              - match: "y = x * 2"
                append:
                  - dump: y
                    tags: {expert: self.no_such_attribute}
    """))
    code = f"""
        sys.path.insert(0, {str(tmp_path)!r})
        from patches.apply import apply_patches
        with apply_patches([{str(tmp_path / 'p.yaml')!r}]):
            import tiny_engine
            layer = tiny_engine.Layer()
            dumper.disable()
            assert layer.forward(torch.ones(1)).item() == 3  # dumping off: nothing evaluated
            dumper.enable()
            for _ in range(3):
                assert layer.forward(torch.ones(1)).item() == 3
        print("engine finished")
    """
    result = dump(tmp_path / "run", code)
    assert "engine finished" in result.stdout
    assert result.stderr.count("turned off: evaluating it raised AttributeError") == 2, result.stderr  # two sites
    assert "Traceback" not in result.stderr
