"""Do two runs make a meaningful comparison? What differs between their fingerprints.

Two kinds of difference (comparator/fingerprint.py reads what each run recorded):

- **model**: another architecture, config, weights, quantisation or dtype. The numbers
  would differ for reasons that say nothing about the engine: ``compare`` refuses (exit
  2, one line) unless told ``--allow-different-model``; a dtype change alone is allowed
  by a thresholds file that says ``allow_dtype_change: true``.
- **expected**: the parallel layout, engine and dumper versions, engine settings, patch
  files, the command and the environment. Listed in every report, never refused: a
  layout change is usually the point of the comparison.

A run compared with itself (the same directory, or the same run id) is refused too
(``--allow-self``): a gate that does that passes forever.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Literal

from comparator.errors import ComparabilityError
from comparator.fingerprint import RunFingerprint, read_fingerprint

Kind = Literal["model", "expected"]
# Model fields that make a comparison meaningless when they differ (dtype: unless the thresholds allow it).
MODEL_FIELDS = ("architecture", "config_hash", "weights", "quantization", "dtype")
EXPECTED_MODEL_FIELDS = ("engine", "engine_version")


@dataclass(frozen=True, kw_only=True)
class Difference:
    """One field on which the two runs' fingerprints differ."""

    field: str  # e.g. "model.dtype", "parallel.ep", "env.VLLM_ATTENTION_BACKEND", "command"
    baseline: Any
    target: Any
    kind: Kind
    allowed_by: str | None = None  # for a model difference: what allowed it (an option, the thresholds file)

    @property
    def blocking(self) -> bool:
        return self.kind == "model" and self.allowed_by is None

    def describe(self) -> str:
        return f"{self.field}: {_show(self.baseline)} -> {_show(self.target)}"

    def to_json(self) -> dict[str, Any]:
        return {"field": self.field, "baseline": self.baseline, "target": self.target, "kind": self.kind,
                "allowed_by": self.allowed_by}


@dataclass(frozen=True, kw_only=True)
class RunsComparison:
    """What differs between two runs' fingerprints; truthy when nothing blocks the comparison."""

    baseline: RunFingerprint
    target: RunFingerprint
    differences: tuple[Difference, ...]
    notes: tuple[str, ...] = ()  # what could not be checked (a side recorded no model identity, ...)

    def __bool__(self) -> bool:
        return not self.blocking

    @property
    def blocking(self) -> tuple[Difference, ...]:
        return tuple(d for d in self.differences if d.blocking)

    @property
    def model(self) -> tuple[Difference, ...]:
        return tuple(d for d in self.differences if d.kind == "model")

    @property
    def expected(self) -> tuple[Difference, ...]:
        return tuple(d for d in self.differences if d.kind == "expected")

    def to_json(self) -> dict[str, Any]:
        return {
            "baseline": self.baseline.to_json(), "target": self.target.to_json(),
            "differences": [d.to_json() for d in self.differences], "notes": list(self.notes),
        }


