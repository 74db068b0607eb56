"""comparator/unshard_plans.py: one plan per layout gives every tensor the plan ``plan_unshard`` gives it."""

from __future__ import annotations

import dataclasses
import importlib.util
import sys

import pytest

from comparator.options import CompareOptions
from comparator.plan import plan_comparison
from comparator.results import Pair
from comparator.unshard import plan_unshard
from comparator.unshard_plans import UnshardPlanner
from dumper.reader import open_run
from tests.helpers.procs import REPO


def _synth_run_module():
    spec = importlib.util.spec_from_file_location("synth_run", REPO / "benchmarks" / "synth_run.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("synth_run", module)
    spec.loader.exec_module(module)
    return module


def _plans(runs: Pair, monkeypatch, *, remember: bool):
    if not remember:
        monkeypatch.setattr(UnshardPlanner, "plan", lambda self, label, records, dims=None:
                            plan_unshard(label, records, dims=dims))
    plan = plan_comparison(runs, CompareOptions.from_values())
    monkeypatch.undo()
    return plan


@pytest.mark.parametrize("pair", [("tp1", "tp2"), ("tp2", "tp4"), ("tp1", "tp2_missing_allreduce")])
def test_real_runs_plan_the_same_with_layouts_remembered(runs, monkeypatch, pair):
    with open_run(runs[pair[0]]) as baseline, open_run(runs[pair[1]]) as target:
        both = Pair(baseline, target)
        remembered, fresh = _plans(both, monkeypatch, remember=True), _plans(both, monkeypatch, remember=False)
    assert len(fresh.items) > 8 and remembered.items == fresh.items


def test_many_ranks_and_steps_plan_the_same_and_errors_name_each_tensor(tmp_path, monkeypatch):
    synth = _synth_run_module()
    layout = synth.Layout(tp=2, ep=2, dp=2)
    common = dict(layers=2, steps=3, tokens=4, hidden=8)
    synth.write_run(str(tmp_path / "target"), layout, **common)
    synth.write_run(str(tmp_path / "baseline"), synth.Layout(1, 1, 1), **common)
    with open_run(tmp_path / "baseline") as baseline, open_run(tmp_path / "target") as target:
        both = Pair(baseline, target)
        remembered, fresh = _plans(both, monkeypatch, remember=True), _plans(both, monkeypatch, remember=False)
        assert len(fresh.items) == 2 * 3 * 6 and remembered.items == fresh.items
        # A layout that fails is planned again for each tensor: each error names its own tensor.
        records = [r for r in target.records if r.name == "attn.qkv" and r.tags == {"layer": 0}]
        planner = UnshardPlanner()
        for step in range(3):
            shards = [dataclasses.replace(r, dims="t h") for r in records if r.step == step]
            with pytest.raises(Exception, match=f"qkv@step{step}"):
                planner.plan(f"qkv@step{step}", shards)
