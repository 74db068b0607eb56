"""Calibrated thresholds: measure the noise between runs that should agree, write rules with a margin.

    from comparator.judge.calibrate import calibrate
    calibration = calibrate(["runs/a", "runs/b"], margin=10.0)
    calibration.write("thresholds.yaml")   # then: dumpcmp compare BASELINE TARGET -t thresholds.yaml

Runs that should agree are the same baseline twice with nondeterministic kernels, or a
run and an fp32 run of itself. Every pair of runs is compared with the library's
``compare``; per tensor name, the noise is the largest rel_diff and the largest
``|norm_ratio - 1|`` over every pair, step and tag (layer). A rule per name then allows
``margin`` times that noise, and records the noise in ``calibrated:`` so that compare
reports each tensor's ``floor_ratio`` (comparator/judge/thresholds.py).

NOTE: exact-zero noise (a tensor upstream of every nondeterministic op) would give a zero
limit and a flaky gate, so the noise is raised to a floor per dtype first (NOISE_FLOORS:
about one rounding of every element), far below what a seed bug does (a doubled tensor
has rel_diff 0.2 and norm_ratio 2). Integer tensors
(token ids, top-k ids) keep their exact defaults and routing analysis.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import re
from dataclasses import dataclass
from typing import Any, Sequence

from comparator.errors import CalibrateError
from comparator.options import CompareOptions
from comparator.judge.limits import BUILTIN_DEFAULTS, Limit, judged_dtype

logger = logging.getLogger(__name__)

DEFAULT_MARGIN = 10.0
CALIBRATED = ("rel_diff", "norm_ratio")


# Machine epsilon of each dtype class (float8: e4m3).
_EPSILON = {"float64": 2.2e-16, "float32": 1.19e-7, "float16": 9.77e-4, "bfloat16": 7.81e-3, "float8": 0.125}


def _floors(klass: str) -> dict[str, float]:
    # NOTE: one rounding of every element moves norm_ratio by about epsilon and rel_diff
    # by about epsilon^2 (rel_diff ~ rel_l2^2 / 2); rel_diff itself is computed in float64,
    # so nothing below 64 float64 epsilons means anything. A tenth of the built-in default
    # caps the floor, so a margin of 10 never loosens a low-precision default.
    epsilon, defaults = _EPSILON[klass], BUILTIN_DEFAULTS[klass]
    rel_diff, norm_ratio = defaults["rel_diff"], defaults["norm_ratio"]
    if rel_diff is None or rel_diff.high is None or norm_ratio is None or norm_ratio.high is None:
        raise RuntimeError(f"built-in {klass} defaults lack rel_diff/norm_ratio upper limits")
    return {
        "rel_diff": min(max(epsilon ** 2, 64 * _EPSILON["float64"]), rel_diff.high / 10),
        "norm_ratio": min(epsilon, (norm_ratio.high - 1.0) / 10),
    }


NOISE_FLOORS: dict[str, dict[str, float]] = {klass: _floors(klass) for klass in _EPSILON}


# NOTE: rounding noise between runs that should agree stays near the dtype's default
# limits; a difference many times above them is what a bug looks like (seed 2's doubled
# reduction: rel_diff 0.2, norm_ratio 2), and thresholds calibrated on it would pass it.
BUG_LIKE_FACTOR = {"rel_diff": 10.0, "norm_ratio": 5.0, "replica_rel_diff": 10.0}


@dataclass(frozen=True, kw_only=True)
class Suspicion:
    """A difference between runs that should agree that looks like a bug, not noise."""

    label: str
    why: str


def bug_like(result: Any, klass: str) -> str | None:
    """Why this result's difference looks like a bug rather than noise, or None."""
    metrics = result.metrics
    defaults = BUILTIN_DEFAULTS[klass]
    ratio, cosine = metrics.norm_ratio, metrics.cosine
    if math.isfinite(ratio) and ratio > 0 and cosine > 0.999 and max(ratio, 1 / ratio) >= 1.5:
        k = round(max(ratio, 1 / ratio))
        return (f"target = {ratio:.3g} x baseline with cosine {cosine:.4g}: a {'duplicated' if ratio > 1 else 'missing'} "
                f"reduction over a group of about {k}, not noise")
    for axis, disagreement in sorted(result.replica_disagreement.items()):
        limit = defaults.get("replica_rel_diff")
        if limit is not None and limit.high is not None and disagreement > BUG_LIKE_FACTOR["replica_rel_diff"] * limit.high:
            return f"ranks disagree on a tensor declared replicated over {axis} (rel_diff {disagreement:.3g}): a missing all-reduce?"
    rel_diff_limit, norm_limit = defaults["rel_diff"], defaults["norm_ratio"]
    if rel_diff_limit is not None and rel_diff_limit.high is not None:
        ceiling = BUG_LIKE_FACTOR["rel_diff"] * rel_diff_limit.high
        if metrics.rel_diff > ceiling:
            return f"rel_diff {metrics.rel_diff:.3g} is far above {klass} rounding noise (calibrate refuses above {ceiling:.3g})"
    if norm_limit is not None and norm_limit.high is not None:
        ceiling = BUG_LIKE_FACTOR["norm_ratio"] * (norm_limit.high - 1.0)
        if abs(ratio - 1.0) > ceiling:
            return f"norm_ratio {ratio:.4g} is far from 1 for {klass} noise (calibrate refuses beyond 1 +- {ceiling:.3g})"
    return None


