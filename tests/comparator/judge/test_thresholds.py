from __future__ import annotations

import re

import pytest

from comparator.errors import ThresholdsError
from comparator.judge.metrics import compute_metrics
from comparator.judge.thresholds import judged_dtype, load_thresholds
from comparator.judge.verdicts import judge
from comparator.results import TensorMeasurement


def test_defaults_depend_on_the_less_precise_dtype():
    defaults = load_thresholds(None)
    assert judged_dtype("float32", "bfloat16") == "bfloat16"
    rule, fp32 = defaults.limits_for("x", {}, "float32", "float32")
    _, bf16 = defaults.limits_for("x", {}, "float32", "bfloat16")
    assert rule == "default (float32)" and bf16["rel_diff"].high > fp32["rel_diff"].high
    _, ints = defaults.limits_for("ids", {}, "int64", "int64")
    assert ints["max_abs"].high == 0


def test_first_matching_rule_wins_over_defaults(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text(
        "defaults:\n  float32: {rel_diff: 1e-4}\n"
        "rules:\n"
        "  - name: 'mlp'\n    tags: {layer: 1}\n    rel_diff: 0.5\n    norm_ratio: null\n"
        "  - name: 'mlp'\n    cosine: 0.9\n"
    )
    thresholds = load_thresholds(path)
    rule, limits = thresholds.limits_for("mlp_out", {"layer": 1}, "float32", "float32")
    assert rule == "t.yaml:4 over default (float32)" and limits["rel_diff"].high == 0.5 and "norm_ratio" not in limits
    rule, limits = thresholds.limits_for("mlp_out", {"layer": 0}, "float32", "float32")
    assert rule.startswith("t.yaml:8 ") and limits["cosine"].low == 0.9 and limits["rel_diff"].high == 1e-4


def test_judgement_reports_the_tolerance_that_would_pass():
    torch = __import__("torch")
    x = torch.randn(32, generator=torch.Generator().manual_seed(0))
    metrics = compute_metrics(x, 2 * x)
    criteria = load_thresholds(None).criteria_for("tensor", "x", {}, "float32", "float32")
    judgement = judge(TensorMeasurement(metrics=metrics), criteria)
    assert set(judgement.failed) == {"rel_diff", "norm_ratio"}
    assert judgement.required["rel_diff"].high == pytest.approx(0.2)
    assert judgement.required["norm_ratio"].high == pytest.approx(2.0)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("rules:\n  - name: x\n    rel_dif: 1\n", ":3: unknown metric 'rel_dif'"),
        ("rules:\n  - name: x\n    norm_ratio: [2, 1]\n", ":3: invalid limit for norm_ratio"),
        ("rules:\n  - name: '(x'\n", ":2: name '(x' is not a valid regular expression"),
        ("rules:\n  - name: x\n    tags: layer\n", ":3: tags must be a mapping, e.g. {layer: 0}, not 'layer'"),
        ("rules:\n  - name: x\n    rel_diff: .nan\n", ":3: invalid limit for rel_diff: nan (NaN is not a limit)"),
        ("rules:\n  - name: x\n    norm_ratio: true\n", ":3: invalid limit for norm_ratio: True (norm_ratio takes one number)"),
        ("rules:\n  - name: x\n    checksum: true\n", ":3: unknown metric 'checksum'"),
        ("rules:\n  - [x\n", ":3: invalid YAML"),
        ("rule: []\n", ":1: unknown key 'rule'"),
        ("defaults:\n  float31: {rel_diff: 1}\n", ":2: unknown dtype class 'float31'"),
        ("rules:\n  - name: x\n    rel_diff: abc\n", ":3: invalid limit for rel_diff"),
        ("!!python/object:os.system ls\n", "invalid YAML"),
    ],
)
def test_errors_name_file_and_line(tmp_path, text, message):
    path = tmp_path / "t.yaml"
    path.write_text(text)
    with pytest.raises(ThresholdsError, match=re.escape(message)):
        load_thresholds(path)