def _show(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return " ".join(str(v) for v in value) or "(none)"
    return "(none)" if value is None else str(value)


def compare_fingerprints(baseline: RunFingerprint, target: RunFingerprint, *, allow_different_model: bool = False,
                         allow_dtype_change: bool = False) -> RunsComparison:
    differences: list[Difference] = []
    notes: list[str] = []
    pair = {"baseline": baseline, "target": target}

    def add(field: str, b: Any, t: Any, kind: Kind, allowed_by: str | None = None) -> None:
        if b != t:
            differences.append(Difference(field=field, baseline=b, target=t, kind=kind, allowed_by=allowed_by))

    for side, fp in pair.items():
        for field in fp.model_conflicts:
            notes.append(f"the {side}'s ranks disagree on model.{field}")
    if baseline.model is None or target.model is None:
        missing = [side for side, fp in pair.items() if fp.model is None]
        notes.append(f"the model identity was not recorded by the {' and the '.join(missing)} "
                     "(its engine preset does not call dumper.record_model): another model would go unnoticed")
    else:
        for field in MODEL_FIELDS:
            b, t = baseline.model.get(field), target.model.get(field)
            if b is None or t is None:
                continue  # e.g. no weights digest on one side: nothing to compare
            allowed_by = "--allow-different-model" if allow_different_model else None
            if field == "dtype" and allow_dtype_change and allowed_by is None:
                allowed_by = "thresholds: allow_dtype_change"
            add(f"model.{field}", b, t, "model", allowed_by)
        for field in EXPECTED_MODEL_FIELDS:
            add(f"model.{field}", baseline.model.get(field), target.model.get(field), "expected")
        b_settings, t_settings = baseline.model.get("settings") or {}, target.model.get("settings") or {}
        for key in sorted(set(b_settings) | set(t_settings)):
            add(f"settings.{key}", b_settings.get(key), t_settings.get(key), "expected")
    for axis in sorted(set(baseline.parallel) | set(target.parallel)):
        add(f"parallel.{axis}", baseline.parallel.get(axis, 1), target.parallel.get(axis, 1), "expected")
    add("mode", baseline.mode, target.mode, "expected")
    add("dumper_version", baseline.dumper_version or baseline.tool_version,
        target.dumper_version or target.tool_version, "expected")
    # Patch files by name: the same preset from two checkouts is the same file when its content is.
    b_patches = {os.path.basename(p): h for p, h in baseline.patches.items()}
    t_patches = {os.path.basename(p): h for p, h in target.patches.items()}
    for name in sorted(set(b_patches) | set(t_patches)):
        add(f"patch.{name}", b_patches.get(name), t_patches.get(name), "expected")
    for name in sorted(set(baseline.env) | set(target.env)):
        add(f"env.{name}", baseline.env.get(name), target.env.get(name), "expected")
    add("command", list(baseline.command), list(target.command), "expected")
    return RunsComparison(baseline=baseline, target=target, differences=tuple(differences), notes=tuple(notes))


def same_run(baseline: str | os.PathLike[str], target: str | os.PathLike[str],
             fingerprints: tuple[RunFingerprint, RunFingerprint] | None = None) -> str | None:
    """Why the two paths are one run (the same directory, or the same run id), or None."""
    b, t = os.path.realpath(os.fspath(baseline)), os.path.realpath(os.fspath(target))
    if b == t:
        return f"the same directory ({os.fspath(baseline)})"
    b_fp, t_fp = fingerprints or (read_fingerprint(baseline), read_fingerprint(target))
    if b_fp.run_id and b_fp.run_id == t_fp.run_id:
        return f"the same run (run id {b_fp.run_id}; a copy of one run directory)"
    return None


def check_comparable(baseline: str | os.PathLike[str], target: str | os.PathLike[str], *, allow_self: bool = False,
                     allow_different_model: bool = False, allow_dtype_change: bool = False) -> RunsComparison:
    """The runs' fingerprints compared; raises ComparabilityError when comparing them means nothing."""
    fingerprints = (read_fingerprint(baseline), read_fingerprint(target))
    if not allow_self:
        why = same_run(baseline, target, fingerprints)
        if why is not None:
            raise ComparabilityError(
                f"baseline and target are {why}: a run compared with itself always passes; "
                "give two different runs (or --allow-self to check the tool itself)")
    runs = compare_fingerprints(*fingerprints, allow_different_model=allow_different_model,
                                allow_dtype_change=allow_dtype_change)
    if runs.blocking:
        shown = "; ".join(d.describe() for d in runs.blocking)
        dtype_only = all(d.field == "model.dtype" for d in runs.blocking)
        fix = ("a thresholds file with 'allow_dtype_change: true' or --allow-different-model" if dtype_only
               else "--allow-different-model")
        raise ComparabilityError(
            f"baseline and target ran different models ({shown}): their tensors differ for reasons that say "
            f"nothing about the engine; compare runs of one model, or pass {fix} if this is intended")
    return runs
