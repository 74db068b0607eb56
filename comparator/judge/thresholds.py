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

A rule's limits are merged over the default limits of the tensor's dtype (the less
precise of the two sides). Metrics: rel_diff, rel_l2, cosine, norm_ratio, max_abs,
mean_abs, max_token_rel_l2 (worst token), replica_rel_diff (disagreement between
ranks of a replicated tensor). Loaded with ``yaml.safe_load``; nothing is evaluated.
A ``stats:`` section (same shape) judges stats-only comparisons: see comparator/judge/stats_only.py.

``calibrated:`` (written by ``dumpcmp calibrate``, comparator/judge/calibrate.py) records the noise
measured between runs that should agree: an upper metric's largest value, or norm_ratio's
largest distance from 1. Results judged by such a rule carry a ``floor_ratio``: how many
times that noise the tensor's own metric is (the largest over the calibrated metrics).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any, Mapping

from comparator.errors import ThresholdsError
from dumper.patterns import UserRegex, compile_user_regex
from dumper.safeio import read_text

UPPER = ("rel_diff", "rel_l2", "max_abs", "mean_abs", "max_token_rel_l2", "replica_rel_diff")
LOWER = ("cosine",)
RANGE = ("norm_ratio",)
METRICS = UPPER + LOWER + RANGE
RULE_KEYS = ("name", "tags", "dtype", "calibrated")
CALIBRATED_METRICS = UPPER + RANGE


@dataclass(frozen=True, kw_only=True)
class Limit:
    metric: str
    low: float | None = None
    high: float | None = None

    def allows(self, value: float) -> bool:
        if math.isnan(value):
            return False
        return (self.low is None or value >= self.low) and (self.high is None or value <= self.high)

    def widened_to(self, value: float) -> "Limit":
        """The narrowest limit of this kind that ``value`` passes (the tolerance that would pass)."""
        if self.metric in RANGE:
            return Limit(metric=self.metric, low=min(self.low, value), high=max(self.high, value))  # type: ignore[type-var]
        if self.metric in LOWER:
            return Limit(metric=self.metric, low=value)
        return Limit(metric=self.metric, high=value)

    def to_json(self) -> float | list[float] | None:
        if self.metric in RANGE:
            return [self.low, self.high]  # type: ignore[list-item]
        return self.low if self.metric in LOWER else self.high

    def describe(self) -> str:
        if self.metric in RANGE:
            return f"{self.metric} in [{self.low:.6g}, {self.high:.6g}]"
        if self.metric in LOWER:
            return f"{self.metric} >= {self.low:.6g}"
        return f"{self.metric} <= {self.high:.6g}"


@dataclass(frozen=True, kw_only=True)
class Rule:
    source: str  # "thresholds.yaml:12" or "default (bfloat16)"
    limits: dict[str, Limit | None]  # None removes a default limit
    name: UserRegex | None = None
    tags: dict[str, Any] = field(default_factory=dict)
    dtype: str | None = None
    calibrated: dict[str, float] = field(default_factory=dict)  # metric -> measured noise (dumpcmp calibrate)

    def matches(self, name: str, tags: Mapping[str, Any], dtypes: tuple[str, ...]) -> bool:
        if self.name is not None and self.name.search(name) is None:
            return False
        if self.dtype is not None and self.dtype not in dtypes:
            return False
        return all(key in tags and _same(tags[key], value) for key, value in self.tags.items())


def _same(a: Any, b: Any) -> bool:
    return a == b or str(a) == str(b)


def _limits(**values: Any) -> dict[str, Limit | None]:
    return {metric: _make_limit(metric, value) for metric, value in values.items()}


def _make_limit(metric: str, value: Any) -> Limit:
    if metric in RANGE:
        if isinstance(value, (list, tuple)):
            low, high = float(value[0]), float(value[1])
        else:
            low, high = 1.0 - float(value), 1.0 + float(value)
        if low > high:
            raise ValueError(f"range [{low}, {high}] is empty")
        return Limit(metric=metric, low=low, high=high)
    if isinstance(value, (list, tuple)) or isinstance(value, bool):
        raise ValueError(f"{metric} takes one number")
    number = float(value)
    if math.isnan(number):
        raise ValueError("NaN is not a limit")
    return Limit(metric=metric, low=number) if metric in LOWER else Limit(metric=metric, high=number)


