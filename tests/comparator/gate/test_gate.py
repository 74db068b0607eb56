"""dumpcmp gate end to end on real example-engine runs (stats mode): one comparison, every report,
waivers applied, history appended, promotion only on a pass of a complete run."""

from __future__ import annotations

import datetime
import json
import shutil
import xml.etree.ElementTree as ET

import pytest

from comparator.gate.gate import GateConfig, run_gate
from comparator.gate.store import open_store
from tests.helpers.example_runs import dumpcmp


@pytest.fixture()
def store(gate_runs, tmp_path):
    path = tmp_path / "store"
    proc = dumpcmp("gate", "init", str(path), str(gate_runs["base"]))
    assert proc.returncode == 0, proc.stderr
    return path


def test_a_pass_writes_every_report_from_one_comparison_and_promotes(gate_runs, store, tmp_path):
    out = tmp_path / "out"
    first = open_store(store).current_name()
    proc = dumpcmp("gate", str(store), str(gate_runs["fp_tonight"]), "--output-dir", str(out), "--promote", "--keep", "2")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("gate: PASS (exit 0): all compared tensors passed\n")
    assert sorted(p.name for p in out.iterdir()) == ["gate.json", "junit.xml", "report.html", "report.json"]
    report = json.loads((out / "report.json").read_text())
    suite = ET.parse(out / "junit.xml").getroot().find("testsuite")
    assert int(suite.get("tests")) == report["summary"]["total"] > 0 and int(suite.get("failures")) == 0
    gate = json.loads((out / "gate.json").read_text())
    promoted = gate["promoted"]
    assert promoted and open_store(store).current_name() == promoted and promoted != first
    assert f"promoted: tonight's run is the new baseline {promoted}" in proc.stdout
    # Tonight's run is now the baseline: gating it again compares a run with itself.
    again = dumpcmp("gate", str(store), str(gate_runs["fp_tonight"]), "-d", str(tmp_path / "again"))
    assert again.returncode == 2
    assert again.stderr.startswith("dumpcmp: error: baseline and target are the same run (run id ")


def test_a_failing_run_is_never_promoted(gate_runs, store, tmp_path):
    before = open_store(store).current_name()
    proc = dumpcmp("gate", str(store), str(gate_runs["bug"]), "-d", str(tmp_path / "out"), "--promote")
    assert proc.returncode == 1
    assert "first divergence: moe_output[layer=1]@step0: target = 2 x baseline" in proc.stdout
    assert f"not promoted: the gate did not pass (exit code 1): the baseline stays {before}" in proc.stdout
    assert open_store(store).current_name() == before and len(open_store(store).baselines()) == 1


def test_an_incomplete_run_is_never_promoted(gate_runs, store, tmp_path):
    broken = tmp_path / "tonight"
    shutil.copytree(gate_runs["fp_tonight"], broken)
    rank = broken / "rank-00001" / "rank.json"
    info = json.loads(rank.read_text())
    info["status"] = "running"  # the rank never closed (killed engine)
    rank.write_text(json.dumps(info))
    before = open_store(store).current_name()
    outcome = run_gate(GateConfig(store=str(store), run=str(broken), output_dir=str(tmp_path / "out"), promote=True))
    assert outcome.promoted is None and open_store(store).current_name() == before
    assert outcome.not_promoted and "incomplete" in outcome.not_promoted and "1 running" in outcome.not_promoted


def _waivers(tmp_path, body: str):
    path = tmp_path / "waivers.yaml"
    path.write_text("waivers:\n" + body)
    return path


def test_a_new_baseline_waiver_passes_the_change_and_lets_it_be_promoted(gate_runs, store, tmp_path):
    today = datetime.date.today()
    path = tmp_path / "engine" / "dumpcmp-waivers.yaml"
    path.parent.mkdir()
    accept = dumpcmp("gate", "accept", str(path), "--tensors", ".", "--new-baseline", "--reason",
                     "reduction moved into the fused kernel (PR 77)", "--author", "alice", "--days", "14")
    assert accept.returncode == 0, accept.stderr
    proc = dumpcmp("gate", str(store), str(gate_runs["bug"]), "-d", str(tmp_path / "out"), "--waivers", str(path),
                   "--promote")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    expires = (today + datetime.timedelta(days=14)).isoformat()
    assert (f"waived: moe_output[layer=1]@step0 by waiver dumpcmp-waivers.yaml:4 for tensors '.' (new baseline; "
            f"by alice: reduction moved into the fused kernel (PR 77); expires {expires})") in proc.stdout
    gate = json.loads((tmp_path / "out" / "gate.json").read_text())
    assert gate["promoted"] and gate["waived"]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["summary"]["allowed_failures"] == report["summary"]["failed"] > 0


