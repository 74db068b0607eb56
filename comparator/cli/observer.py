"""``dumpcmp run --verify-observer``: did dumping change what the command computes?

A dumper can change what it observes: extra synchronisation can hide a race, hooks can
change kernel choices or fusion, a patch can run in the wrong process. The check runs
the command twice and compares its final outputs:

- with ``observe_file`` (a file the command writes, e.g. the example engine's
  ``--save-logits PATH``): once with dumping on (the run itself), once with dumping off
  entirely (no patches, no ``DUMPCMP_*`` settings); the file of each run is kept under
  ``RUN/observer/`` and compared (safetensors: tensor by tensor; other files: bytes);
- without it: the run itself, then a minimal run that dumps only the final tensor (the
  last one the run dumped on rank 0, or ``observe_tensor``) with the same patches;
  that tensor is compared between the two (``RUN/observer/minimal-run/``).

"No change" means bitwise identical. The verdict is written into ``RUN/run.json`` as
``observer_check`` (docs/format.md) and into ``RUN/observer/check.json``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from typing import Any

from dumper.errors import ConfigError, DumpcmpError
from dumper.format import RUN_INFO_FILE

log = logging.getLogger(__name__)

OBSERVER_DIR = "observer"


@dataclass(frozen=True, kw_only=True)
class OutputDiff:
    """One compared output (a tensor of the file, or the file's bytes)."""

    name: str
    identical: bool
    rel_diff: float | None = None
    max_abs: float | None = None
    problem: str | None = None  # e.g. missing on one side, shapes differ

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        for key in ("rel_diff", "max_abs"):
            if data[key] is not None and not math.isfinite(data[key]):
                data[key] = None
        return data


@dataclass(frozen=True, kw_only=True)
class ObserverCheck:
    """The verdict of one observer check. Truthy when dumping changed nothing."""

    changed: bool
    method: str  # "file" (dumping off vs on) or "tensor" (final tensor only vs full dump)
    observed: str  # the file path or the tensor name
    exit_codes: dict[str, int]  # {"dumping_on": code, "reference": code}
    outputs: tuple[OutputDiff, ...] = ()
    problem: str | None = None  # why nothing could be compared

    def __bool__(self) -> bool:
        return not self.changed

    def describe(self) -> str:
        what = f"{self.method} {self.observed}"
        if self.problem is not None:
            return f"observer check: could not compare {what}: {self.problem}"
        if not self.changed:
            return f"observer check: no change ({what}: {len(self.outputs)} output(s) bitwise identical with dumping on and off)"
        diffs = [o for o in self.outputs if not o.identical]
        shown = "; ".join(_describe_diff(o) for o in diffs[:4])
        return f"observer check: dumping CHANGED the outputs ({what}: {len(diffs)} of {len(self.outputs)} differ: {shown})"

    def to_json(self) -> dict[str, Any]:
        return {"changed": self.changed, "method": self.method, "observed": self.observed,
                "exit_codes": dict(self.exit_codes), "outputs": [o.to_json() for o in self.outputs],
                "problem": self.problem, "summary": self.describe()}


def _describe_diff(diff: OutputDiff) -> str:
    if diff.problem is not None:
        return f"{diff.name}: {diff.problem}"
    if diff.rel_diff is not None:
        return f"{diff.name}: rel_diff {diff.rel_diff:.3g}, max_abs {diff.max_abs:.3g}"
    return f"{diff.name}: bytes differ"


def verify_observer(config: Any, *, observe_file: str | None = None, observe_tensor: str | None = None
                    ) -> tuple[int, ObserverCheck]:
    """Run ``config`` (a patches.launch.RunConfig) with dumping on, then the reference run; compare.

    Returns (exit code of the dumping run, or of the reference when that one failed; the check).
    """
    from patches.launch import run_command

    if observe_file is not None and observe_tensor is not None:
        raise ConfigError("give --observe FILE or --observe-tensor NAME, not both")
    run_dir = os.path.abspath(config.dir)
    on_code = run_command(config)
    observer_dir = os.path.join(run_dir, OBSERVER_DIR)
    os.makedirs(observer_dir, exist_ok=True)
    if observe_file is not None:
        check = _check_file(config, observe_file, observer_dir, on_code)
    else:
        check = _check_tensor(config, observe_tensor, run_dir, observer_dir, on_code)
    record_check(run_dir, check)
    code = on_code or check.exit_codes.get("reference", 0)
    return code, check


def _check_file(config: Any, path: str, observer_dir: str, on_code: int) -> ObserverCheck:
    base = os.path.basename(path)
    kept_on = os.path.join(observer_dir, f"dumping-on.{base}")
    kept_off = os.path.join(observer_dir, f"dumping-off.{base}")
    problem = None
    if os.path.isfile(path):
        shutil.copyfile(path, kept_on)
        os.unlink(path)  # NOTE: a stale copy must not pass for the reference run's output
    else:
        problem = f"the dumping run did not write {path}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DUMPCMP_")}
    off_code = _run_plain(config.command, env)
    if problem is None:
        if os.path.isfile(path):
            shutil.copyfile(path, kept_off)
        else:
            problem = f"the run with dumping off did not write {path}"
    codes = {"dumping_on": on_code, "reference": off_code}
    if problem is not None:
        return ObserverCheck(changed=False, method="file", observed=path, exit_codes=codes, problem=problem)
    outputs = compare_files(kept_off, kept_on)
    return ObserverCheck(changed=not all(o.identical for o in outputs), method="file", observed=path,
                         exit_codes=codes, outputs=outputs)


