"""``dumpcmp patch check F...``: validate patch files without importing the engine."""

from __future__ import annotations

from typing import List

import typer

from comparator.cli.app import EXIT_USAGE, app

patch_app = typer.Typer(
    name="patch",
    help="Work with patch files (YAML that injects dump calls into engine code).",
    no_args_is_help=True,
)
app.add_typer(patch_app, name="patch")


@patch_app.command("check")
def check_command(
    files: List[str] = typer.Argument(..., metavar="F...", help="Patch files, or presets such as vllm/qwen3_moe."),
    show: bool = typer.Option(False, "--show", help="Also print each patched function as it will run."),
) -> None:
    """Check every target and anchor of patch files against the installed engine source.

    The engine is not imported: each target's module file is found and parsed, so
    presets can be checked on a machine without a GPU. Exit code 0 when all is well,
    2 when a file, target or anchor is wrong.

    Example: dumpcmp patch check patches/presets/vllm/*.yaml
    """
    from patches.check import check_patch_file, patched_sources
    from patches.errors import PatchError
    from patches.presets import resolve_patch_path

    failed = False
    for name in files:
        try:
            path = resolve_patch_path(name)
        except PatchError as exc:
            typer.echo(f"dumpcmp: error: {exc}", err=True)
            failed = True
            continue
        result = check_patch_file(path)
        if not result:
            failed = True
            for problem in result.problems:
                typer.echo(f"dumpcmp: error: {problem}", err=True)
            continue
        typer.echo(f"ok: {name} ({len(result.targets)} targets, {result.edits} edits)")
        if show:
            for target, text in patched_sources(path):
                typer.echo(f"# {target}\n{text}\n")
    if failed:
        raise typer.Exit(EXIT_USAGE)