@dataclass(frozen=True, kw_only=True)
class TensorNoise:
    """The noise of one tensor name over every pair, step and tag, and the rule it gives."""

    name: str
    dtype: str  # the judged dtype class (the less precise side)
    measured: dict[str, float]  # rel_diff: the largest; norm_ratio: the largest |norm_ratio - 1|
    noise: dict[str, float]  # measured, raised to the dtype's floor
    limits: dict[str, Limit]
    samples: int  # compared (pair, step, tags) results

    def to_rule(self) -> dict[str, Any]:
        rule: dict[str, Any] = {"name": f"^{re.escape(self.name)}$"}
        for metric, limit in self.limits.items():
            rule[metric] = limit.to_json()
        rule["calibrated"] = dict(self.noise)
        return rule


@dataclass(frozen=True, kw_only=True)
class Calibration:
    runs: tuple[str, ...]
    margin: float
    tensors: tuple[TensorNoise, ...]
    uncalibrated: tuple[str, ...] = ()  # integer tensors: their exact defaults stay
    suspicions: tuple[Suspicion, ...] = ()  # bug-like differences accepted with accept_bug_like=True

    def describe(self) -> list[str]:
        """What was measured, for people: the noisiest tensors first."""
        noisiest = sorted(self.tensors, key=lambda t: t.measured["rel_diff"], reverse=True)
        lines = [f"{t.name} ({t.dtype}, {t.samples} samples): rel_diff {t.measured['rel_diff']:.3g}, "
                 f"|norm_ratio - 1| {t.measured['norm_ratio']:.3g}" for t in noisiest[:5]]
        if len(noisiest) > 5:
            lines.append(f"... and {len(noisiest) - 5} quieter tensor names")
        return lines

    def to_yaml(self) -> str:
        import yaml

        pairs = len(self.runs) * (len(self.runs) - 1) // 2
        header = [
            f"# dumpcmp calibrate: {len(self.runs)} runs ({pairs} pair{'s' if pairs != 1 else ''}): {', '.join(self.runs)}",
            f"# limits = {self.margin:g} x the measured noise (at least the dtype's floor); calibrated: the noise",
        ]
        if self.uncalibrated:
            header.append(f"# integer tensors keep their exact defaults: {', '.join(self.uncalibrated)}")
        body = yaml.safe_dump({"rules": [t.to_rule() for t in self.tensors]}, sort_keys=False, default_flow_style=None)
        return "\n".join(header) + "\n" + body

    def write(self, path: str | os.PathLike[str]) -> None:
        try:
            with open(path, "w", encoding="utf-8") as handle:
                handle.write(self.to_yaml())
        except OSError as exc:
            raise CalibrateError(f"{os.fspath(path)}: cannot write the thresholds ({exc.strerror})") from None


