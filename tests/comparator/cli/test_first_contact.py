"""What a new user meets first: output that fits 80 columns when piped, one-line usage errors,
settings checked before a command starts (issue "What a new user meets first")."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.helpers.example_runs import DUMPCMP, demo_runs, example_runs_root
from tests.helpers.procs import clean_env


def cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """The CLI with stdout piped (not a terminal), as in a CI log."""
    return subprocess.run([*DUMPCMP, *args], env=clean_env(**env), capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return demo_runs(example_runs_root(tmp_path_factory))


def test_piped_compare_at_80_columns_cuts_nothing(demo):
    baseline, target = demo
    table = cli("compare", str(baseline), str(target), COLUMNS="80")
    assert table.returncode == 1, table.stderr
    report = json.loads(cli("compare", str(baseline), str(target), "--format", "json").stdout)
    assert "…" not in table.stdout
    words = table.stdout.split()
    for result in report["results"]:
        if result["status"] != "pass":
            assert result["name"] in words, f"{result['name']} cut from the table"
    hint = report["first_divergence"]["hint"]
    # The hint wraps (inside its cell and the first-divergence panel) but loses no word.
    assert all(word in table.stdout for word in hint.split()), hint


def test_piped_ls_at_80_columns_keeps_every_name_whole(demo):
    _, target = demo
    listing = cli("ls", str(target), COLUMNS="80")
    assert listing.returncode == 0, listing.stderr
    names = {t["name"] for t in json.loads(cli("ls", str(target), "--format", "json").stdout)["tensors"]}
    assert names and "…" not in listing.stdout
    cells = {cell.strip() for line in listing.stdout.splitlines() for cell in line.split("│")}
    assert names <= cells, sorted(names - cells)


@pytest.mark.parametrize(("args", "line"), [
    (("compare", "only-one"), "dumpcmp compare: error: Missing argument 'target'. (see 'dumpcmp compare -h')"),
    (("compare", "--bogus", "a", "b"),
     "dumpcmp compare: error: No such option: --bogus (Possible options: --jobs, --verbose) (see 'dumpcmp compare -h')"),
    (("nonsense",), "dumpcmp: error: No such command 'nonsense'. (see 'dumpcmp -h')"),
])
def test_usage_errors_are_one_line_and_exit_2(args, line):
    proc = cli(*args)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [line]


def test_misspelled_setting_stops_run_before_the_command_starts(tmp_path):
    marker = tmp_path / "started"
    proc = cli("run", "--dir", str(tmp_path / "run"), "--", sys.executable, "-c", f"open({str(marker)!r}, 'w')",
               DUMPCMP_MODEE="stats")
    assert proc.returncode == 2
    assert not marker.exists(), "the command ran despite a misspelled setting"
    assert proc.stderr.splitlines()[-1].startswith(
        "dumpcmp: error: unknown setting DUMPCMP_MODEE in the environment; did you mean DUMPCMP_MODE?")


def test_user_settings_that_run_does_not_own_pass_through(tmp_path):
    out = tmp_path / "seen"
    proc = cli("run", "--dir", str(tmp_path / "run"), "--", sys.executable, "-c",
               f"import os; open({str(out)!r}, 'w').write(os.environ.get('DUMPCMP_QUEUE_MB', ''))",
               DUMPCMP_QUEUE_MB="64")
    assert proc.returncode == 0, proc.stderr
    assert out.read_text() == "64"


def test_run_that_dumped_nothing_says_so(tmp_path):
    proc = cli("run", "--dir", str(tmp_path / "run"), "--", sys.executable, "-c", "print('no engine here')")
    assert proc.returncode == 0
    assert proc.stderr.splitlines()[-1].startswith(
        f"dumpcmp: nothing was dumped into {tmp_path / 'run'} (exit code 0): the command wrote no record;")


def test_run_against_a_baseline_says_where_it_diverged_and_ls_repeats_it(demo, tmp_path):
    baseline, _ = demo
    target = tmp_path / "online"
    proc = cli("run", "--dir", str(target), "--against", str(baseline), "--patch", "example/moe_engine", "--",
               sys.executable, "-m", "examples.moe_engine", "--bug", "double_reduce", "--ep", "2")
    assert proc.returncode == 0, proc.stderr
    said = [line for line in proc.stderr.splitlines() if " diverged from " in line]
    assert said and said[0].startswith(f"dumpcmp: rank 0 diverged from {baseline} at step 0, ")
    assert proc.stderr.splitlines()[-1] == "dumpcmp: exit code 0"
    listing = cli("ls", str(target))
    assert said[0].removeprefix("dumpcmp: ") in listing.stdout.splitlines()


def test_show_plot_with_a_name_it_cannot_honour_is_refused_before_any_work(demo, tmp_path):
    _, target = demo
    proc = cli("show", str(target), "moe_output", "-s", "0", "-t", "layer=1", "--plot", str(tmp_path / "out.jpg"))
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.splitlines() == [
        f"dumpcmp: error: --plot {tmp_path / 'out.jpg'}: pictures are written as PNG or SVG; name the file .png or .svg"]
    assert not (tmp_path / "out.jpg").exists()


def test_help_reads_as_written_for_people():
    usage = cli("compare", "-h", COLUMNS="80").stdout
    assert "Usage: dumpcmp compare [OPTIONS] BASELINE TARGET" in usage
    assert "Usage: dumpcmp run [OPTIONS] -- CMD..." in cli("run", "-h").stdout
    root = cli("-h", COLUMNS="80").stdout
    assert "<bool>" not in root and "--version" in root
    # A docstring paragraph flows to the terminal's width: no word stranded on a line of its own.
    assert not [line for line in usage.splitlines() if line.strip() == "are"]


def test_show_lists_per_token_errors_and_speaks_json(demo):
    baseline, target = demo
    where = ("show", str(target), "moe_output", "-s", "0", "-t", "layer=1", "-b", str(baseline))
    data = json.loads(cli(*where, "--format", "json").stdout)
    per_token = data["comparison"]["details"]["per_token_rel_l2"]
    assert data["tensor"]["shape"] == [len(per_token), 64] and data["comparison"]["status"] == "fail"
    assert len(data["tensor"]["shards"]) == 4 and {s["rank"] for s in data["tensor"]["shards"]} == {0, 1, 2, 3}
    listing = cli(*where, "--tokens")
    assert listing.returncode == 1  # the tensor does not pass
    table = listing.stdout.split("per-token rel_l2", 1)[1]
    tokens = [line.split() for line in table.splitlines() if line.strip()[:1].isdigit()]
    assert [int(row[0]) for row in tokens] == list(range(len(per_token)))
    worst = max(range(len(per_token)), key=per_token.__getitem__)
    assert tokens[worst][-1] == "worst"
    refused = cli("show", str(target), "moe_output", "--tokens")
    assert refused.returncode == 2 and refused.stderr.splitlines() == [
        "dumpcmp: error: --tokens lists the per-token error against a baseline; add --baseline RUN"]


@pytest.mark.parametrize(("options", "said"), [
    (("--steps", "9"), "exit 3: nothing was compared: --steps 9:10 selects none of them "
                       "(the baseline holds steps 0-3, the target steps 0-3)"),
    (("--names", "^nothing$"), "exit 3: nothing was compared: --names/--exclude leave none of the target's"),
])
def test_nothing_compared_says_what_the_runs_hold(demo, options, said):
    baseline, target = demo
    proc = cli("compare", str(baseline), str(target), *options)
    assert proc.returncode == 3
    assert proc.stdout.splitlines()[-1].startswith(said), proc.stdout.splitlines()[-1]


def test_benign_routing_flips_show_in_the_table(tmp_path):
    """bf16 with nondeterministic split-K sums: near-tied routing flips that are benign, and passes
    judged on the tokens they do not reach, must say so in the table (not only in JSON)."""
    runs = {}
    for side, extra in (("baseline", ()), ("target", ("--tp", "2", "--ep", "2"))):
        runs[side] = tmp_path / side
        proc = cli("run", "--patch", "example/moe_engine", "--dir", str(runs[side]), "--", sys.executable, "-m",
                   "examples.moe_engine", "--dtype", "bfloat16", "--seed", "7", "--layers", "4", "--nondeterministic",
                   *extra)
        assert proc.returncode == 0, proc.stderr[-2000:]
    thresholds = "examples/moe_engine/thresholds_bf16.yaml"
    data = json.loads(cli("compare", str(runs["baseline"]), str(runs["target"]), "-t", thresholds,
                          "--format", "json").stdout)
    noted = [r for r in data["results"] if r["status"] == "pass" and r["notes"]]
    assert noted, "this seed has no benign flip any more: pick another"
    table = cli("compare", str(runs["baseline"]), str(runs["target"]), "-t", thresholds, COLUMNS="600").stdout
    # The table says it for every such pass (wide enough that each note is on one line).
    for result in noted:
        assert result["notes"][0] in table, result["notes"][0]
