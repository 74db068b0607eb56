"""``dumpcmp show --format json``: a TensorView as one JSON object (a pure function of the view)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from comparator.inspect.show import TensorView
from comparator.report.json import result_to_json


def view_to_json(view: TensorView) -> dict[str, Any]:
    """The view as JSON-safe data (non-finite numbers become null, as in compare's JSON)."""
    return _finite(_view(view))


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _view(view: TensorView) -> dict[str, Any]:
    data: dict[str, Any] = {
        "run": view.run,
        "name": view.name,
        "matches": [{"step": t.step, "tags": t.tags, "ranks": sorted({r.rank for r in t.records}),
                     "shape": list(t.records[0].shape), "dtype": t.records[0].dtype} for t in view.matches],
        "tensor": None,
    }
    tensor = view.tensor
    if tensor is None:
        return data
    first = tensor.records[0]
    data["tensor"] = {
        "label": tensor.label,
        "step": tensor.step,
        "tags": tensor.tags,
        "dtype": first.dtype,
        "dims": first.dims,
        "shape": list(view.plan.shape) if view.plan is not None else None,
        "unshard": view.plan.describe() if view.plan is not None else None,
        "unshard_error": view.plan_error,
        "has_data": view.has_data,
        "stats": dataclasses.asdict(view.stats) if view.stats is not None else None,
        "stats_error": view.stats_error,
        "shards": [{"rank": s.record.rank, "place": s.place, "shape": list(s.record.shape),
                    "stats": s.record.stats.to_json(), "checksum": s.record.checksum,
                    "file": f"{s.record.source}/{s.record.file}" if s.record.file else None, "key": s.record.key}
                   for s in view.shards],
        "notes": list(view.notes),
    }
    data["comparison"] = result_to_json(view.comparison) if view.comparison is not None else None
    return data


def per_token_rows(view: TensorView) -> list[tuple[int, float]]:
    """(token, rel_l2) of the comparison, in token order; empty without a baseline or a token dim."""
    result = view.comparison
    if result is None or result.metrics is None or result.metrics.per_token_rel_l2 is None:
        return []
    return list(enumerate(result.metrics.per_token_rel_l2))
