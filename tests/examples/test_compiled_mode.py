"""The example engine's ``--compile`` mode (examples/moe_engine/compiled.py) dumps what eager mode dumps.

Each decoder layer runs under torch.compile(fullgraph=True, inductor, dynamic token
counts: a prefill of 17 tokens, then decode steps of 4), and the preset's dump calls in
the layers are operators of the compiled graphs. Compiling costs about a minute of CPU
per run on 2 cores: the runs are made once for the module.
"""

from __future__ import annotations

import json
import sys

import pytest

from tests.helpers.example_runs import dumpcmp

pytestmark = pytest.mark.slow

ENGINE = [sys.executable, "-m", "examples.moe_engine"]
PRESET = "example/moe_engine"


def dump(run_dir, *engine_args: str, options: tuple[str, ...] = ()) -> str:
    proc = dumpcmp("run", "--patch", PRESET, "--dir", str(run_dir), *options, "--", *ENGINE, *engine_args,
                   timeout=900)
    assert proc.returncode == 0, f"{engine_args}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout


def records(run_dir, rank: int = 0) -> list[dict]:
    lines = (run_dir / f"rank-{rank:05d}" / "index.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def identity(record: dict) -> tuple:
    return record["step"], record["name"], record["tags"], record["shape"], record["dims"], record["dtype"]


def compare(baseline, target) -> tuple[int, dict]:
    proc = dumpcmp("compare", str(baseline), str(target), "--format", "json")
    assert proc.returncode in (0, 1), proc.stderr
    return proc.returncode, json.loads(proc.stdout)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("compiled_mode")
    outputs = {
        "eager": dump(root / "eager"),
        "compiled": dump(root / "compiled", "--compile"),
        "compiled_bug": dump(root / "compiled_bug", "--compile", "--ep", "2", "--bug", "double_reduce"),
    }
    return root, outputs


def tokens(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if line.startswith("request ")]


def test_compiled_mode_gives_the_records_of_eager_mode(runs):
    root, outputs = runs
    assert "compile" in outputs["compiled"].splitlines()[0]
    assert tokens(outputs["compiled"]) == tokens(outputs["eager"])
    eager, compiled = records(root / "eager"), records(root / "compiled")
    assert len(eager) == 100
    assert [identity(r) for r in compiled] == [identity(r) for r in eager]
    # Dump sites inside the compiled layers: every layer's tensors, with their layer tags.
    layer_sites = {(r["name"], r["tags"]["layer"]) for r in compiled if "layer" in r["tags"]}
    assert {("attn_output", 0), ("dense_mlp_output", 0), ("router_logits", 2), ("moe_output", 1)} <= layer_sites
    code, report = compare(root / "eager", root / "compiled")
    assert code == 0 and report["first_divergence"] is None
    assert report["summary"]["passed"] == report["summary"]["total"] == 100


def test_a_seed_bug_is_localised_in_compiled_mode(runs):
    root, _ = runs
    code, report = compare(root / "eager", root / "compiled_bug")
    assert code == 1
    first = report["first_divergence"]
    assert (first["name"], first["step"], first["tags"]["layer"]) == ("moe_output", 0, 1)
    assert "2" in (first["hint"] or "") and "x baseline" in first["hint"]


def test_dumping_does_not_change_compiled_outputs(runs, tmp_path):
    """dumpcmp run --verify-observer: the compiled engine's logits with dumping on and off, bit for bit."""
    logits = tmp_path / "logits.safetensors"
    run_dir = tmp_path / "run"
    dump(run_dir, "--compile", "--save-logits", str(logits), options=("--verify-observer", "--observe", str(logits)))
    check = json.loads((run_dir / "run.json").read_text())["observer_check"]
    assert check["changed"] is False and check["method"] == "file"
    assert check["exit_codes"] == {"dumping_on": 0, "reference": 0}
    assert len(check["outputs"]) >= 4 and all(output["identical"] for output in check["outputs"])