def test_a_tolerance_waiver_holds_only_within_its_tolerance(gate_runs, store, tmp_path):
    future = (datetime.date.today() + datetime.timedelta(days=30)).isoformat()
    wide = _waivers(tmp_path, f"  - {{tensors: '.', tolerance: {{norm_ratio: [0.2, 5.0], mean_diff: 10, "
                              f"abs_mean_diff: 10}}, reason: r, author: a, expires: {future}}}\n")
    outcome = run_gate(GateConfig(store=str(store), run=str(gate_runs["bug"]), output_dir=str(tmp_path / "o1"),
                                  waivers=str(wide)))
    assert outcome.exit_code == 0 and outcome.waived and not outcome.exceeded
    narrow = tmp_path / "narrow.yaml"
    narrow.write_text(wide.read_text().replace("[0.2, 5.0]", "[0.9, 1.1]"))
    proc = dumpcmp("gate", str(store), str(gate_runs["bug"]), "-d", str(tmp_path / "o2"), "--waivers", str(narrow))
    assert proc.returncode == 1
    assert "waived tensor(s) exceed their waiver's tolerance, first moe_output[layer=1]@step0: norm_ratio in [0.9, 1.1]" \
        in proc.stdout


def test_an_expired_waiver_fails_the_gate_naming_it(gate_runs, store, tmp_path):
    path = _waivers(tmp_path, "  - tensors: 'logits'\n    new_baseline: true\n    reason: old sampler change\n"
                              "    author: bob\n    expires: 2026-01-31\n")
    proc = dumpcmp("gate", str(store), str(gate_runs["fp_tonight"]), "-d", str(tmp_path / "out"), "--waivers", str(path))
    assert proc.returncode == 1  # tonight's run passes; the expired waiver alone fails the gate
    assert proc.stdout.startswith(
        "gate: FAIL (exit 1): expired: waiver waivers.yaml:2 for tensors 'logits' (new baseline; by bob: "
        "old sampler change; expires 2026-01-31) (renew it with dumpcmp gate accept, or remove it)\n")
    assert "EXPIRED: waiver waivers.yaml:2" in proc.stderr


@pytest.mark.parametrize("body, message", [
    ("  - {tensors: x, new_baseline: true, reason: r, author: a, expires: 2030-01-01, ticket: 12}\n",
     "waivers.yaml:2: waiver 1: unknown field 'ticket'; valid fields: tensors, tolerance, new_baseline, reason, "
     "author, expires, created"),
    ("  - {tensors: x, new_baseline: true, author: a, expires: 2030-01-01}\n",
     "waivers.yaml:2: waiver 1: 'reason' is required (tensors, reason, author and expires make a waiver reviewable)"),
    ("  - {tensors: x, tolerance: {rel_diff: 1e-2}, new_baseline: true, reason: r, author: a, expires: 2030-01-01}\n",
     "waivers.yaml:2: waiver 1: give either a tolerance ({rel_diff: 1e-2, ...}) or new_baseline: true, not both or neither"),
    ("  - {tensors: x, new_baseline: true, reason: r, author: a, expires: soon}\n",
     "waivers.yaml:2: waiver 1: 'soon' is not a date; write YYYY-MM-DD, e.g. 2027-01-31"),
])
def test_a_bad_waivers_file_is_one_line_with_its_place(gate_runs, store, tmp_path, body, message):
    path = _waivers(tmp_path, body)
    proc = dumpcmp("gate", str(store), str(gate_runs["fp_tonight"]), "-d", str(tmp_path / "out"), "--waivers", str(path))
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == f"dumpcmp: error: {tmp_path}/{message}\n"


def test_accept_appends_to_a_file_keeping_its_comments(tmp_path):
    path = tmp_path / "w.yaml"
    path.write_text("# reviewed in the engine repo\nwaivers:\n  - {tensors: a, new_baseline: true, reason: r, "
                    "author: x, expires: 2030-01-01}\n")
    proc = dumpcmp("gate", "accept", str(path), "--tensors", "moe_output", "--tolerance", "rel_diff=1e-2",
                   "--tolerance", "norm_ratio=0.9,1.1", "--reason", 'fp8 "MoE" kernel: rounding', "--author", "carol",
                   "--expires", "2030-02-01")
    assert proc.returncode == 0, proc.stderr
    text = path.read_text()
    assert text.startswith("# reviewed in the engine repo\n")
    from comparator.gate.waivers import load_waivers

    waivers = load_waivers(path)
    assert [w.tensors.pattern for w in waivers] == ["a", "moe_output"]
    assert waivers[1].reason == 'fp8 "MoE" kernel: rounding' and waivers[1].kind == "tolerance"
    assert {m: limit.to_json() for m, limit in waivers[1].tolerance.items()} == {"rel_diff": 0.01, "norm_ratio": [0.9, 1.1]}
    assert waivers[1].expires == datetime.date(2030, 2, 1)
    bad = dumpcmp("gate", "accept", str(path), "--tensors", "x", "--new-baseline", "--reason", "r", "--author", "a")
    assert bad.returncode == 2
    assert bad.stderr == "dumpcmp: error: give the waiver an end: --expires YYYY-MM-DD or --days N (exactly one)\n"
