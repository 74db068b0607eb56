"""``dumpcmp gate``: the nightly gate over a baseline store (library: comparator/gate/)."""

from __future__ import annotations

import datetime
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer
from typer.core import TyperGroup

from comparator.cli.app import app, setup_logging, user_errors


class _GateGroup(TyperGroup):
    """``dumpcmp gate STORE RUN ...`` is ``dumpcmp gate run STORE RUN ...``: the gate is the common case."""

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


gate_app = typer.Typer(
    name="gate", cls=_GateGroup, no_args_is_help=True,
    help="The nightly gate: tonight's run against a baseline store (dumpcmp gate STORE RUN is dumpcmp gate run).",
)
app.add_typer(gate_app, name="gate")


@gate_app.command("run")
def gate_run_command(
    store: Path = typer.Argument(..., help="The baseline store (a directory; dumpcmp gate init seeds it)."),
    run: Path = typer.Argument(..., help="Tonight's run directory."),
    output_dir: Path = typer.Option(..., "--output-dir", "-d", help="Where the reports and gate.json go."),
    format: Optional[List[str]] = typer.Option(
        None, "--format", "-f", metavar="json|junit|html|table",
        help="Report formats, comma-separated or repeated (default: json,junit,html)."),
    waivers: Optional[Path] = typer.Option(None, "--waivers", "-w", help="The reviewed waivers file (dumpcmp gate accept)."),
    promote: bool = typer.Option(False, "--promote", help="On a pass of a complete run, make it the store's new baseline."),
    keep: int = typer.Option(7, "--keep", min=1, help="Baselines the store keeps when promoting."),
    thresholds: Optional[Path] = typer.Option(None, "--thresholds", "-t", help="YAML rules, as for compare."),
    aligner: str = typer.Option("none", "--aligner", "-a", help="Token aligner: none, concat_steps, by_request."),
    allow_fail: Optional[List[str]] = typer.Option(None, "--allow-fail", help="Regex of tensors whose failures do not fail the gate (repeatable)."),
    allow_skip: Optional[List[str]] = typer.Option(None, "--allow-skip", help="Regex of tensors that may be missing on one side (repeatable)."),
    allow_different_model: bool = typer.Option(
        False, "--allow-different-model", help="Compare even when the runs' fingerprints say another model, weights or dtype."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log what is being done."),
) -> None:
    """Compare tonight's run with the store's current baseline; write every report from one comparison.

    Applies the waivers file (an expired waiver fails the gate, naming it), appends one
    line per tensor to the store's history, and with --promote makes tonight's run the
    new baseline when (and only when) the gate passed on a complete run.

    Exit codes: as compare: 0 pass; 1 a failure, or an expired or exceeded waiver;
    2 bad input (no baseline in the store, a store that is not writable, a bad waivers
    file, runs of different models or one run twice); 3 nothing was compared.

    Examples:

      dumpcmp gate /mnt/baselines/moe-ep2 runs/tonight --output-dir gate-out --promote

      dumpcmp gate store runs/tonight -d out --waivers engine/dumpcmp-waivers.yaml
    """
    setup_logging(verbose)
    import logging

    with user_errors():
        from comparator.cli.compare import _any_of
        from comparator.gate.gate import GateConfig, run_gate
        from comparator.report.files import parse_formats

        if not verbose:
            logging.getLogger("dumper.reader").setLevel(logging.ERROR)
            logging.getLogger("comparator.pipeline").setLevel(logging.ERROR)
        config = GateConfig(
            store=str(store), run=str(run), output_dir=str(output_dir), formats=parse_formats(format or ["json,junit,html"]),
            waivers=str(waivers) if waivers else None, promote=promote, keep=keep,
            allow_different_model=allow_different_model,
            compare={"thresholds": thresholds, "aligner": aligner, "allow_fail": _any_of(allow_fail),
                     "allow_skip": _any_of(allow_skip)},
        )
        outcome = run_gate(config)
    _print_outcome(outcome)
    raise typer.Exit(outcome.exit_code)


def _print_outcome(outcome) -> None:
    verdict = "PASS" if outcome.exit_code == 0 else "FAIL"
    typer.echo(f"gate: {verdict} (exit {outcome.exit_code}): {outcome.exit_reason}")
    summary = outcome.report.summary
    typer.echo(f"baseline: {outcome.baseline}; {summary.total} tensors: {summary.passed} passed, "
               f"{summary.failed} failed, {summary.skipped} skipped, {summary.errored} errors")
    first = outcome.report.first_divergence
    if first is not None:
        typer.echo(f"first divergence: {outcome.report.results[first.index].label}: {first.hint or first.reason}")
    for line in runs_lines(outcome.runs):
        typer.echo(line)
    for waived in outcome.waived:
        extra = f"; EXCEEDS {', '.join(waived.exceeded)}" if waived.exceeded else ""
        typer.echo(f"waived: {waived.label} by {waived.waiver.describe()}{extra}")
    for waiver in outcome.expired:
        typer.echo(f"EXPIRED: {waiver.describe()}", err=True)
    if outcome.promoted:
        typer.echo(f"promoted: tonight's run is the new baseline {outcome.promoted}")
    elif outcome.not_promoted:
        typer.echo(f"not promoted: {outcome.not_promoted}")
    typer.echo("reports: " + " ".join(outcome.files.values()))


def runs_lines(runs) -> list[str]:
    """The fingerprint differences, short (what compare's reports show too)."""
    lines = []
    if runs.model:
        lines.append("runs differ in model (allowed): " + "; ".join(
            f"{d.describe()} [{d.allowed_by}]" for d in runs.model))
    if runs.expected:
        lines.append("runs differ in (expected): " + "; ".join(d.describe() for d in runs.expected if d.field != "command"))
    lines += [f"note: {note}" for note in runs.notes]
    return lines


@gate_app.command("init")
def gate_init_command(
    store: Path = typer.Argument(..., help="The baseline store directory (created if missing)."),
    run: Path = typer.Argument(..., help="A complete run to be the first baseline."),
) -> None:
    """Seed a baseline store with its first baseline (or replace the current one by hand).

    Exit codes: 0 seeded; 2 the run is incomplete or the store is not writable.
    """
    with user_errors():
        from comparator.gate.gate import init_store

        name = init_store(str(store), str(run))
    typer.echo(f"baseline {name} is the current baseline of {store}")


@gate_app.command("accept")
def gate_accept_command(
    waivers: Path = typer.Argument(..., help="The waivers file, in the engine's repository (created if missing)."),
    tensors: str = typer.Option(..., "--tensors", help="Regex of the tensor names the change affects."),
    tolerance: Optional[List[str]] = typer.Option(
        None, "--tolerance", metavar="METRIC=VALUE", help="New limit for these tensors, e.g. rel_diff=1e-2 (repeatable)."),
    new_baseline: bool = typer.Option(False, "--new-baseline", help="Accept the change outright; promote tonight's run."),
    reason: str = typer.Option(..., "--reason", help="Why the change is intended (a PR, a kernel change)."),
    author: str = typer.Option(..., "--author", help="Who reviewed it."),
    expires: Optional[str] = typer.Option(None, "--expires", help="Last day the waiver holds, YYYY-MM-DD."),
    days: Optional[int] = typer.Option(None, "--days", min=1, help="Or: the waiver holds this many days from today."),
) -> None:
    """Record a reviewed waiver for an intentional numerical change (commit the file with the change).

    Exit codes: 0 written; 2 bad values or a waivers file that cannot be extended.

    Examples:

      dumpcmp gate accept dumpcmp-waivers.yaml --tensors '^moe_output$' --tolerance rel_diff=1e-2 \\
          --reason "fp8 MoE kernel (PR 1234)" --author alice --days 30
    """
    with user_errors():
        from comparator.errors import GateError
        from comparator.gate.waivers import add_waiver, waiver_entry_yaml

        today = datetime.datetime.now(datetime.timezone.utc).date()
        if (expires is None) == (days is None):
            raise GateError("give the waiver an end: --expires YYYY-MM-DD or --days N (exactly one)")
        if expires is not None:
            try:
                until = datetime.date.fromisoformat(expires)
            except ValueError:
                raise GateError(f"--expires {expires!r} is not a date; write YYYY-MM-DD, e.g. 2027-01-31") from None
        else:
            until = today + datetime.timedelta(days=days or 0)
        limits = {}
        for item in tolerance or []:
            metric, sep, value = item.partition("=")
            try:
                limits[metric.strip()] = [float(v) for v in value.split(",")] if "," in value else float(value)
            except ValueError:
                raise GateError(f"--tolerance {item!r}: write METRIC=VALUE, e.g. rel_diff=1e-2 or norm_ratio=0.9,1.1") from None
            if not sep:
                raise GateError(f"--tolerance {item!r}: write METRIC=VALUE, e.g. rel_diff=1e-2")
        entry = waiver_entry_yaml(tensors=tensors, tolerance=limits or None, new_baseline=new_baseline, reason=reason,
                                  author=author, expires=until, created=today)
        written = add_waiver(str(waivers), entry)
    typer.echo(f"{waivers}: {written[-1].describe()}")


class HistoryFormat(str, Enum):
    table = "table"
    json = "json"
    html = "html"


@gate_app.command("history")
def gate_history_command(
    store: Path = typer.Argument(..., help="The baseline store."),
    nights: int = typer.Option(14, "--nights", "-n", min=1, help="The last N nights."),
    tensors: Optional[str] = typer.Option(None, "--tensors", help="Only tensors whose label matches this regex."),
    top: int = typer.Option(40, "--top", min=0, help="At most this many tensors, worst first (0: all)."),
    format: HistoryFormat = typer.Option(HistoryFormat.table, "--format", "-f", help="table, json or html."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write to this file instead of stdout."),
) -> None:
    """Per-tensor error over the last N nights, so slow drift shows before it crosses a threshold.

    Exit codes: 0; 2 no history, or a corrupt history line (named).
    """
    with user_errors():
        from comparator.errors import OptionError
        from comparator.gate.history import read_history
        from comparator.gate.render import render_history_html, render_history_json, select_tensors
        from comparator.gate.store import open_store
        from comparator.options import compile_regex

        history = read_history(open_store(store).history_path, last=nights)
        chosen = select_tensors(history, pattern=compile_regex(tensors, "--tensors"), top=top or None)
        if format is HistoryFormat.table:
            import io

            from rich.console import Console

            from comparator.gate.render import render_history_table

            from comparator.report.console import output_console

            console = Console(record=True, width=200, file=io.StringIO()) if output else output_console()
            render_history_table(history, chosen, console)
            text = console.export_text() if output else None
        else:
            text = render_history_json(history, chosen) if format is HistoryFormat.json else render_history_html(history, chosen)
        if text is not None:
            if output is None:
                typer.echo(text, nl=False)
            else:
                try:
                    output.write_text(text, encoding="utf-8")
                except OSError as exc:
                    raise OptionError(f"{output}: cannot write ({exc.strerror})") from None