def calibrate(runs: Sequence[str | os.PathLike[str]], *, margin: float = DEFAULT_MARGIN,
              options: CompareOptions | None = None, accept_bug_like: bool = False) -> Calibration:
    """Compare every pair of ``runs`` and derive per-name limits of ``margin`` x the noise.

    ``options`` are the compare options the gate will use (aligner, steps, names); their
    thresholds file, if any, is ignored: the noise is measured, not judged.
    """
    from comparator.pipeline import compare

    if len(runs) < 2:
        raise CalibrateError(
            f"calibrate needs two or more runs that should agree, got {len(runs)}; "
            "dump the same baseline twice (e.g. with nondeterministic kernels) and pass both")
    if not (margin >= 1 and math.isfinite(margin)):
        raise CalibrateError(f"--margin {margin:g}: must be a number >= 1 (the limit is margin x the measured noise)")
    options = options or CompareOptions()
    measured: dict[str, dict[str, float]] = {}
    dtypes: dict[str, str] = {}
    samples: dict[str, int] = {}
    integers: set[str] = set()
    suspicions: list[Suspicion] = []
    for first, second in itertools.combinations(runs, 2):
        logger.info("comparing %s with %s", first, second)
        report = compare(first, second, options=options)
        _check_same_tensors(report, first, second)
        for result in report.results:
            if result.metrics is None or result.baseline is None or result.target is None:
                continue
            klass = judged_dtype(result.baseline.dtype or "", result.target.dtype or "")
            if klass == "integer":
                integers.add(result.name)
                continue
            why = bug_like(result, klass)
            if why is not None:
                suspicions.append(Suspicion(label=f"{result.label} ({os.fspath(first)} vs {os.fspath(second)})", why=why))
            values = result.metrics.as_dict()
            noise = measured.setdefault(result.name, {metric: 0.0 for metric in CALIBRATED})
            noise["rel_diff"] = max(noise["rel_diff"], _finite(values["rel_diff"], result.label, first, second))
            noise["norm_ratio"] = max(noise["norm_ratio"], abs(_finite(values["norm_ratio"], result.label, first, second) - 1.0))
            previous = dtypes.get(result.name)
            dtypes[result.name] = klass if previous is None else judged_dtype(previous, klass)
            samples[result.name] = samples.get(result.name, 0) + 1
    if not measured:
        raise CalibrateError(f"no floating-point tensor was compared between {', '.join(os.fspath(run) for run in runs)}; "
                             "nothing to calibrate (check --names/--steps)")
    if suspicions and not accept_bug_like:
        first_one = suspicions[0]
        more = f" (and {len(suspicions) - 1} more)" if len(suspicions) > 1 else ""
        raise CalibrateError(
            f"these runs disagree like a bug, not like noise: {first_one.label}: {first_one.why}{more}; "
            "calibrate only runs that should agree (the same command twice), or pass --accept-bug-like to write it anyway")
    tensors = tuple(_noise_rule(name, dtypes[name], values, margin, samples[name]) for name, values in measured.items())
    return Calibration(runs=tuple(os.fspath(r) for r in runs), margin=margin, tensors=tensors,
                       uncalibrated=tuple(sorted(integers - set(measured))), suspicions=tuple(suspicions))


def _finite(value: float, label: str, first: Any, second: Any) -> float:
    if not math.isfinite(value):
        raise CalibrateError(f"{label}: NaN/Inf differ between {os.fspath(first)} and {os.fspath(second)}; "
                             "runs that should agree cannot be calibrated on a non-finite difference")
    return value


def _check_same_tensors(report: Any, first: Any, second: Any) -> None:
    """Calibration needs every tensor on both sides, with data (not skipped, not an error)."""
    bad = [r for r in report.results if r.status in ("skip", "error") or r.stats_only]
    if not bad:
        return
    shown = "; ".join(f"{r.label}: {r.reason or ('stats only' if r.stats_only else r.status)}" for r in bad[:3])
    more = f" (and {len(bad) - 3} more)" if len(bad) > 3 else ""
    raise CalibrateError(
        f"{os.fspath(first)} and {os.fspath(second)} differ in their tensors, so they are not runs that should agree: "
        f"{shown}{more}; dump both with the same command and full tensors (not --mode stats), or narrow with --names")


def _noise_rule(name: str, klass: str, measured: dict[str, float], margin: float, samples: int) -> TensorNoise:
    floors = NOISE_FLOORS[klass]
    noise = {metric: _round_up(max(measured[metric], floors[metric])) for metric in CALIBRATED}
    deviation = _round_up(margin * noise["norm_ratio"])
    # NOTE: a norm ratio is never negative: a deviation of 1 or more (only possible with
    # --accept-bug-like) gives the bound [0, 1 + deviation], never an empty or negative one.
    limits = {
        "rel_diff": Limit(metric="rel_diff", high=_round_up(margin * noise["rel_diff"])),
        "norm_ratio": Limit(metric="norm_ratio", low=max(0.0, 1.0 - deviation), high=1.0 + deviation),
    }
    return TensorNoise(name=name, dtype=klass, measured=dict(measured), noise=noise, limits=limits, samples=samples)


def _round_up(value: float) -> float:
    """Three significant digits, rounded up, so the YAML stays readable and never tighter."""
    if value <= 0:
        return 0.0
    exponent = math.floor(math.log10(value)) - 2
    digits = math.ceil(round(value / 10.0 ** exponent, 9))
    return float(f"{digits}e{exponent}")
