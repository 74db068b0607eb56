"""``dumpcmp run --graft-from BASE --graft FILTER``: run a command with baseline values grafted in.

The application half (it may import ``patches``): the plan is built from the baseline
before the command starts (comparator/graft.py, every bad input is exit 2 there), handed
to every process through ``DUMPCMP_GRAFT``, and recorded in RUN/run.json (``graft``)
once the command has ended. The plan lives in a temporary directory: the baseline is
only ever read.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from dataclasses import dataclass

from comparator.graft import build_graft_plan
from dumper.format import RUN_INFO_FILE, write_json_atomic
from dumper.graft import GraftError, GraftPlan
from patches.launch import RunConfig, run_command


@dataclass(frozen=True, kw_only=True)
class GraftRequest:
    baseline: str
    expressions: tuple[str, ...]  # a site is grafted when any of them matches it
    aligner: str = "none"


@dataclass(frozen=True, kw_only=True)
class GraftOutcome:
    code: int  # the command's own exit code
    plan: GraftPlan
    grafted_records: int  # records the target flagged as grafted (every rank)

    def describe(self) -> str:
        sites = len(self.plan.entries)
        if self.grafted_records == 0:
            return (f"graft from {self.plan.baseline}: none of the {sites} planned site(s) was reached or fitted "
                    "(see the warnings above; is the site marked graft: true in the patch?)")
        return f"grafted {self.grafted_records} record(s) at {sites} planned site(s) from {self.plan.baseline}"


def check_not_baseline(run_dir: str, baseline: str) -> None:
    run_dir, baseline = os.path.realpath(run_dir), os.path.realpath(baseline)
    if run_dir == baseline or run_dir.startswith(baseline + os.sep):
        raise GraftError(f"--dir {run_dir} is inside the baseline {baseline}; a graft never writes into its baseline: "
                         "choose another --dir")


def run_with_graft(config: RunConfig, request: GraftRequest) -> GraftOutcome:
    """Build the plan (GraftError before anything starts), run the command, record the graft in run.json."""
    check_not_baseline(config.dir, request.baseline)
    plan_dir = tempfile.mkdtemp(prefix="dumpcmp-graft-")
    try:
        plan = build_graft_plan(request.baseline, request.expressions, plan_dir, aligner=request.aligner)
        config = dataclasses.replace(config, extra_env={**config.extra_env, "DUMPCMP_GRAFT": plan_dir})
        code = run_command(config)
    finally:
        shutil.rmtree(plan_dir, ignore_errors=True)
    grafted = count_grafted(config.dir)
    record_graft(config.dir, plan, grafted)
    return GraftOutcome(code=code, plan=plan, grafted_records=grafted)


def count_grafted(run_dir: str) -> int:
    from dumper.reader import open_run

    try:
        with open_run(run_dir) as run:
            return sum(1 for record in run.records if record.graft is not None)
    except Exception:  # noqa: BLE001 - a command that dumped nothing leaves no run to count in
        return 0


def record_graft(run_dir: str, plan: GraftPlan, grafted_records: int) -> None:
    """``graft`` in RUN/run.json: what was grafted from where (docs/format.md)."""
    path = os.path.join(run_dir, RUN_INFO_FILE)
    from dumper.errors import DumpcmpError
    from dumper.safeio import JSON_LIMIT, read_text

    try:
        info = json.loads(read_text(path, limit=JSON_LIMIT, what="run.json"))
    except (OSError, ValueError, RecursionError, DumpcmpError):
        return  # no run.json, or a broken one: ls names it
    if not isinstance(info, dict):
        return
    info["graft"] = {**plan.summary(), "grafted_records": grafted_records}
    write_json_atomic(path, info)


__all__ = ["GraftOutcome", "GraftRequest", "check_not_baseline", "count_grafted", "record_graft", "run_with_graft"]