def _run_plain(command: tuple[str, ...], env: dict[str, str]) -> int:
    try:
        code = subprocess.run(list(command), env=env).returncode
    except FileNotFoundError:
        raise ConfigError(f"command not found: {command[0]}") from None
    return 128 - code if code < 0 else code


def _check_tensor(config: Any, name: str | None, run_dir: str, observer_dir: str, on_code: int) -> ObserverCheck:
    from patches.launch import run_command

    from dumper.reader import open_run

    if name is None:
        with open_run(run_dir) as run:
            records = [r for rank in run.ranks[:1] for r in rank.records]
        if not records:
            return ObserverCheck(changed=False, method="tensor", observed="?", exit_codes={"dumping_on": on_code},
                                 problem="the run dumped nothing")
        name = max(records, key=lambda r: (r.step, r.seq)).name
    minimal_dir = os.path.join(observer_dir, "minimal-run")
    minimal = dataclasses.replace(config, dir=minimal_dir, filter=f"name~^{re.escape(name)}$", overwrite=True)
    off_code = run_command(minimal)
    codes = {"dumping_on": on_code, "reference": off_code}
    from comparator.pipeline import compare

    try:
        report = compare(minimal_dir, run_dir, names=f"^{re.escape(name)}$")
    except DumpcmpError as exc:  # e.g. the reference run dumped nothing (RunNotFoundError)
        return ObserverCheck(changed=False, method="tensor", observed=name, exit_codes=codes, problem=str(exc))
    outputs = tuple(
        OutputDiff(name=r.label, identical=r.metrics is not None and r.metrics.max_abs == 0 and r.status == "pass",
                   rel_diff=r.metrics.rel_diff if r.metrics is not None else None,
                   max_abs=r.metrics.max_abs if r.metrics is not None else None,
                   problem=None if r.metrics is not None else (r.reason or r.status))
        for r in report.results
    )
    if not outputs:
        return ObserverCheck(changed=False, method="tensor", observed=name, exit_codes=codes,
                             problem=f"no {name} in both runs")
    return ObserverCheck(changed=not all(o.identical for o in outputs), method="tensor", observed=name,
                         exit_codes=codes, outputs=outputs)


def compare_files(reference: str, dumping: str) -> tuple[OutputDiff, ...]:
    """Tensor by tensor for safetensors files, else bytes."""
    if reference.endswith(".safetensors"):
        import torch
        from safetensors.torch import load_file

        from comparator.judge.metrics import compute_metrics

        off, on = load_file(reference), load_file(dumping)
        diffs = []
        for key in sorted(set(off) | set(on)):
            if key not in off or key not in on:
                diffs.append(OutputDiff(name=key, identical=False,
                                        problem=f"only with dumping {'on' if key in on else 'off'}"))
            elif off[key].shape != on[key].shape or off[key].dtype != on[key].dtype:
                diffs.append(OutputDiff(name=key, identical=False, problem=(
                    f"{list(off[key].shape)} {off[key].dtype} off vs {list(on[key].shape)} {on[key].dtype} on")))
            else:
                metrics = compute_metrics(off[key], on[key])
                diffs.append(OutputDiff(name=key, identical=bool(torch.equal(off[key], on[key])),
                                        rel_diff=metrics.rel_diff, max_abs=metrics.max_abs))
        return tuple(diffs)
    with open(reference, "rb") as a, open(dumping, "rb") as b:
        return (OutputDiff(name=os.path.basename(reference), identical=a.read() == b.read()),)


def record_check(run_dir: str, check: ObserverCheck) -> None:
    """Write the check into RUN/observer/check.json and, when the run has one, RUN/run.json (atomically)."""
    data = check.to_json()
    _write_json(os.path.join(run_dir, OBSERVER_DIR, "check.json"), data)
    info_path = os.path.join(run_dir, RUN_INFO_FILE)
    info = _run_info(info_path)
    if info is not None:
        info["observer_check"] = data
        _write_json(info_path, info)


def _run_info(path: str) -> dict[str, Any] | None:
    """RUN/run.json as an object, or None when the command left none (or a broken one: ls names it)."""
    from dumper.errors import DumpcmpError
    from dumper.safeio import JSON_LIMIT, read_text

    try:
        info = json.loads(read_text(path, limit=JSON_LIMIT, what="run.json"))
    except (OSError, ValueError, RecursionError, DumpcmpError):
        return None
    return info if isinstance(info, dict) else None


def _write_json(path: str, data: dict[str, Any]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, allow_nan=False, default=_finite)
        f.write("\n")
    os.replace(tmp, path)


def _finite(value: Any) -> Any:
    return str(value)
