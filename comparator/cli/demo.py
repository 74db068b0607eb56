"""``dumpcmp demo [--bug NAME] [--keep DIR] [--format table|json]``: see a seed bug caught, on this CPU."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from comparator.cli.app import app, fail, setup_logging, user_errors


class DemoFormat(str, Enum):
    table = "table"
    json = "json"


@app.command("demo")
def demo_command(
    bug: Optional[str] = typer.Option(
        None, "--bug", "-b", metavar="NAME",
        help="ep_reduce_skipped_under_fusion (default), double_reduce, shared_expert_double_reduce, "
             "dense_tp_missing_reduce, dp_attention_padding, or none (a healthy target)."),
    keep: Optional[Path] = typer.Option(None, "--keep", metavar="DIR",
                                        help="Keep the runs in DIR/baseline and DIR/target (replaced if there)."),
    format: DemoFormat = typer.Option(DemoFormat.table, "--format", "-f",
                                      help="table for people; json: the comparison as dumpcmp compare prints it."),
) -> None:
    """Run the example MoE engine as a 1-process baseline and a multi-process target, then compare them.

    Both runs are dumped through the engine's patch preset, as dumpcmp run does, and
    compared as dumpcmp compare does; the demo prints the first divergence and its
    hint. Exit code 0 when the demo ran (whatever the comparison found); 2 for a bad
    option; 1 if the engine failed.

    Example: dumpcmp demo --bug double_reduce
    """
    setup_logging()
    from examples.demo import DEFAULT_SCENARIO, DemoConfig, DemoRunFailed, render_demo, run_demo

    with user_errors():
        config = DemoConfig(bug=bug or DEFAULT_SCENARIO, keep=str(keep) if keep is not None else None)
        try:
            result = run_demo(config)
        except DemoRunFailed as exc:
            raise fail(f"the example engine failed: {exc}", code=1) from None
    if format is DemoFormat.json:
        from comparator.report.json import render_json

        typer.echo(render_json(result.report), nl=False)
    else:
        render_demo(result)
    raise typer.Exit(0)
