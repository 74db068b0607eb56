"""``dumpcmp bisect``: find every independent divergence of a run, one graft at a time.

Starting from a target run compared with the baseline: graft the baseline's value at
the first divergence (that site, every step), rerun, compare, and repeat, keeping the
earlier grafts, until the run agrees or the budget of reruns is spent. Each divergence
found is independent of the ones before it: they were grafted away when it showed.

The application layer (it runs the command through ``patches``): each run is a
directory under ``--dir``: ``run-0`` (no graft), ``run-1`` (one site grafted), ...
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from comparator.cli.grafting import GraftRequest, count_grafted, run_with_graft
from comparator.judge.graft import GraftVerdict, graft_verdict, grafted_keys
from dumper.errors import ConfigError
from dumper.graft import GraftError
from patches.launch import RunConfig, run_command

Echo = Callable[[str], None]


@dataclass(frozen=True, kw_only=True)
class BisectConfig:
    baseline: str
    command: tuple[str, ...]
    dir: str
    patch_files: tuple[str, ...] = ()
    budget: int = 4  # reruns with grafts, at most
    aligner: str = "none"  # compare's token aligner (and the graft's: none or concat_steps)
    thresholds: str | None = None
    overwrite: bool = False

    def __post_init__(self) -> None:
        if self.budget < 1:
            raise ConfigError(f"--budget {self.budget} must be at least 1 (the reruns with grafts)")
        if not self.command:
            raise ConfigError("no command to run; put it after '--', e.g. dumpcmp bisect BASE --patch P -- python serve.py")


@dataclass(frozen=True, kw_only=True)
class Divergence:
    """One independent divergence: where it first showed, its hint, and the run that showed it."""

    name: str
    step: int
    tags: dict[str, Any]
    hint: str | None
    run: str
    graft: str  # the filter that grafts this site (every step)

    @property
    def label(self) -> str:
        from comparator.matching import tensor_label

        return tensor_label(self.name, self.step, self.tags)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "step": self.step, "tags": dict(self.tags), "hint": self.hint, "run": self.run,
                "graft": self.graft}


@dataclass(frozen=True, kw_only=True)
class BisectRound:
    run: str
    grafts: tuple[str, ...]
    command_exit: int
    compare_exit: int
    verdict: GraftVerdict | None  # None for the first run (nothing grafted)


@dataclass(frozen=True, kw_only=True)
class BisectResult:
    divergences: tuple[Divergence, ...]
    rounds: tuple[BisectRound, ...] = field(default_factory=tuple)
    agreed: bool  # the last run agrees with the baseline once every divergence found is grafted
    stopped: str  # why the search ended

    @property
    def exit_code(self) -> int:
        return 0 if self.agreed else 1

    def to_json(self) -> dict[str, Any]:
        return {"agreed": self.agreed, "stopped": self.stopped,
                "divergences": [d.to_json() for d in self.divergences],
                "rounds": [{"run": r.run, "grafts": list(r.grafts), "command_exit": r.command_exit,
                            "compare_exit": r.compare_exit,
                            "verdict": r.verdict.to_json() if r.verdict is not None else None} for r in self.rounds]}


def site_filter(name: str, tags: dict[str, Any]) -> str:
    """A --graft expression naming one site (every step): ``name~^NAME$ layer=1``."""
    values = [str(v) for v in tags.values()]
    if any(re.search(r"[\s;,]", text) for text in [name, *values, *map(str, tags)]):
        raise GraftError(f"cannot name {name} {tags} in a --graft filter (a space, ';' or ',' in its name or tags)")
    return " ".join([f"name~^{re.escape(name)}$", *(f"{key}={value}" for key, value in sorted(tags.items()))])


def bisect(config: BisectConfig, *, echo: Echo = lambda line: None) -> BisectResult:
    """Run, compare, graft the first divergence, rerun... (see the module docstring)."""
    from comparator.cli.grafting import check_not_baseline
    from comparator.matching import tensor_label
    from comparator.options import CompareOptions
    from comparator.pipeline import compare
    from dumper.reader import open_run

    check_not_baseline(config.dir, config.baseline)
    options = CompareOptions.from_values(aligner=config.aligner, thresholds=config.thresholds)
    graft_aligner = config.aligner if config.aligner in ("none", "concat_steps") else "none"
    if os.path.exists(config.dir) and os.listdir(config.dir) and not config.overwrite:
        raise ConfigError(f"--dir {config.dir} is not empty; choose a new directory or pass --overwrite")
    os.makedirs(config.dir, exist_ok=True)
    found: list[Divergence] = []
    rounds: list[BisectRound] = []
    grafts: tuple[str, ...] = ()
    previous: str | None = None
    for number in range(config.budget + 1):
        run_dir = os.path.join(config.dir, f"run-{number}")
        # NOTE: the command's own output goes to DIR/run-N.log, so that stdout stays the report.
        run = RunConfig(command=config.command, dir=run_dir, patch_files=config.patch_files, overwrite=True,
                        output=f"{run_dir}.log")
        echo(f"run {number}: " + (f"grafting {len(grafts)} site(s): {' | '.join(grafts)}" if grafts else "no graft"))
        if grafts:
            try:
                code = run_with_graft(run, GraftRequest(baseline=config.baseline, expressions=grafts,
                                                        aligner=graft_aligner)).code
            except GraftError as exc:
                return BisectResult(divergences=tuple(found), rounds=tuple(rounds), agreed=False,
                                    stopped=f"cannot graft the last divergence found: {exc}")
        else:
            code = run_command(run)
        report = compare(config.baseline, run_dir, options=options)
        verdict = None
        if grafts:
            with open_run(run_dir) as target:
                verdict = graft_verdict(report.results, grafted_keys(target.records), previous=previous)
        rounds.append(BisectRound(run=run_dir, grafts=grafts, command_exit=code, compare_exit=report.exit_code,
                                  verdict=verdict))
        if grafts and verdict is not None:
            echo(f"  {verdict.outcome}: {verdict.detail}")
        first = report.first_divergence
        if first is None:
            stopped = (f"run {number} agrees with the baseline" + (" once the divergences above are grafted" if found
                                                                   else "") + f" ({report.exit_reason})")
            return BisectResult(divergences=tuple(found), rounds=tuple(rounds), agreed=report.exit_code == 0,
                                stopped=stopped)
        graft = site_filter(first.name, first.tags)
        if graft in grafts:
            grafted = count_grafted(run_dir)
            return BisectResult(divergences=tuple(found), rounds=tuple(rounds), agreed=False, stopped=(
                f"grafting {first.name} {first.tags} did not remove its divergence ({grafted} record(s) grafted): "
                "is it a graft point (graft: true in the patch) whose shapes fit? The cause is not at this site"))
        previous = tensor_label(first.name, first.step, first.tags)
        found.append(Divergence(name=first.name, step=first.step, tags=dict(first.tags), hint=first.hint,
                                run=run_dir, graft=graft))
        echo(f"  divergence {len(found)}: {found[-1].label}" + (f": {first.hint}" if first.hint else ""))
        grafts = (*grafts, graft)
    return BisectResult(divergences=tuple(found), rounds=tuple(rounds), agreed=False,
                        stopped=f"the budget of {config.budget} rerun(s) is spent; raise --budget to look further")


def default_bisect_dir() -> str:
    return os.path.abspath(time.strftime("dumpcmp-bisect-%Y%m%d-%H%M%S"))


__all__ = ["BisectConfig", "BisectResult", "BisectRound", "Divergence", "bisect", "default_bisect_dir", "site_filter"]
