"""A comparison pays only for what its runs need: stats-mode runs are judged without importing torch."""

from __future__ import annotations

import json

from tests.comparator.test_unshard_plans import _synth_run_module
from tests.helpers.procs import run_python


def test_stats_runs_compare_without_torch(tmp_path):
    synth = _synth_run_module()
    common = dict(layers=2, steps=2, tokens=4, hidden=8)
    synth.write_run(str(tmp_path / "target"), synth.Layout(tp=2, ep=1, dp=1), **common)
    synth.write_run(str(tmp_path / "baseline"), synth.Layout(1, 1, 1), **common)
    proc = run_python(f"""
        import json, sys
        from comparator.pipeline import compare
        report = compare({str(tmp_path / "baseline")!r}, {str(tmp_path / "target")!r})
        print(json.dumps({{"torch": "torch" in sys.modules, "compared": report.summary.compared}}))
    """)
    outcome = json.loads(proc.stdout.splitlines()[-1])
    assert outcome == {"torch": False, "compared": 2 * 2 * 6}
