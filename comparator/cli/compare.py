"""``dumpcmp compare BASELINE TARGET``: which tensor diverges first, and why."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from comparator.cli.app import ReportFormat, app, setup_logging, user_errors


CompareFormat = ReportFormat  # one choice of formats for compare and check


@app.command("compare")
def compare_command(
    baseline: Path = typer.Argument(..., help="The trusted run directory (e.g. TP=1)."),
    target: Path = typer.Argument(..., help="The run under test (e.g. TP=2 + EP=2)."),
    aligner: str = typer.Option(
        "auto", "--aligner", "-a", help="Token aligner: auto (chosen from the runs' token metadata; the report says "
        "which and why), none, concat_steps, by_request."),
    aligner_meta: Optional[str] = typer.Option(
        None, "--aligner-meta", help="Token metadata dump names for the aligners, KEY=NAME[,KEY=NAME] "
        "(keys: input_ids, positions, position_ids, token_req_ids, req_ids, seq_lens, extend_lens, num_tokens_per_dp_rank)."),
    thresholds: Optional[Path] = typer.Option(None, "--thresholds", "-t", help="YAML rules: name regex -> limits (first match wins); its stats: section judges stats-only comparisons."),
    allow_fail: Optional[list[str]] = typer.Option(
        None, "--allow-fail", help="Regex of tensor names whose failures/errors do not fail the gate (repeatable: any matches)."),
    allow_skip: Optional[list[str]] = typer.Option(
        None, "--allow-skip", help="Regex of tensor names that may be missing on one side (repeatable: any matches)."),
    format: Optional[List[str]] = typer.Option(
        None, "--format", "-f", metavar="table|json|junit|html",
        help="table (default) for people, json for scripts, junit for CI, html for a self-contained page with plots "
        "(use with --output). With --output-dir: several, comma-separated or repeated (json,junit,html)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write the report to this file instead of stdout."),
    output_dir: Optional[Path] = typer.Option(
        None, "--output-dir", "-d", help="Write every --format from this one comparison into this directory "
        "(report.json, junit.xml, report.html, report.txt)."),
    allow_self: bool = typer.Option(
        False, "--allow-self", help="Compare a run with itself (same directory or run id): refused otherwise, as it always passes."),
    allow_different_model: bool = typer.Option(
        False, "--allow-different-model",
        help="Compare runs whose fingerprints say another model, weights, quantisation or dtype (refused otherwise)."),
    steps: Optional[str] = typer.Option(None, "--steps", help="Target steps A:B (A to B-1), A:, :B or A."),
    baseline_steps: Optional[str] = typer.Option(
        None, "--baseline-steps", help="Baseline steps, paired in order with --steps (e.g. skip warm-up steps). Default: --steps."),
    names: Optional[str] = typer.Option(None, "--names", help="Only tensors whose name matches this regex."),
    exclude: Optional[str] = typer.Option(None, "--exclude", help="Leave out tensors whose name matches this regex."),
    name_map: Optional[Path] = typer.Option(None, "--name-map", help="YAML: target names/tags -> baseline names/tags."),
    override_dims: List[str] = typer.Option(
        [], "--override-dims", help="[baseline:|target:]NAME=DIMS; NAME is a regex matched in full. Repeatable."),
    jobs: int = typer.Option(1, "--jobs", "-j", min=1, help="Worker processes comparing tensors in parallel "
                             "(local executor)."),
    executor: str = typer.Option(
        "local", "--executor", metavar="local|ray",
        help="Where tensors are compared: local (this machine, --jobs processes) or ray (Ray tasks on a cluster, "
        "each on the node holding its shards; needs pip install 'dumpcmp[ray]'; docs/scale.md)."),
    address: Optional[str] = typer.Option(
        None, "--address", metavar="ADDR",
        help="The Ray cluster for --executor ray (HOST:PORT or ray://HOST:PORT). Default: RAY_ADDRESS, else the "
        "cluster 'ray start' runs on this machine, else a new Ray instance on this machine alone."),
    verify: bool = typer.Option(False, "--verify-checksums", help="Check every tensor's checksum while loading."),
    no_routing: bool = typer.Option(
        False, "--no-routing", help="Judge top-k ids and MoE outputs like any tensor (no routing-flip analysis)."),
    moe_outputs: Optional[str] = typer.Option(
        None, "--moe-outputs", metavar="REGEX",
        help="Names of the MoE outputs judged on the tokens whose routing agrees "
        "(default: routed_expert_output, moe_output and similar)."),
    min_compared: float = typer.Option(
        0.5, "--min-compared", metavar="FRACTION",
        help="Fail the gate when fewer than this fraction of the rows were compared overall (rows are left out "
        "after benign routing flips; a result that compared nothing is a skip). 0 turns it off."),
    check_target: bool = typer.Option(
        False, "--check-target", help="Also run dumpcmp check's checks (no baseline needed) on the target; "
        "a finding fails the gate (exit 1) and every format reports them (docs/check.md)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log what is being done."),
) -> None:
    """Compare two runs and report the first tensor that diverges, with a hint about why.

    Either run may be dumped in stats mode (dumpcmp run --mode stats): its tensors are
    then judged from their index stats and checksums only, with limits of their own
    (the stats: section of --thresholds), and every report marks them "stats".

    Each report lists what differs between the runs' fingerprints (layout, versions,
    settings). Runs of different models (architecture, config, weights, quantisation,
    dtype) are refused with exit code 2 unless --allow-different-model (a dtype change
    alone: a thresholds file saying allow_dtype_change: true); so is a run compared with
    itself, unless --allow-self.

    Exit codes: 0 all pass; 1 a failure (or skip) not allowed; 2 bad input or usage;
    3 nothing was compared.

    Examples:

      dumpcmp compare runs/tp1 runs/tp2

      dumpcmp compare runs/tp1 runs/tp2 --format html --output report.html

      dumpcmp compare runs/nightly-baseline runs/tonight --format junit --output junit.xml

      dumpcmp compare runs/tp1 runs/tp2 --output-dir reports --format json,junit,html

      dumpcmp compare runs/tp1 '/local/dumps/tp8-node*' --executor ray --address head:6379
    """
    setup_logging(verbose)
    import logging
    import sys

    with user_errors():
        import dataclasses

        from comparator.comparability import check_comparable
        from comparator.errors import OptionError
        from comparator.pipeline import compare
        from comparator.options import CompareOptions
        from comparator.report.files import parse_formats

        formats = parse_formats(format or ["table"])
        if output_dir is None and len(formats) > 1:
            raise OptionError(f"--format {','.join(formats)}: several formats need --output-dir DIR (one file each)")
        if output_dir is not None and output is not None:
            raise OptionError("--output and --output-dir: give one (--output-dir writes one file per --format)")

        options = CompareOptions.from_values(
            aligner=aligner, aligner_metadata=aligner_meta, thresholds=thresholds, allow_fail=_any_of(allow_fail),
            allow_skip=_any_of(allow_skip), steps=steps,
            baseline_steps=baseline_steps, names=names, exclude=exclude, name_map=name_map,
            override_dims=override_dims, jobs=jobs, verify_checksums=verify,
            routing=not no_routing, moe_outputs=moe_outputs, min_compared=min_compared, executor=executor,
            address=address,
        )
        if not verbose:
            # The report lists the runs' problems itself.
            logging.getLogger("dumper.reader").setLevel(logging.ERROR)
            logging.getLogger("comparator.pipeline").setLevel(logging.ERROR)
        # The bar is on stderr and transient: it never mixes with a report on stdout.
        show_progress = sys.stderr.isatty()
        runs = check_comparable(baseline, target, allow_self=allow_self, allow_different_model=allow_different_model,
                                allow_dtype_change=options.thresholds.allow_dtype_change)
        report = _run_with_progress(compare, baseline, target, options) if show_progress else compare(baseline, target, options=options)
        report = dataclasses.replace(report, runs=runs)
        # NOTE: the report of a million records is a few million objects, all kept until
        # the process exits: collections while it is rendered would visit them all again.
        import gc

        gc.freeze()
        checks = None
        if check_target:
            from comparator.check import CheckOptions, check_run

            checks = check_run(target, options=CheckOptions(thresholds=options.thresholds))
        if output_dir is None:
            _emit(report, CompareFormat(formats[0]), output, checks)
        else:
            from comparator.report.files import FILE_NAMES, report_directory

            # One comparison, every format (DESIGN.md: --output-dir D --format json,junit,html).
            directory = report_directory(output_dir)
            for name in formats:
                _emit(report, CompareFormat(name), directory / FILE_NAMES[name], checks)
    exit_code = report.exit_code
    if checks is not None and checks.findings and exit_code == 0:
        exit_code = 1
    raise typer.Exit(exit_code)


def _run_with_progress(compare, baseline: Path, target: Path, options):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("comparing"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  TextColumn("[dim]{task.description}"), console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("", total=None)

        def progress(done: int, total: int, label: str) -> None:
            bar.update(task, completed=done, total=total, description=label)

        return compare(baseline, target, options=options, progress=progress)


def _emit(report, format: CompareFormat, output: Optional[Path], checks=None) -> None:
    from comparator.check import render as check_render
    from comparator.errors import OptionError

    if format is CompareFormat.json:
        from comparator.report.json import render_json

        text = render_json(report)
        if checks is not None:
            text = check_render.add_checks_to_json(text, checks)
    elif format is CompareFormat.html:
        from comparator.report.html import render_html

        text = render_html(report)
        if checks is not None:
            text = check_render.add_checks_to_html(text, checks)
    elif format is CompareFormat.junit:
        from comparator.report.junit import render_junit

        text = render_junit(report)
        if checks is not None:
            text = check_render.add_checks_to_junit(text, checks)
    else:
        from rich.console import Console

        from comparator.report.table import render_table

        if output is None:
            render_table(report)
            if checks is not None:
                check_render.render_check_table(checks)
            return
        import io

        console = Console(record=True, width=160, file=io.StringIO())
        render_table(report, console)
        if checks is not None:
            check_render.render_check_table(checks, console)
        text = console.export_text()
    if output is None:
        typer.echo(text, nl=False)
        return
    try:
        output.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise OptionError(f"{output}: cannot write the report ({exc.strerror})") from None


def _any_of(patterns: Optional[list[str]]) -> Optional[str]:
    """Repeated regex options: a name is allowed when any of them matches."""
    if not patterns:
        return None
    return patterns[0] if len(patterns) == 1 else "|".join(f"(?:{pattern})" for pattern in patterns)
