"""Pass/fail limits: a YAML file of rules (first match wins) over dtype-aware defaults.

File format (``--thresholds FILE``)::

    defaults:                   # optional, per dtype, merged over the built-in defaults
      bfloat16: {rel_diff: 2.0e-3}
    rules:                      # first match wins; a bare list of rules also works
      - name: 'logits$'         # regex searched in the tensor name (anchor with ^...$)
        tags: {layer: 0}        # optional: tags that must be equal
        dtype: bfloat16         # optional: either side's dtype
        rel_diff: 1e-2          # upper bound
        cosine: 0.999           # lower bound
        norm_ratio: [0.98, 1.02]  # range; a number x means [1-x, 1+x]
        max_abs: null           # null removes a default limit
        calibrated: {rel_diff: 4e-14, norm_ratio: 7e-8}  # optional: the noise it was calibrated on
    allow_dtype_change: true    # optional: the runs may have been run in different dtypes
                                # (compare refuses that otherwise: comparator/comparability.py)
    stats:                      # optional: the same shape, for stats-only comparisons
      defaults:
        float32: {norm_ratio: 1e-3}
      rules:
        - name: 'logits$'
          checksum: true        # require bitwise-identical data (determinism gate)
        - name: 'router'
          mean_diff: 1e-2

A rule's limits are merged over the default limits of the tensor's dtype (the less
precise of the two sides). Tensor metrics: rel_diff, rel_l2, cosine, norm_ratio,
max_abs, mean_abs, max_token_rel_l2 (worst token), replica_rel_diff (disagreement
between ranks of a replicated tensor). Stats metrics (comparator/judge/stats_only.py):
norm_ratio, mean_diff, abs_mean_diff, replica_stats_diff. Loaded with the guarded YAML
loader (dumper/yamlsafe.py), in one pass; nothing is evaluated; every error says file:line.

``calibrated:`` (written by ``dumpcmp calibrate``, comparator/judge/calibrate.py) records the noise
measured between runs that should agree: an upper metric's largest value, or norm_ratio's
largest distance from 1. Results judged by such a rule carry a ``floor_ratio``: how many
times that noise the tensor's own metric is (the largest over the calibrated metrics).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from comparator.errors import ThresholdsError
from comparator.judge.limits import (BUILTIN_DEFAULTS, DEFAULTS, LOWER, METRICS, RANGE, STATS_DEFAULTS,
                                     TENSOR_DEFAULTS, Limit, MeasurementKind, dtype_class, judged_dtype, make_limit)
from dumper.patterns import UserRegex, compile_user_regex
from dumper.safeio import read_text

__all__ = ["BUILTIN_DEFAULTS", "STATS_DEFAULTS", "Criteria", "Limit", "Rule", "RuleSet", "Thresholds", "dtype_class",
           "judged_dtype", "load_thresholds"]

CALIBRATED_METRICS = tuple(m for m in METRICS["tensor"] if m not in LOWER)
# Keys of a rule besides its limits, per kind of measurement.
RULE_KEYS: dict[MeasurementKind, tuple[str, ...]] = {"tensor": ("name", "tags", "dtype", "calibrated"),
                                                     "stats": ("name", "tags", "dtype", "checksum")}
TOP_KEYS = ("rules", "defaults", "stats", "allow_dtype_change")


@dataclass(frozen=True, kw_only=True)
class Rule:
    source: str  # "thresholds.yaml:12"
    limits: dict[str, Limit | None]  # None removes a default limit
    name: UserRegex | None = None
    tags: dict[str, Any] = field(default_factory=dict)
    dtype: str | None = None
    calibrated: dict[str, float] = field(default_factory=dict)  # metric -> measured noise (dumpcmp calibrate)
    checksum: bool = False  # stats rules: the checksums must match (bitwise-identical data)

    def matches(self, name: str, tags: Mapping[str, Any], dtypes: tuple[str, ...]) -> bool:
        if self.name is not None and self.name.search(name) is None:
            return False
        if self.dtype is not None and self.dtype not in dtypes:
            return False
        return all(key in tags and _same(tags[key], value) for key, value in self.tags.items())


def _same(a: Any, b: Any) -> bool:
    return a == b or str(a) == str(b)


@dataclass(frozen=True, kw_only=True)
class Criteria:
    """What one tensor is judged by: the rule's description, its limits and what else it demands."""

    rule: str
    limits: dict[str, Limit]
    calibrated: dict[str, float] = field(default_factory=dict)
    checksum: bool = False  # stats: the checksums must match
    # The metrics whose limits are the dtype's defaults, not a rule's (comparator/judge/small_tensors.py).
    defaulted: frozenset[str] = frozenset()


