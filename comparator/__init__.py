"""Compare two runs: match, unshard, align, measure, judge, report. Also home of the CLI.

    from comparator import compare
    report = compare("runs/tp1", "runs/tp2", thresholds="thresholds.yaml")
    report.first_divergence, report.summary, report.results, report.exit_code

Attributes are imported lazily so that the CLI (``dumpcmp --help``) stays fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from comparator.pipeline import compare
    from comparator.options import CompareOptions
    from comparator.results import FirstDivergence, Report, Summary, TensorResult

_LAZY = {
    "compare": "comparator.pipeline",
    "CompareOptions": "comparator.options",
    "Report": "comparator.results",
    "Summary": "comparator.results",
    "FirstDivergence": "comparator.results",
    "TensorResult": "comparator.results",
}

__all__ = ["CompareOptions", "FirstDivergence", "Report", "Summary", "TensorResult", "compare"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'comparator' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
