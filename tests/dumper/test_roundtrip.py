"""Every dtype and shape class written by a real process reads back bit for bit."""

from __future__ import annotations

import math

import pytest
import torch

from dumper.reader import open_run
from dumper.stats import checksum, tensor_stats
from tests.dumper.cases import make_cases
from tests.helpers.procs import dump_run

CHILD = """
from dumper import dumper
from tests.dumper.cases import make_cases
for name, tensor in make_cases().items():
    dumper.dump(name, tensor, dims="x", kind="case")
dumper.step()
dumper.dump("after_step", make_cases()["f32"])
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("roundtrip") / "run"
    dump_run(run_dir, CHILD, DUMPCMP_FILE_MB="0.5")  # small files: several data files
    with open_run(run_dir) as opened:
        yield opened


@pytest.mark.parametrize("name", list(make_cases()))
def test_every_case_round_trips_exactly(run, name):
    expected = make_cases()[name]
    (record,) = [r for r in run.records if r.name == name]
    loaded = run.load(record, verify=True)
    assert loaded.dtype == expected.dtype
    assert tuple(loaded.shape) == tuple(expected.shape) == record.shape
    # Bitwise: NaN payloads and -0.0 included.
    assert checksum(loaded) == checksum(expected.contiguous()) == record.checksum
    assert record.dtype == str(expected.dtype).removeprefix("torch.")
    assert record.dims == "x" and record.tags == {"kind": "case"}
    assert record.nbytes == expected.numel() * expected.element_size()


def test_stats_match_float64_reference(run):
    cases = make_cases()
    for record in run.records:
        if record.name not in cases or cases[record.name].numel() == 0:
            continue
        tensor = cases[record.name].to(torch.float32 if cases[record.name].dtype.is_floating_point and cases[record.name].element_size() == 1 else cases[record.name].dtype)
        values = tensor.double().reshape(-1)
        finite = values[torch.isfinite(values)]
        stats = record.stats
        assert stats.nan == int(torch.isnan(values).sum())
        assert stats.inf == int(torch.isinf(values).sum())
        if finite.numel() == 0:
            assert stats.min is None and stats.l2 is None
            continue
        assert stats.min == pytest.approx(float(finite.min()))
        assert stats.max == pytest.approx(float(finite.max()))
        assert stats.mean == pytest.approx(float(finite.mean()), rel=1e-9, abs=1e-9)
        assert stats.abs_mean == pytest.approx(float(finite.abs().mean()), rel=1e-9)
        assert stats.std == pytest.approx(float(finite.std(unbiased=False)), rel=1e-9, abs=1e-12)
        assert stats.l2 == pytest.approx(float(finite.norm()), rel=1e-9)


def test_steps_and_execution_order(run):
    names = [r.name for r in run.records]
    assert names[: len(make_cases())] == list(make_cases())
    assert [r.seq for r in run.records] == list(range(len(names)))
    assert {r.name: r.step for r in run.records}["after_step"] == 1
    assert len({r.file for r in run.records}) > 1, "expected several data files with DUMPCMP_FILE_MB=0.5"
    assert run.problems == []
    assert run.ranks[0].status == "closed"


def test_huge_values_do_not_overflow_stats():
    stats = tensor_stats(torch.tensor([1e300, -1e300, 3.0], dtype=torch.float64))
    assert math.isfinite(stats.l2) and stats.l2 == pytest.approx(math.sqrt(2) * 1e300)


@pytest.mark.parametrize("offset", [0.0, 1e3, 1e8])
def test_stats_stay_exact_when_the_mean_dwarfs_the_spread(offset):
    """The one-pass variance (sum of squares minus n mean^2) falls back to two passes where it would cancel."""
    noise = torch.randn(2_500_000, dtype=torch.float64, generator=torch.Generator().manual_seed(3))  # 3 chunks
    for tensor in (noise + offset, (noise * 0.01 + offset).float()):
        stats = tensor_stats(tensor)
        reference = tensor.double()
        assert stats.std == pytest.approx(float(reference.std(correction=0)), rel=1e-9)
        assert stats.mean == pytest.approx(float(reference.mean()), rel=1e-12, abs=1e-12)
        assert stats.abs_mean == pytest.approx(float(reference.abs().mean()), rel=1e-12)
        assert stats.l2 == pytest.approx(float(reference.norm()), rel=1e-10)
