"""``dumpcmp run [--patch F]... [--dir D] -- CMD...``: run a command with dumping on."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer

from comparator.cli.app import app, setup_logging, user_errors
from dumper.errors import ConfigError


class GraftAligner(str, Enum):
    none = "none"
    concat_steps = "concat_steps"


class DumpMode(str, Enum):
    tensor = "tensor"
    stats = "stats"


@app.command("run", context_settings={"allow_interspersed_args": False})
def run_command(
    command: List[str] = typer.Argument(..., metavar="-- CMD...", help="The command to run, after '--'."),
    patch: List[str] = typer.Option(
        [], "--patch", "-p", metavar="F",
        help="Patch file (YAML), or a preset such as vllm/qwen3_moe; repeat for several.",
    ),
    dir: Optional[Path] = typer.Option(None, "--dir", "-d", help="Run directory (default: ./dumpcmp-run-<time>)."),
    mode: DumpMode = typer.Option(DumpMode.tensor, "--mode", help="tensor: data and stats; stats: the index only."),
    filter: str = typer.Option("", "--filter", help="Keep only some dumps, e.g. 'name~moe step=0:3 layer=0,1'."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the run already in --dir."),
    run_id: Optional[str] = typer.Option(
        None, "--run-id", metavar="ID",
        help="The id every node of a multi-node run shares (give the same ID to each node's dumpcmp run; "
        "default: the launcher's, e.g. Slurm's job id, or a fresh one). compare merges node directories by it."),
    no_check: bool = typer.Option(
        False, "--no-check", help="Do not check patch targets against this Python's installed engine first."),
    against: Optional[Path] = typer.Option(
        None, "--against", metavar="BASELINE",
        help="Baseline run: write stats only while they agree with it, tensor data from the first divergence.",
    ),
    escalate_steps: int = typer.Option(
        2, "--escalate-steps", metavar="N", help="With --against: steps written with tensor data from the divergence."),
    online_rtol: Optional[float] = typer.Option(
        None, "--online-rtol", metavar="RTOL",
        help="With --against: relative tolerance on l2, mean, abs_mean (default per dtype, e.g. 1e-4 for float32).",
    ),
    verify_observer: bool = typer.Option(
        False, "--verify-observer",
        help="Run CMD twice and check that dumping did not change its final outputs (recorded in run.json).",
    ),
    observe: Optional[Path] = typer.Option(
        None, "--observe", metavar="FILE",
        help="With --verify-observer: a file CMD writes (e.g. logits); compared between dumping off and on.",
    ),
    graft_from: Optional[Path] = typer.Option(
        None, "--graft-from", metavar="BASELINE",
        help="Baseline run (tensor mode) whose values replace the engine's at the sites --graft names.",
    ),
    graft: List[str] = typer.Option(
        [], "--graft", metavar="FILTER",
        help="With --graft-from: the graft points to replace, e.g. 'name~moe_output layer=1 step=0' "
        "(repeatable: any matches).",
    ),
    graft_aligner: GraftAligner = typer.Option(
        GraftAligner.none, "--graft-aligner", help="With --graft-from: how the baseline's tokens are laid out per step.",
    ),
    observe_tensor: Optional[str] = typer.Option(
        None, "--observe-tensor", metavar="NAME",
        help="With --verify-observer and no --observe: the tensor to compare (default: the last one dumped).",
    ),
) -> None:
    """Run CMD with dumping on: every Python process it starts applies the patches and dumps into --dir.

    The exit code is CMD's own. Patch files, the filter and the directory are checked
    before CMD starts (exit code 2 on a problem).

    With --against BASELINE (a stats or tensor run of the same engine), each rank compares
    the stats of what it dumps with the baseline's as it goes: it writes stats only while
    they agree, and tensor data from the first divergence for --escalate-steps steps; its
    rank.json says where and why (escalation).

    With --verify-observer, CMD runs a second time as a reference: with dumping off when
    --observe FILE names an output file, else dumping only the final tensor. The verdict
    is printed and recorded in RUN/run.json (observer_check); the exit code is CMD's, or
    1 when dumping changed the outputs.

    With --graft-from BASELINE --graft FILTER, every graft point (a patch entry with
    graft: true) that FILTER names hands the engine the baseline's value for that site,
    step and tags, cut to this rank's shard (docs/graft.md); the records are flagged
    in the index and RUN/run.json says what was grafted from where. A filter matching
    nothing, a stats-mode baseline or a non-float tensor is exit code 2 before CMD starts.

    Example: dumpcmp run --patch vllm/qwen3_moe --dir /tmp/runs/tp2 -- vllm serve Qwen/Qwen3-30B-A3B -tp 2
    """
    setup_logging()
    with user_errors():
        import os

        from dumper.config import check_user_settings

        # NOTE: before importing the patcher, which imports the dumper: a bad setting is
        # one error line here, not also a "dumping disabled" warning from this process.
        check_user_settings(os.environ)
    from patches.launch import RunConfig, default_run_dir, run_command as launch

    with user_errors():
        config = RunConfig(
            command=tuple(command),
            dir=str(dir) if dir is not None else default_run_dir(),
            patch_files=tuple(patch),
            mode=mode.value,
            filter=filter,
            overwrite=overwrite,
            check_patches=not no_check,
            against=str(against) if against is not None else None,
            escalate_steps=escalate_steps,
            online_rtol=online_rtol,
            run_id=run_id,
        )
        if (observe is not None or observe_tensor is not None) and not verify_observer:
            raise ConfigError("--observe and --observe-tensor need --verify-observer")
        if (graft_from is None) != (not graft):
            raise ConfigError("--graft-from BASELINE and --graft FILTER go together, e.g. "
                              "--graft-from runs/base --graft 'name~moe_output layer=1'")
        if graft_from is not None and verify_observer:
            raise ConfigError("--graft-from changes what CMD computes; it cannot be combined with --verify-observer")
        if graft_from is not None:
            from comparator.cli.grafting import GraftRequest, run_with_graft

            outcome = run_with_graft(config, GraftRequest(baseline=str(graft_from), expressions=tuple(graft),
                                                          aligner=graft_aligner.value))
            typer.echo(f"dumpcmp: {outcome.describe()}", err=True)
            code = outcome.code
        elif verify_observer:
            from comparator.cli.observer import verify_observer as verify

            code, check = verify(config, observe_file=str(observe) if observe is not None else None,
                                 observe_tensor=observe_tensor)
            typer.echo(f"dumpcmp: {check.describe()}", err=True)
            if code == 0 and check.changed:
                code = 1
        else:
            code = launch(config)
    for line in _outcome(config.dir, code):
        typer.echo(f"dumpcmp: {line}", err=True)
    raise typer.Exit(code)


def _outcome(run_dir: str, code: int) -> list[str]:
    """What the command left in the run directory, said at the end of ``dumpcmp run``."""
    import logging

    from comparator.inspect.inventory import outcome_lines, summarize_run
    from dumper.errors import DumpcmpError
    from dumper.reader import open_run

    logging.getLogger("dumper.reader").setLevel(logging.ERROR)  # `dumpcmp ls` lists the problems
    try:
        with open_run(run_dir) as run:
            summary = summarize_run(run)
    except DumpcmpError:
        summary = None
    if summary is None or not any(rank.records for rank in summary.ranks):
        return [f"nothing was dumped into {run_dir} (exit code {code}): the command wrote no record; check its own "
                "errors above, that it imports the patched engine modules (--patch), and the --filter"]
    return [*outcome_lines(summary), f"exit code {code}"]