# NOTE: rel_diff ~ rel_l2^2 / 2 for small errors, so 1e-6 on float32 allows a relative
# L2 error of about 1.4e-3; a doubled tensor has rel_diff 0.2 and norm_ratio 2.
BUILTIN_DEFAULTS: dict[str, dict[str, Limit | None]] = {
    "float64": _limits(rel_diff=1e-10, norm_ratio=1e-5, replica_rel_diff=1e-10),
    "float32": _limits(rel_diff=1e-6, norm_ratio=2e-3, replica_rel_diff=1e-6),
    "float16": _limits(rel_diff=1e-4, norm_ratio=1e-2, replica_rel_diff=1e-4),
    "bfloat16": _limits(rel_diff=1e-3, norm_ratio=2e-2, replica_rel_diff=1e-3),
    "float8": _limits(rel_diff=1e-2, norm_ratio=5e-2, replica_rel_diff=1e-2),
    "integer": _limits(max_abs=0, replica_rel_diff=0),
}
# From most to least precise; a pair is judged by its less precise side.
_PRECISION_ORDER = ("float64", "float32", "float16", "bfloat16", "float8", "integer")


def dtype_class(dtype: str) -> str:
    if dtype.startswith("float8"):
        return "float8"
    if dtype in ("float64", "float32", "float16", "bfloat16"):
        return dtype
    return "integer"  # ints and bool are compared exactly


def judged_dtype(baseline_dtype: str, target_dtype: str) -> str:
    """The class whose defaults judge a pair: the less precise side (bf16 vs fp32 -> bf16)."""
    classes = [dtype_class(baseline_dtype), dtype_class(target_dtype)]
    # A float compared with an integer tensor (e.g. one side cast) is judged as the float.
    floats = [c for c in classes if c != "integer"]
    if floats:
        return max(floats, key=_PRECISION_ORDER.index)
    return "integer"


@dataclass(frozen=True, kw_only=True)
class Thresholds:
    rules: tuple[Rule, ...] = ()
    defaults: dict[str, dict[str, Limit | None]] = field(default_factory=lambda: dict(BUILTIN_DEFAULTS))
    source: str | None = None  # the YAML file, if any

    def calibration_for(self, name: str, tags: Mapping[str, Any], baseline_dtype: str, target_dtype: str) -> dict[str, float]:
        """The calibrated noise of the rule that judges this tensor (empty when it was not calibrated)."""
        for rule in self.rules:
            if rule.matches(name, tags, (baseline_dtype, target_dtype)):
                return dict(rule.calibrated)
        return {}

    def limits_for(self, name: str, tags: Mapping[str, Any], baseline_dtype: str, target_dtype: str) -> tuple[str, dict[str, Limit]]:
        """(rule description, active limits) for one tensor."""
        klass = judged_dtype(baseline_dtype, target_dtype)
        merged: dict[str, Limit | None] = dict(self.defaults.get(klass, {}))
        source = f"default ({klass})"
        for rule in self.rules:
            if rule.matches(name, tags, (baseline_dtype, target_dtype)):
                merged.update(rule.limits)
                source = f"{rule.source} over default ({klass})"
                break
        return source, {metric: limit for metric, limit in merged.items() if limit is not None}


