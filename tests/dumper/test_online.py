"""Online divergence (dumper/online.py): stats compared with a baseline as the run goes.

In-process pieces here (tolerances, the writer's decision, settings, the CLI's check of
the baseline); the example engine end to end is in tests/examples/test_online.py.
"""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from comparator.cli import app
from dumper.config import DumpConfig, config_from_env
from dumper.errors import ConfigError
from dumper.format import TensorStats
from dumper.online import OnlineConfig, rtol_for, stats_disagreement, validate_baseline
from dumper.reader import open_run
from tests.helpers.procs import dump_run

SCRIPT = """
import sys, torch
from dumper import dumper
scale = float(sys.argv[1]) if len(sys.argv) > 1 else {scale}
for step in range(4):
    for layer in range(3):
        x = torch.arange(12.0).reshape(3, 4) * (layer + 1)
        if layer == 1 and step >= 1:
            x = x * scale
        dumper.dump("hidden", x, layer=layer)
    dumper.dump("token_ids", torch.tensor([1, 2, 3]))
    dumper.step()
"""


def stats(**values) -> TensorStats:
    base = dict(numel=4, min=-1.0, max=1.0, mean=0.0, abs_mean=1.0, std=1.0, l2=2.0, nan=0, inf=0)
    return TensorStats(**{**base, **values})


def test_tolerance_is_per_dtype_and_the_coarser_dtype_decides():
    assert rtol_for("float32") == 1e-4 and rtol_for("bfloat16") == 2e-2
    assert rtol_for("float32", "bfloat16") == 2e-2
    assert rtol_for("int64") == 0.0  # ids must agree exactly


def test_stats_disagreement_names_the_statistic():
    baseline = stats().to_json()
    assert stats_disagreement(stats(l2=2.0001), baseline, rtol=1e-4) is None
    assert stats_disagreement(stats(l2=4.0), baseline, rtol=1e-4).startswith("l2 4 vs baseline 2")
    # The mean is judged on the abs_mean's scale: 0 vs 1e-6 is noise here.
    assert stats_disagreement(stats(mean=1e-6), baseline, rtol=1e-4) is None
    assert stats_disagreement(stats(mean=0.5), baseline, rtol=1e-4).startswith("mean 0.5 vs baseline 0")
    assert stats_disagreement(stats(nan=1), baseline, rtol=1.0) == "nan count 1 vs baseline 0"


def test_settings_from_env():
    config = config_from_env({"DUMPCMP_DIR": "x", "DUMPCMP_AGAINST": "b", "DUMPCMP_ESCALATE_STEPS": "3",
                              "DUMPCMP_ONLINE_RTOL": "1e-3"})
    assert (config.against, config.escalate_steps, config.online_rtol) == ("b", 3, 1e-3)
    with pytest.raises(ConfigError, match="DUMPCMP_ESCALATE_STEPS='two' is not a whole number"):
        config_from_env({"DUMPCMP_ESCALATE_STEPS": "two"})
    with pytest.raises(ConfigError, match="is not a tolerance"):
        config_from_env({"DUMPCMP_ONLINE_RTOL": "-1"})
    with pytest.raises(ConfigError, match="DUMPCMP_AGAINST needs DUMPCMP_MODE=tensor"):
        DumpConfig(dir="x", mode="stats", against="b")
    with pytest.raises(ConfigError, match="at least 1"):
        OnlineConfig(against="b", escalate_steps=0)


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("online") / "baseline"
    dump_run(run_dir, SCRIPT.format(scale=1.0), DUMPCMP_MODE="stats")
    return run_dir


def test_agreeing_run_writes_stats_only(baseline, tmp_path):
    dump_run(tmp_path / "target", SCRIPT.format(scale=1.0), DUMPCMP_AGAINST=str(baseline))
    rank_dir = tmp_path / "target" / "rank-00000"
    assert not list(rank_dir.glob("data-*"))
    info = json.loads((rank_dir / "rank.json").read_text())
    assert info["escalation"] is None
    assert info["online"]["compared"] == 16 and info["online"]["data_records"] == 0


def test_divergent_run_escalates_for_the_window(baseline, tmp_path):
    proc = dump_run(tmp_path / "target", SCRIPT.format(scale=2.0), DUMPCMP_AGAINST=str(baseline),
                    DUMPCMP_ESCALATE_STEPS="2")
    assert "diverges from" in proc.stderr
    info = json.loads((tmp_path / "target" / "rank-00000" / "rank.json").read_text())
    escalation = info["escalation"]
    assert (escalation["seq"], escalation["step"], escalation["name"], escalation["tags"]) == (5, 1, "hidden", {"layer": 1})
    assert escalation["until_step"] == 2 and escalation["reason"].startswith("l2 ")
    with open_run(tmp_path / "target") as run:
        with_data = [(r.step, r.name, r.tags.get("layer")) for r in run.records if r.file is not None]
        # From the divergent record on, through the window's end; the records before it passed.
        assert with_data == [(1, "hidden", 1), (1, "hidden", 2), (1, "token_ids", None),
                             (2, "hidden", 0), (2, "hidden", 1), (2, "hidden", 2), (2, "token_ids", None)]
        for record in run.records:
            if record.file is not None:
                run.load(record, verify=True)


def test_cli_refuses_a_baseline_that_is_not_a_run(tmp_path):
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(app, ["run", "--dir", str(tmp_path / "run"), "--against", str(tmp_path / "empty"),
                                      "--", "true"])
    assert result.exit_code == 2
    assert "is not a dumpcmp run (no readable run.json)" in result.output
    result = CliRunner().invoke(app, ["run", "--dir", str(tmp_path / "run"), "--against", str(tmp_path / "missing"),
                                      "--", "true"])
    assert result.exit_code == 2 and "no such directory" in result.output
    with pytest.raises(ConfigError, match="holds no rank index"):
        (tmp_path / "norank").mkdir()
        (tmp_path / "norank" / "run.json").write_text('{"schema_version": 1}')
        validate_baseline(str(tmp_path / "norank"))