@dataclass(frozen=True, kw_only=True)
class RuleSet:
    """The rules and per-dtype default limits of one kind of measurement."""

    kind: MeasurementKind
    rules: tuple[Rule, ...] = ()
    defaults: dict[str, dict[str, Limit | None]] = field(default_factory=dict)

    def criteria_for(self, name: str, tags: Mapping[str, Any], baseline_dtype: str, target_dtype: str) -> Criteria:
        klass = judged_dtype(baseline_dtype, target_dtype)
        merged: dict[str, Limit | None] = dict(self.defaults.get(klass, {}))
        default = f"default ({klass})" if self.kind == "tensor" else f"stats default ({klass})"
        for rule in self.rules:
            if rule.matches(name, tags, (baseline_dtype, target_dtype)):
                merged.update(rule.limits)
                where = rule.source if self.kind == "tensor" else f"{rule.source} (stats)"
                return Criteria(rule=f"{where} over {default}", limits=_active(merged),
                                calibrated=dict(rule.calibrated), checksum=rule.checksum,
                                defaulted=frozenset(merged).difference(rule.limits))
        return Criteria(rule=default, limits=_active(merged), defaulted=frozenset(merged))


def _active(limits: dict[str, Limit | None]) -> dict[str, Limit]:
    return {metric: limit for metric, limit in limits.items() if limit is not None}


@dataclass(frozen=True, kw_only=True)
class Thresholds:
    """A thresholds file, parsed: one rule set per kind of measurement."""

    tensor: RuleSet = RuleSet(kind="tensor", defaults=TENSOR_DEFAULTS)
    stats: RuleSet = RuleSet(kind="stats", defaults=STATS_DEFAULTS)
    source: str | None = None  # the YAML file, if any
    # The file says runs of different dtypes (a bf16 target against an fp32 baseline) may be compared.
    allow_dtype_change: bool = False

    @property
    def rules(self) -> tuple[Rule, ...]:
        """The tensor rules."""
        return self.tensor.rules

    def criteria_for(self, kind: MeasurementKind, name: str, tags: Mapping[str, Any], baseline_dtype: str,
                     target_dtype: str) -> Criteria:
        rules = self.tensor if kind == "tensor" else self.stats
        return rules.criteria_for(name, tags, baseline_dtype, target_dtype)

    def limits_for(self, name: str, tags: Mapping[str, Any], baseline_dtype: str, target_dtype: str) -> tuple[str, dict[str, Limit]]:
        """(rule description, active limits) of a tensor comparison."""
        criteria = self.tensor.criteria_for(name, tags, baseline_dtype, target_dtype)
        return criteria.rule, criteria.limits

    def calibration_for(self, name: str, tags: Mapping[str, Any], baseline_dtype: str, target_dtype: str) -> dict[str, float]:
        """The calibrated noise of the rule that judges this tensor (empty when it was not calibrated)."""
        return self.tensor.criteria_for(name, tags, baseline_dtype, target_dtype).calibrated


def load_thresholds(path: str | os.PathLike[str] | None) -> Thresholds:
    """Read a thresholds file; ``None`` gives the built-in defaults. Errors say file:line."""
    if path is None:
        return Thresholds()

    path = os.fspath(path)
    try:
        text = read_text(path, what="thresholds file", error=ThresholdsError)
    except OSError as exc:
        raise ThresholdsError(f"{path}: cannot read thresholds file ({exc.strerror})") from None
    from dumper import yamlsafe

    data, root = yamlsafe.load_document(text, path, ThresholdsError)
    return _Parser(path, root).thresholds(data)