def load_thresholds(path: str | os.PathLike[str] | None) -> Thresholds:
    """Read a thresholds file; ``None`` gives the built-in defaults. Errors say file:line."""
    if path is None:
        return Thresholds()
    import yaml

    path = os.fspath(path)
    try:
        text = read_text(path, what="thresholds file", error=ThresholdsError)
    except OSError as exc:
        raise ThresholdsError(f"{path}: cannot read thresholds file ({exc.strerror})") from None
    from dumper import yamlsafe

    try:
        data = yamlsafe.safe_load(text)
        root = yamlsafe.compose(text)
    except yamlsafe.YamlLimitError as exc:
        raise ThresholdsError(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else path
        problem = getattr(exc, "problem", None) or str(exc)
        raise ThresholdsError(f"{where}: invalid YAML ({problem})") from None
    return _parse(path, data, root)


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


def _parse(path: str, data: Any, root: Any) -> Thresholds:
    def fail(message: str, *keys: Any) -> ThresholdsError:
        return ThresholdsError(f"{path}:{_line(root, *keys)}: {message}")

    if data is None:
        return Thresholds(source=path)
    prefix: tuple[Any, ...] = ()
    defaults = {klass: dict(limits) for klass, limits in BUILTIN_DEFAULTS.items()}
    if isinstance(data, list):
        rules_data = data
    elif isinstance(data, dict):
        # NOTE: "stats" holds the limits of stats-only comparisons (comparator/judge/stats_only.py).
        unknown = [k for k in data if k not in ("rules", "defaults", "stats")]
        if unknown:
            raise fail(f"unknown key {unknown[0]!r}; valid top-level keys: rules, defaults, stats", unknown[0])
        rules_data = data.get("rules") or []
        prefix = ("rules",)
        if not isinstance(rules_data, list):
            raise fail("'rules' must be a list of rules", "rules")
        defaults_data = data.get("defaults") or {}
        if not isinstance(defaults_data, dict):
            raise fail("'defaults' must map dtype classes to limits, e.g. {bfloat16: {rel_diff: 1e-3}}", "defaults")
        for klass, limits in defaults_data.items():
            klass = str(klass)
            if klass not in BUILTIN_DEFAULTS:
                raise fail(f"unknown dtype class {klass!r} in defaults; valid: {', '.join(BUILTIN_DEFAULTS)}", "defaults", klass)
            if not isinstance(limits, dict):
                raise fail(f"defaults.{klass} must map metrics to limits", "defaults", klass)
            defaults[klass].update(_parse_limits(limits, lambda m, *k: fail(m, "defaults", klass, *k)))  # noqa: B023 - called at once
    else:
        raise fail("expected a list of rules, or a mapping with 'rules' (and optional 'defaults')")
    rules = []
    for index, rule_data in enumerate(rules_data):
        keys = prefix + (index,)
        line = _line(root, *keys)
        if not isinstance(rule_data, dict):
            raise fail("a rule must be a mapping, e.g. {name: 'mlp', rel_diff: 1e-3}", *keys)
        pattern = None
        if "name" in rule_data:
            try:
                pattern = compile_user_regex(str(rule_data["name"]), "invalid name regex", ThresholdsError)
            except ThresholdsError as exc:
                raise fail(str(exc), *keys, "name") from None
        tags = rule_data.get("tags") or {}
        if not isinstance(tags, dict):
            raise fail("tags must be a mapping, e.g. {layer: 0}", *keys, "tags")
        limits = _parse_limits({k: v for k, v in rule_data.items() if k not in RULE_KEYS},
                               lambda m, *k: fail(m, *keys, *k))  # noqa: B023 - called at once
        calibrated = _parse_calibrated(rule_data.get("calibrated"),
                                       lambda m, *k: fail(m, *keys, "calibrated", *k))  # noqa: B023 - called at once
        rules.append(Rule(
            source=f"{os.path.basename(path)}:{line}", limits=limits, name=pattern, tags=dict(tags),
            dtype=str(rule_data["dtype"]) if rule_data.get("dtype") is not None else None, calibrated=calibrated,
        ))
    return Thresholds(rules=tuple(rules), defaults=defaults, source=path)


def _parse_limits(data: dict[str, Any], fail: Any) -> dict[str, Limit | None]:
    limits: dict[str, Limit | None] = {}
    for metric, value in data.items():
        if metric not in METRICS:
            raise fail(f"unknown metric {metric!r}; valid metrics: {', '.join(METRICS)} (and name, tags, dtype)", metric)
        if value is None:
            limits[metric] = None
            continue
        try:
            limits[metric] = _make_limit(metric, value)
        except (TypeError, ValueError, IndexError) as exc:
            hint = "[low, high] or a number x for [1-x, 1+x]" if metric in RANGE else "a number"
            raise fail(f"invalid limit for {metric}: {value!r} ({exc}); expected {hint}", metric) from None
    return limits


def _parse_calibrated(data: Any, fail: Any) -> dict[str, float]:
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise fail("calibrated must map metrics to measured noise, e.g. {rel_diff: 4e-14}")
    calibrated: dict[str, float] = {}
    for metric, value in data.items():
        if metric not in CALIBRATED_METRICS:
            raise fail(f"unknown calibrated metric {metric!r}; valid: {', '.join(CALIBRATED_METRICS)}", metric)
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = math.nan
        if isinstance(value, bool) or not number >= 0 or math.isinf(number):
            raise fail(f"invalid calibrated noise for {metric}: {value!r}; expected a number >= 0", metric)
        calibrated[metric] = number
    return calibrated
