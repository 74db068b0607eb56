"""Numerical edge cases, dumped by a real process and compared end to end.

All-zero tensors, NaN/Inf, denormals, empty tensors, bf16 against fp32, integer
tensors (exact) and values whose squares overflow float64.
"""

from __future__ import annotations

import math

import pytest

from comparator import compare
from tests.helpers.procs import dump_run

CASES = """
import torch
from dumper import dumper
target = {target}
def emit(name, baseline, changed):
    dumper.dump(name, changed if target else baseline)

x = torch.linspace(-1, 1, 64)
emit("zeros_both", torch.zeros(64), torch.zeros(64))
emit("zeros_baseline_only", torch.zeros(64), x)
emit("zeros_target_only", x, torch.zeros(64))
nan = x.clone(); nan[3] = float("nan")
emit("nan_both_same_place", nan, nan)
emit("nan_target_only", x, nan)
inf = x.clone(); inf[5] = float("inf")
emit("inf_target_only", x, inf)
tiny = torch.full((64,), 1e-40)  # float32 denormals
emit("denormals_equal", tiny, tiny)
emit("denormals_doubled", tiny, tiny * 2)
emit("empty", torch.empty(0, 8), torch.empty(0, 8))
emit("bf16_vs_fp32", x * 3, (x * 3).bfloat16())
emit("ints_equal", torch.arange(100), torch.arange(100))
off = torch.arange(100); off[42] += 1
emit("ints_off_by_one", torch.arange(100), off)
huge = torch.full((64,), 1e300, dtype=torch.float64)
emit("huge_equal", huge, huge)
emit("huge_doubled", huge, huge * 1.5)
"""


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("numerics")
    dump_run(root / "base", CASES.format(target=False))
    dump_run(root / "target", CASES.format(target=True))
    return compare(root / "base", root / "target")


def result(report, name):
    (found,) = [r for r in report.results if r.name == name]
    return found


@pytest.mark.parametrize("name", ["zeros_both", "nan_both_same_place", "denormals_equal", "empty", "ints_equal", "huge_equal"])
def test_equal_edge_cases_pass(report, name):
    r = result(report, name)
    assert r.status == "pass", (name, r)


@pytest.mark.parametrize("name", [
    "zeros_baseline_only", "zeros_target_only", "nan_target_only", "inf_target_only",
    "denormals_doubled", "ints_off_by_one", "huge_doubled",
])
def test_unequal_edge_cases_fail(report, name):
    r = result(report, name)
    assert r.status == "fail", (name, r)


def test_nan_only_in_target_is_named(report):
    hints = " ".join(filter(None, [result(report, "nan_target_only").hint, result(report, "inf_target_only").hint]))
    assert "NaN" in hints and "Inf" in hints


def test_bf16_against_fp32_is_upcast_and_judged_loosely(report):
    r = result(report, "bf16_vs_fp32")
    assert r.status == "pass", r


def test_huge_values_do_not_overflow(report):
    metrics = result(report, "huge_doubled").metrics
    assert metrics.norm_ratio == pytest.approx(1.5)
    assert metrics.rel_l2 == pytest.approx(0.5)
    assert metrics.rel_diff == pytest.approx(1 - 2 * 1.5 / (1 + 1.5**2))
    assert math.isfinite(metrics.baseline_norm) and metrics.baseline_norm == pytest.approx(8e300)


def test_scale_hint_on_doubled_denormals(report):
    r = result(report, "denormals_doubled")
    assert r.hint and "2" in r.hint