Fail = Callable[..., ThresholdsError]  # (message, *keys of the YAML node it is about) -> the error


class _Parser:
    """One pass over a thresholds file: top-level rules and defaults, then the stats section."""

    def __init__(self, path: str, root: Any) -> None:
        self.path = path
        self.root = root

    def fail(self, message: str, *keys: Any) -> ThresholdsError:
        return ThresholdsError(f"{self.path}:{_line(self.root, *keys)}: {message}")

    def thresholds(self, data: Any) -> Thresholds:
        if data is None:
            return Thresholds(source=self.path)
        if isinstance(data, list):
            return Thresholds(tensor=self.rule_set("tensor", {"rules": data}, (), bare_list=True), source=self.path)
        if not isinstance(data, dict):
            raise self.fail("expected a list of rules, or a mapping with 'rules' (and optional 'defaults', 'stats')")
        unknown = [k for k in data if k not in TOP_KEYS]
        if unknown:
            raise self.fail(f"unknown key {unknown[0]!r}; valid top-level keys: {', '.join(TOP_KEYS)}", unknown[0])
        # NOTE: allow_dtype_change is read by comparator/comparability.py, not by any rule.
        allow_dtype_change = data.get("allow_dtype_change", False)
        if not isinstance(allow_dtype_change, bool):
            raise self.fail("allow_dtype_change must be true or false", "allow_dtype_change")
        tensor = self.rule_set("tensor", {k: v for k, v in data.items() if k not in ("stats", "allow_dtype_change")}, ())
        stats_data = data.get("stats")
        if stats_data is None:
            return Thresholds(tensor=tensor, source=self.path, allow_dtype_change=allow_dtype_change)
        if not isinstance(stats_data, dict) or any(k not in ("rules", "defaults") for k in stats_data):
            raise self.fail("stats: expected a mapping with 'rules' and/or 'defaults', like the top level", "stats")
        return Thresholds(tensor=tensor, stats=self.rule_set("stats", stats_data, ("stats",)), source=self.path,
                          allow_dtype_change=allow_dtype_change)

    def rule_set(self, kind: MeasurementKind, data: dict[str, Any], prefix: tuple[Any, ...], *,
                 bare_list: bool = False) -> RuleSet:
        section = "stats." if kind == "stats" else ""
        defaults = {klass: dict(limits) for klass, limits in DEFAULTS[kind].items()}
        defaults_data = data.get("defaults") or {}
        if not isinstance(defaults_data, dict):
            raise self.fail(f"{section}defaults: must map dtype classes to limits, e.g. "
                            f"{{bfloat16: {{{METRICS[kind][0]}: 1e-3}}}}", *prefix, "defaults")
        for klass, limits in defaults_data.items():
            klass = str(klass)
            keys = (*prefix, "defaults", klass)
            if klass not in defaults:
                raise self.fail(f"unknown dtype class {klass!r} in {section}defaults; valid: {', '.join(defaults)}", *keys)
            if not isinstance(limits, dict):
                raise self.fail(f"{section}defaults.{klass} must map metrics to limits", *keys)
            if "checksum" in limits and kind == "stats":
                raise self.fail(f"{section}defaults.{klass}: 'checksum' belongs in a rule, e.g. "
                                "{name: '.', checksum: true}", *keys, "checksum")
            defaults[klass].update(self.limits(kind, limits, keys))
        rules_data = data.get("rules") or []
        if not isinstance(rules_data, list):
            raise self.fail(f"{section}rules: must be a list of rules", *prefix, "rules")
        rules_prefix = prefix if bare_list else (*prefix, "rules")
        rules = tuple(self.rule(kind, rule, (*rules_prefix, index)) for index, rule in enumerate(rules_data))
        return RuleSet(kind=kind, rules=rules, defaults=defaults)

    def rule(self, kind: MeasurementKind, data: Any, keys: tuple[Any, ...]) -> Rule:
        if not isinstance(data, dict):
            example = "{name: 'mlp', rel_diff: 1e-3}" if kind == "tensor" else "{name: 'logits', checksum: true}"
            raise self.fail(f"a rule must be a mapping, e.g. {example}", *keys)
        pattern = None
        if "name" in data:
            pattern = compile_user_regex(str(data["name"]), f"{self.path}:{_line(self.root, *keys, 'name')}: name",
                                         ThresholdsError)
        tags = data.get("tags") or {}
        if not isinstance(tags, dict):
            raise self.fail(f"tags must be a mapping, e.g. {{layer: 0}}, not {tags!r}", *keys, "tags")
        checksum = data.get("checksum", False)
        if not isinstance(checksum, bool):
            raise self.fail(f"checksum must be true or false, not {checksum!r}", *keys, "checksum")
        limits = self.limits(kind, {k: v for k, v in data.items() if k not in RULE_KEYS[kind]}, keys)
        calibrated = self.calibrated(data.get("calibrated"), (*keys, "calibrated")) if kind == "tensor" else {}
        return Rule(source=f"{os.path.basename(self.path)}:{_line(self.root, *keys)}", limits=limits, name=pattern,
                    tags=dict(tags), dtype=str(data["dtype"]) if data.get("dtype") is not None else None,
                    calibrated=calibrated, checksum=checksum)

    def limits(self, kind: MeasurementKind, data: dict[str, Any], keys: tuple[Any, ...]) -> dict[str, Limit | None]:
        valid = METRICS[kind]
        limits: dict[str, Limit | None] = {}
        for metric, value in data.items():
            if metric not in valid:
                what = "metric" if kind == "tensor" else "stats metric"
                other = (" (checksum belongs in the stats: section)" if metric == "checksum" and kind == "tensor"
                         else "")
                raise self.fail(f"unknown {what} {metric!r}; valid metrics: {', '.join(valid)} "
                                f"(and {', '.join(RULE_KEYS[kind])}){other}", *keys, metric)
            if value is None:
                limits[metric] = None
                continue
            try:
                limits[metric] = make_limit(metric, value)
            except (TypeError, ValueError) as exc:
                expected = "[low, high] or a number x for [1-x, 1+x]" if metric in RANGE else "a number"
                raise self.fail(f"invalid limit for {metric}: {value!r} ({exc}); expected {expected}",
                                *keys, metric) from None
        return limits

    def calibrated(self, data: Any, keys: tuple[Any, ...]) -> dict[str, float]:
        if data is None:
            return {}
        if not isinstance(data, dict):
            raise self.fail("calibrated must map metrics to measured noise, e.g. {rel_diff: 4e-14}", *keys)
        calibrated: dict[str, float] = {}
        for metric, value in data.items():
            if metric not in CALIBRATED_METRICS:
                raise self.fail(f"unknown calibrated metric {metric!r}; valid: {', '.join(CALIBRATED_METRICS)}",
                                *keys, metric)
            try:
                number = float(value)
            except (TypeError, ValueError):
                number = math.nan
            if isinstance(value, bool) or not number >= 0 or math.isinf(number):
                raise self.fail(f"invalid calibrated noise for {metric}: {value!r}; expected a number >= 0", *keys, metric)
            calibrated[metric] = number
        return calibrated


def _line(node: Any, *keys: Any) -> int:
    """1-based line of the YAML node reached by ``keys`` (best effort)."""
    import yaml

    for key in keys:
        if isinstance(node, yaml.MappingNode):
            found = next((value for k, value in node.value if k.value == key), None)
            if found is None:
                found = next((k for k, value in node.value if k.value == key), None)
                return (found.start_mark.line + 1) if found is not None else node.start_mark.line + 1
            node = found
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
        else:
            break
    return node.start_mark.line + 1 if node is not None else 1
