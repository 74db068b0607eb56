"""The engine never crashes or hangs because of what a user configured (issue 21).

Bad numbers in settings, pathological regexes in filters and compare options, and a
launcher's inconsistent RANK/WORLD_SIZE: real processes, real runs.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from dumper.errors import ConfigError, DumpcmpError
from dumper.patterns import compile_user_regex
from dumper.reader import open_run
from tests.helpers.procs import clean_env, run_python

ENGINE = """
import torch
from dumper import dumper
for step in range(5):
    dumper.dump(NAME, torch.ones(3) * step)
    dumper.step()
dumper.close()
print("engine finished")
"""


def engine(name: str = "hidden") -> str:
    return ENGINE.replace("NAME", repr(name))


@pytest.mark.parametrize("env", [
    {"DUMPCMP_QUEUE_MB": "nan"}, {"DUMPCMP_QUEUE_MB": "inf"}, {"DUMPCMP_FILE_MB": "1e400"},
    {"DUMPCMP_FILE_MB": "-inf"}, {"DUMPCMP_ESCALATE_STEPS": "99999999999999999999999"},
])
def test_bad_numbers_in_settings_warn_once_and_the_engine_runs(tmp_path, env):
    result = run_python(engine(), env=clean_env(DUMPCMP_DIR=str(tmp_path / "run"), **env))
    assert "engine finished" in result.stdout
    assert result.stderr.count("dumpcmp: dumping disabled") == 1, result.stderr
    assert "Traceback" not in result.stderr
    name = next(iter(env))
    assert f"{name}=" in result.stderr


def test_rank_outside_world_size_is_still_readable(tmp_path):
    run_dir = tmp_path / "run"
    result = run_python(engine(), env=clean_env(DUMPCMP_DIR=str(run_dir), RANK="3", WORLD_SIZE="2"))
    assert "RANK=3 is outside WORLD_SIZE=2; recording world size 4" in result.stderr
    with open_run(run_dir) as run:
        assert len(run.records) == 5
        assert {r.rank for r in run.records} == {3}
        assert any("rank(s) 0, 1, 2 of 4 are absent" in p for p in run.problems)


def test_a_backtracking_filter_cannot_hang_the_engine(tmp_path):
    # (a+)+$ against 40 a's and a '!' takes ~2**40 steps in a backtracking engine.
    run_dir = tmp_path / "run"
    try:
        result = run_python(engine("a" * 40 + "!"), env=clean_env(DUMPCMP_DIR=str(run_dir), DUMPCMP_FILTER="name~(a+)+$"),
                            timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("the engine hung matching the dump filter")
    assert "engine finished" in result.stdout
    assert not (run_dir / "rank-00000" / "index.jsonl").exists()  # filtered out, as it should be


@pytest.mark.parametrize("pattern, message", [
    ("(" * 300 + "a" + ")" * 300, "nests deeper than 32 levels"),
    ("(" * 600 + ")" * 600, "at most 1000"),
    ("a{99999999999}", "repeat counts up to 1000"),
    ("a{2000}", "repeat count 2000 is above 1000"),
    ("(", "is not a valid regular expression"),
])
def test_pathological_filter_regexes_are_refused_at_parse_time(tmp_path, pattern, message):
    result = run_python(engine(), env=clean_env(DUMPCMP_DIR=str(tmp_path / "run"), DUMPCMP_FILTER=f"name~{pattern}"))
    assert "engine finished" in result.stdout
    assert result.stderr.count("dumpcmp: dumping disabled") == 1 and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_backtracking_shapes_fall_back_safely_without_re2(monkeypatch):
    import dumper.patterns as patterns

    monkeypatch.setattr(patterns, "_re2_module", lambda: None)
    with pytest.raises(ConfigError, match=r"repeats inside a repetition"):
        patterns.compile_user_regex("(a+)+$", "--names", ConfigError)
    plain = patterns.compile_user_regex(r"layers\.\d+\.mlp$", "--names", ConfigError)
    assert plain.engine == "re" and plain.search("model.layers.3.mlp") and not plain.search("x" * 10_000 + "mlp")


def test_lookarounds_still_work_through_pythons_engine():
    regex = compile_user_regex(r"(?<!shared_)expert", "--names", ConfigError)
    assert regex.search("routed_expert") and not regex.search("shared_expert")


DUMPCMP = [sys.executable, "-m", "comparator.cli"]


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    path = tmp_path_factory.mktemp("regex") / "run"
    run_python(engine(), env=clean_env(DUMPCMP_DIR=str(path)))
    return path


@pytest.mark.parametrize("args, message", [
    (["--names", "(" * 300 + ")" * 300], "--names"),
    (["--allow-fail", "a{99999999999}"], "--allow-fail"),
    (["--exclude", "(a+)+$"], None),  # RE2 takes it: compare runs
    (["--override-dims", "x{5000}=t"], "--override-dims name"),
])
def test_pathological_compare_regexes_give_one_line(small_run, args, message):
    # --allow-self: one run on both sides keeps these tests about the options alone.
    proc = subprocess.run([*DUMPCMP, "compare", str(small_run), str(small_run), "--allow-self", *args], env=clean_env(),
                          capture_output=True, text=True, timeout=300)
    assert "Traceback" not in proc.stderr, proc.stderr
    if message is None:
        assert proc.returncode == 0, proc.stderr
        return
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("dumpcmp: error:"), proc.stderr
    assert message in lines[0]


def test_name_map_replacement_naming_a_missing_group_gives_one_line(small_run, tmp_path):
    name_map = tmp_path / "map.yaml"
    name_map.write_text(yaml.safe_dump({"patterns": [{"target": "^hid(den)$", "baseline": "x\\9"}]}))
    proc = subprocess.run([*DUMPCMP, "compare", str(small_run), str(small_run), "--allow-self", "--name-map", str(name_map)],
                          env=clean_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().startswith("dumpcmp: error:") and "refers to group '\\\\9'" in proc.stderr


def test_user_regex_errors_are_dumpcmp_errors():
    with pytest.raises(DumpcmpError):
        compile_user_regex(123, "--names")  # type: ignore[arg-type]


@pytest.mark.parametrize("args, message", [
    (["compare", "RUN", "RUN", "--jobs", "100000"], "--jobs 100000: must be between 1 and 256"),
    (["run", "--against", "RUN", "--online-rtol", "nan", "--dir", "OUT", "--", sys.executable, "-c", "pass"],
     "--online-rtol nan is not a tolerance"),
    (["run", "--against", "RUN", "--escalate-steps", "99999999999999999999", "--dir", "OUT", "--", sys.executable,
      "-c", "pass"], "--escalate-steps 99999999999999999999 must be between 1 and"),
])
def test_bad_numbers_in_cli_options_give_one_line(small_run, tmp_path, args, message):
    args = [str(small_run) if a == "RUN" else str(tmp_path / "out") if a == "OUT" else a for a in args]
    proc = subprocess.run([*DUMPCMP, *args], env=clean_env(), capture_output=True, text=True, timeout=300)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and lines[-1].startswith("dumpcmp: error:") and message in lines[-1], proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "out").exists()
