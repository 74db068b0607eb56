"""``dumpcmp show RUN NAME``: one tensor up close (stats, shards, diff, picture)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer

from comparator.cli.app import app, setup_logging, user_errors


class ShowFormat(str, Enum):
    table = "table"
    json = "json"


@app.command("show")
def show_command(
    run_dir: Path = typer.Argument(..., metavar="RUN", help="Run directory (or SGLang dump directory)."),
    name: str = typer.Argument(..., help="Dump name, exactly as in 'dumpcmp ls RUN' (e.g. moe_output)."),
    step: Optional[int] = typer.Option(None, "--step", "-s", help="Only this step (forward pass)."),
    tags: List[str] = typer.Option(
        [], "--tags", "-t", metavar="K=V", help="Only tensors with these tags, e.g. --tags layer=1 (repeatable, or k=v,k=v)."),
    baseline: Optional[Path] = typer.Option(
        None, "--baseline", "-b", help="Compare with the same tensor of this run and print the diff summary."),
    aligner: str = typer.Option("none", "--aligner", "-a", help="Token aligner for the diff: none, concat_steps, by_request."),
    dims: Optional[str] = typer.Option(None, "--dims", help="Override the dims annotation, e.g. 't h[tp]'."),
    plot: Optional[Path] = typer.Option(
        None, "--plot", help="Write a picture: heatmap of |values| (or |t-b| with --baseline), rows = tokens, "
        "and a histogram. FILE.png (no labels; the legend is printed) or FILE.svg (labelled)."),
    tokens: bool = typer.Option(
        False, "--tokens", help="With --baseline: list every token's rel_l2 (the per-token error), worst marked."),
    format: ShowFormat = typer.Option(ShowFormat.table, "--format", "-f", help="table for people, json for scripts."),
) -> None:
    """Show one tensor of a run: its whole-tensor stats, every shard (rank, place, stats, checksum),
    and with --baseline how it differs (metrics, verdict, hint, worst token).

    When several tensors match (one per step and tag set), they are listed; narrow
    down with --step and --tags. Exit code 0; 1 with --baseline when the tensor does not
    pass; 2 on bad input (no such run or tensor, a --plot of a stats-mode run).

    Examples:

      dumpcmp show runs/tp2 moe_output --step 0 --tags layer=1

      dumpcmp show runs/tp2 moe_output -s 0 -t layer=1 --baseline runs/tp1 --plot diff.png
    """
    setup_logging()
    import logging
    import sys

    from comparator.inspect.show import parse_tags, picture, plot_format, show_tensor, write_plot

    logging.getLogger("dumper.reader").setLevel(logging.ERROR)
    with user_errors():
        wanted = parse_tags(tags)
        if plot is not None:
            plot_format(plot)  # before any work: a .jpg name gets one line, not PNG bytes
        if tokens and baseline is None:
            from comparator.errors import OptionError

            raise OptionError("--tokens lists the per-token error against a baseline; add --baseline RUN")
        with _spinner(sys.stderr.isatty(), "reading" + (" and comparing" if baseline else "")):
            view = show_tensor(run_dir, name, step=step, tags=wanted, baseline=baseline, aligner=aligner, dims=dims)
        if format is ShowFormat.json:
            import json

            from comparator.inspect.show_json import view_to_json

            typer.echo(json.dumps(view_to_json(view), indent=1, allow_nan=False))
        else:
            from comparator.inspect.render_show import render_per_token, render_view

            render_view(view)
            if tokens:
                render_per_token(view)
        if plot is not None:
            with _spinner(sys.stderr.isatty(), "drawing"):
                legend = write_plot(plot, picture(view, baseline=baseline),
                                    title=f"{view.tensor.label if view.tensor else name} in {view.run}")
            typer.echo(f"wrote {plot}: {legend}", err=format is ShowFormat.json)  # stdout holds the JSON
    if view.comparison is not None and not view.comparison:
        raise typer.Exit(1)


def _spinner(enabled: bool, text: str):
    import contextlib

    if not enabled:
        return contextlib.nullcontext()
    from rich.console import Console

    return Console(stderr=True).status(text)
