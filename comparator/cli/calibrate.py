"""``dumpcmp calibrate RUN_A RUN_B [...] -o thresholds.yaml``: limits from the noise between runs that should agree."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from comparator.cli.app import app, setup_logging, user_errors


@app.command("calibrate")
def calibrate_command(
    runs: List[Path] = typer.Argument(..., help="Two or more run directories that should agree (e.g. one baseline dumped twice)."),
    output: Path = typer.Option(..., "--output", "-o", help="The thresholds YAML to write (then: dumpcmp compare -t FILE)."),
    margin: float = typer.Option(10.0, "--margin", help="Each limit is MARGIN x the measured noise (at least the dtype's floor)."),
    aligner: str = typer.Option("auto", "--aligner", "-a", help="Token aligner, as the gate's compare will use it."),
    steps: Optional[str] = typer.Option(None, "--steps", help="Steps A:B (A to B-1), A:, :B or A."),
    names: Optional[str] = typer.Option(None, "--names", help="Only tensors whose name matches this regex."),
    exclude: Optional[str] = typer.Option(None, "--exclude", help="Leave out tensors whose name matches this regex."),
    accept_bug_like: bool = typer.Option(
        False, "--accept-bug-like",
        help="Write thresholds even when the runs differ like a bug (k x scale, replicas that disagree, noise far above "
        "the dtype's); each such tensor is listed on stderr."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log what is being done."),
) -> None:
    """Measure the noise per tensor name between runs that should agree, and write threshold rules.

    Every pair of runs is compared; a tensor name's noise is its largest rel_diff and
    |norm_ratio - 1| over every pair, step and layer, raised to a floor per dtype (so
    exact-zero noise does not give a zero limit). Each rule allows MARGIN x that noise
    and records it under calibrated:, so compare reports every tensor's floor_ratio
    (its metric / the calibrated noise). Integer tensors keep their exact defaults.

    Runs that differ like a bug (a tensor k x the other with cosine 1, replicas that
    disagree, noise far above the dtype's rounding) are refused: thresholds calibrated
    on them would pass the bug.

    Exit codes: 0 the thresholds were written; 2 bad input (fewer than two runs, runs
    that differ in their tensors or like a bug, a margin below 1).

    Examples:

      dumpcmp calibrate runs/baseline-1 runs/baseline-2 -o thresholds.yaml

      dumpcmp compare runs/baseline-1 runs/tonight --thresholds thresholds.yaml
    """
    setup_logging(verbose)
    with user_errors():
        from comparator.judge.calibrate import calibrate
        from comparator.options import CompareOptions

        options = CompareOptions.from_values(aligner=aligner, steps=steps, names=names, exclude=exclude)
        calibration = calibrate(runs, margin=margin, options=options, accept_bug_like=accept_bug_like)
        calibration.write(output)
    for suspicion in calibration.suspicions:
        typer.echo(f"dumpcmp: warning: accepted a bug-like difference: {suspicion.label}: {suspicion.why}", err=True)
    typer.echo("measured noise (largest over pairs, steps and layers):")
    for line in calibration.describe():
        typer.echo(f"  {line}")
    typer.echo(f"wrote {len(calibration.tensors)} calibrated rules to {output} "
               f"(margin {calibration.margin:g}, {len(calibration.runs)} runs)")
