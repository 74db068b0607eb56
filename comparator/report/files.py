"""Several report formats from one comparison: ``compare --output-dir D --format json,junit,html``.

Each format is rendered from the same Report (renderers are pure functions of it), so
the files can never disagree, and the comparison runs once.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from comparator.errors import OptionError
from comparator.results import Report

FILE_NAMES = {"json": "report.json", "junit": "junit.xml", "html": "report.html", "table": "report.txt"}
TABLE_WIDTH = 160


def parse_formats(text: str | Sequence[str]) -> tuple[str, ...]:
    """``json,junit,html`` (or repeated values) -> the formats, in order, each once."""
    parts = [p.strip() for item in ([text] if isinstance(text, str) else text) for p in item.split(",")]
    formats = tuple(dict.fromkeys(p for p in parts if p))
    unknown = [f for f in formats if f not in FILE_NAMES]
    if unknown or not formats:
        raise OptionError(f"--format {','.join(formats) or text!r}: unknown format {unknown[0] if unknown else '(none)'!r}; "
                          f"valid formats: {', '.join(FILE_NAMES)} (comma-separated with --output-dir)")
    return formats


def render(report: Report, format: str) -> str:
    if format == "json":
        from comparator.report.json import render_json

        return render_json(report)
    if format == "junit":
        from comparator.report.junit import render_junit

        return render_junit(report)
    if format == "html":
        from comparator.report.html import render_html

        return render_html(report)
    import io

    from rich.console import Console

    from comparator.report.table import render_table

    console = Console(record=True, width=TABLE_WIDTH, file=io.StringIO())
    render_table(report, console)
    return console.export_text()


def report_directory(directory: str | os.PathLike[str]) -> Path:
    """``directory``, created if missing; OptionError (one line) when it cannot be."""
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as exc:
        raise OptionError(f"{os.fspath(directory)}: cannot create the report directory ({exc.strerror})") from None
    return Path(directory)


def write_reports(report: Report, directory: str | os.PathLike[str], formats: Sequence[str]) -> dict[str, str]:
    """Write each format's file (FILE_NAMES) into ``directory``; returns format -> path."""
    directory = os.fspath(report_directory(directory))
    written = {}
    for format in formats:
        path = os.path.join(directory, FILE_NAMES[format])
        try:
            with open(path, "w", encoding="utf-8") as handle:
                handle.write(render(report, format))
        except OSError as exc:
            raise OptionError(f"{path}: cannot write the report ({exc.strerror})") from None
        written[format] = path
    return written
