"""dumper.dump inside torch.compile(fullgraph=True) (inductor): dump sites are operators of the graph.

The child program is tests/dumper/compiled_case.py: two layers with dumps (sticky tags,
a tuple, a number, an in-place write after a dump), four steps of 3, 5, 2 and 7 tokens.
"""

from __future__ import annotations

import json

import pytest

from tests.helpers.example_runs import dumpcmp
from tests.helpers.procs import clean_env, run_python

CASE = "import runpy, sys; sys.argv = ['compiled_case', {mode!r}]; runpy.run_module('tests.dumper.compiled_case', run_name='__main__')"


def run_case(run_dir, mode: str, **env: str):
    proc = run_python(CASE.format(mode=mode), env=clean_env(DUMPCMP_DIR=str(run_dir), **env), timeout=600)
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


def records(run_dir) -> list[dict]:
    lines = (run_dir / "rank-00000" / "index.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def identity(record: dict) -> tuple:
    return record["step"], record["name"], record["tags"], record["shape"], record["dims"], record["dtype"]


@pytest.fixture(scope="module")
def eager_and_compiled(tmp_path_factory):
    root = tmp_path_factory.mktemp("compiled")
    eager, _ = run_case(root / "eager", "eager")
    compiled, stderr = run_case(root / "compiled", "compiled")
    return root, eager, compiled, stderr


def test_compiled_dumps_compare_as_passing_against_eager(eager_and_compiled):
    root, eager, compiled, stderr = eager_and_compiled
    assert compiled["sums"] == eager["sums"]
    # Every dump call of the traced code is an operator in the code inductor generated
    # (two layers x hidden, gates.0, gates.2, num_tokens, plus output), and each
    # layer's `with dumper.tags(...)` is a push_tags operator.
    assert compiled["dump_ops_in_code"] == 9
    assert compiled["tag_ops_in_code"] == 2
    assert compiled["layer_tagged_dumps"] == 8  # every dump of the two layers, not the output
    proc = dumpcmp("compare", str(root / "eager"), str(root / "compiled"), "--format", "json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["summary"]["total"] == report["summary"]["passed"] == 4 * 9
    assert report["first_divergence"] is None
    assert "dumpcmp:" not in stderr  # nothing reported, nothing lost


def test_compiled_records_are_the_eager_records(eager_and_compiled):
    root, *_ = eager_and_compiled
    eager, compiled = records(root / "eager"), records(root / "compiled")
    assert [identity(r) for r in compiled] == [identity(r) for r in eager]
    # Token counts change from step to step (one dynamic graph), and sticky tags from
    # both sides of the compiled region reach the records.
    assert [r["shape"][0] for r in compiled if r["name"] == "output"] == [3, 5, 2, 7]
    assert {json.dumps(r["tags"], sort_keys=True) for r in compiled if r["name"] == "hidden"} == {
        '{"layer": 0, "request": "r0"}', '{"layer": 1, "request": "r0"}'}
    # The record is the value at the dump call, before the in-place write that follows it:
    # bit for bit where inductor runs the same kernel (the matmul, the residual add);
    # its own sigmoid differs from eager's in the last bits, within the thresholds.
    same_kernels = [(r["name"], r["checksum"]) for r in compiled if r["name"] != "gates.0"]
    assert same_kernels == [(r["name"], r["checksum"]) for r in eager if r["name"] != "gates.0"]
    num_tokens = [r["stats"]["max"] for r in compiled if r["name"] == "num_tokens"]
    assert num_tokens == [3, 3, 5, 5, 2, 2, 7, 7]


def test_dumping_off_at_trace_time_leaves_no_dump_in_the_code(tmp_path):
    """DUMPCMP_ENABLE=0: the code has no dump; dumper.enable() recompiles (dynamo guards on it)."""
    result, _ = run_case(tmp_path / "run", "off_then_on", DUMPCMP_ENABLE="0")
    assert result == {"off": 0, "on": 9}
    assert {r["step"] for r in records(tmp_path / "run")} == {1}


def test_a_warm_up_under_paused_traces_the_dumps_and_records_none(tmp_path):
    """vLLM traces its model once, in a warm-up forward (the vLLM preset pauses dumping there)."""
    result, _ = run_case(tmp_path / "run", "paused_warmup")
    assert result == {"dump_ops_in_code": 9}
    assert sorted({r["step"] for r in records(tmp_path / "run")}) == [1, 2]
    assert len(records(tmp_path / "run")) == 2 * 9


def test_sites_that_cannot_be_dumped_are_reported_once(tmp_path):
    result, stderr = run_case(tmp_path / "run", "bad_sites")
    assert result == {"outputs_match": [True, True, True]}  # the function runs on, unchanged
    lazy = [line for line in stderr.splitlines() if "'lazy'" in line]
    state = [line for line in stderr.splitlines() if "'state'" in line]
    assert len(lazy) == 1 and "lazy callable is not evaluated inside torch.compile" in lazy[0]
    assert len(state) == 1 and "a EngineState is not a tensor" in state[0]
    rank = json.loads((tmp_path / "run" / "rank-00000" / "rank.json").read_text())
    assert sorted(rank["lost"].values()) == [3, 3]
    assert [r["name"] for r in records(tmp_path / "run")] == ["hidden"] * 3


def test_eager_dumps_do_not_load_the_compile_path(tmp_path):
    code = """
    import sys, torch
    from dumper import dumper
    dumper.dump("x", torch.ones(2))
    with dumper.tags(layer=1):
        dumper.dump("y", torch.ones(2))
    dumper.flush()
    print("dumper.compiled" in sys.modules)
    """
    out = run_python(code, env=clean_env(DUMPCMP_DIR=str(tmp_path / "run")))
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("tags", [{}, {"layer": 3, "kind": "moe", "scale": 0.5, "first": True, "none": None},
                                  {"text": "a=b:c"}])
def test_tags_travel_as_one_constant(tags):
    from dumper.compiled import decode_tags, encode_tags

    encoded, problem = encode_tags(tags)
    assert problem is None
    decoded = dict(decode_tags(encoded))
    assert decoded == tags and [type(v) for v in decoded.values()] == [type(v) for v in tags.values()]


def test_a_tag_that_is_not_a_constant_is_a_problem():
    import torch

    from dumper.compiled import encode_tags

    _, problem = encode_tags({"layer": torch.tensor(1)})
    assert problem is not None and problem.startswith("tag layer is a Tensor; under torch.compile tags must be constants")


MODULE_CASE = ("import runpy, sys; sys.argv = ['compiled_module_case', {mode!r}]; "
               "runpy.run_module('tests.dumper.compiled_module_case', run_name='__main__')")


def test_a_compiled_bf16_module_compares_as_passing_against_eager(tmp_path):
    """Upcast float32 router logits, int ids, bool masks, views, 0-dim sums; dynamic sizes found by dynamo."""
    for mode in ("eager", "compiled"):
        run_python(MODULE_CASE.format(mode=mode), env=clean_env(DUMPCMP_DIR=str(tmp_path / mode)), timeout=600)
    eager, compiled = records(tmp_path / "eager"), records(tmp_path / "compiled")
    assert [identity(r) for r in compiled] == [identity(r) for r in eager]
    assert [r["shape"] for r in compiled if r["name"] == "hidden_t" and r["tags"]["layer"] == 0] == [
        [16, 4], [16, 9], [16, 1], [16, 6], [16, 13]]
    proc = dumpcmp("compare", str(tmp_path / "eager"), str(tmp_path / "compiled"), "--format", "json")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr
    report = json.loads(proc.stdout)
    assert report["summary"]["passed"] == report["summary"]["total"] == 5 * (2 + 3 * 6)
    # Inductor keeps the gate's float32 accumulator where eager rounds to bf16 first:
    # the logits are judged at the bf16 limits their eager values carry, and say so.
    logits = [r for r in report["results"] if r["name"] == "router_logits"]
    differing = [r for r in logits if r["metrics"]["rel_diff"] > 0]  # (bitwise-equal ones are not measured)
    assert all("baseline float32 holds bfloat16 values (an upcast): judged at bfloat16 limits" in r["notes"]
               for r in differing)
    assert any(r["metrics"]["rel_diff"] > 1e-6 for r in differing)  # the float32 limit would have failed
