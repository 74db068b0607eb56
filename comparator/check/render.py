"""``dumpcmp check`` reports: table, JSON, JUnit and HTML, each a pure function of a CheckReport.

JSON (``render_check_json``)::

    {"run": str, "mode": "tensor"|"stats", "world_size": int, "tensors": int,
     "verdict": "clean"|"N finding(s)"|"nothing checked", "exit_code": 0|1|3,
     "summary": {"findings": N, "checked": N, "by_check": {"replicas": N, ...}},
     "first_finding": null | {finding},
     "checks": [{"check": str, "checked": int, "unit": str, "not_run": str|null, "findings": int}, ...],
     "findings": [{"check", "message", "tensor", "name", "step", "tags", "axis", "ranks",
                   "value", "limit", "hint"}, ...]}           # execution order
"""

from __future__ import annotations

import html
import json
import xml.etree.ElementTree as ET
from typing import Any

from comparator.check.findings import CHECK_TITLES, CheckReport, Finding

# The table shows this many findings per check; JSON, JUnit and HTML show them all.
TABLE_ROWS_PER_CHECK = 12


def check_json(report: CheckReport) -> dict[str, Any]:
    return {
        "run": report.run, "mode": report.mode, "world_size": report.world_size, "tensors": report.tensors,
        "verdict": report.verdict, "exit_code": report.exit_code,
        "summary": {"findings": len(report.findings), "checked": report.checked,
                    "by_check": {c.check: report.count(c.check) for c in report.coverage}},
        "first_finding": report.first.to_json() if report.first is not None else None,
        "checks": [{**c.to_json(), "findings": report.count(c.check)} for c in report.coverage],
        "findings": [f.to_json() for f in report.findings],
    }


def render_check_json(report: CheckReport) -> str:
    return json.dumps(check_json(report), indent=1) + "\n"


def check_lines(report: CheckReport) -> list[str]:
    """The report as plain lines (the table's content; compare --check-target prints these too)."""
    lines = [f"dumpcmp check {report.run}: {report.verdict} ({report.mode} mode, {report.tensors} tensors, "
             f"world size {report.world_size})"]
    first = report.first
    if first is not None:
        lines.append(f"first finding: {first.message}")
        if first.hint:
            lines.append(f"hint: {first.hint}")
    for coverage in report.coverage:
        found = [f for f in report.findings if f.check == coverage.check]
        mark = "FOUND" if found else ("-" if coverage.not_run or not coverage.checked else "ok")
        lines.append(f"  [{mark:>5}] {coverage.check}: {CHECK_TITLES[coverage.check]} "
                     f"({coverage.describe()}; {len(found)} finding(s))")
        for finding in found[:TABLE_ROWS_PER_CHECK]:
            lines.append(f"          {finding.message}")
        if len(found) > TABLE_ROWS_PER_CHECK:
            lines.append(f"          ... {len(found) - TABLE_ROWS_PER_CHECK} more (--format json lists them all)")
    return lines


def render_check_table(report: CheckReport, console: Any = None) -> None:
    from rich.console import Console
    from rich.text import Text

    console = console if console is not None else Console()
    style = "bold red" if report.findings else ("green" if report.checked else "yellow")
    lines = check_lines(report)
    console.print(Text(lines[0], style=style), soft_wrap=True)
    for line in lines[1:]:
        console.print(Text(line, style="cyan" if line.startswith("hint:") else ""), soft_wrap=True)


def render_check_text(report: CheckReport) -> str:
    return "\n".join(check_lines(report)) + "\n"


def check_junit_suite(parent: ET.Element, report: CheckReport, *, title: str = "dumpcmp check") -> ET.Element:
    """One testsuite: a testcase per check, failed with its findings."""
    suite = ET.SubElement(parent, "testsuite", name=f"{title} {report.run}", tests=str(len(report.coverage)),
                          failures=str(sum(1 for c in report.coverage if report.count(c.check))), errors="0",
                          skipped=str(sum(1 for c in report.coverage if c.not_run)), time="0")
    for coverage in report.coverage:
        case = ET.SubElement(suite, "testcase", classname="dumpcmp.check", name=coverage.check, time="0")
        found = [f for f in report.findings if f.check == coverage.check]
        if found:
            failure = ET.SubElement(case, "failure", message=found[0].message, type=coverage.check)
            failure.text = "\n".join(_finding_text(f) for f in found)
        elif coverage.not_run:
            ET.SubElement(case, "skipped", message=coverage.not_run)
        ET.SubElement(case, "system-out").text = f"{CHECK_TITLES[coverage.check]}: {coverage.describe()}"
    return suite


def render_check_junit(report: CheckReport) -> str:
    suites = ET.Element("testsuites", name="dumpcmp check")
    check_junit_suite(suites, report)
    ET.indent(suites)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"


def _finding_text(finding: Finding) -> str:
    return finding.message + (f"\n  hint: {finding.hint}" if finding.hint else "")


def check_html_section(report: CheckReport, *, title: str = "Checks that need no baseline") -> str:
    """An HTML fragment (escaped), for the check page and compare's page."""
    e = html.escape
    parts = [f"<section class='checks'><h2>{e(title)}</h2>",
             f"<p><b>{e(report.verdict)}</b>: {e(report.run)} ({e(report.mode)} mode, {report.tensors} tensors, "
             f"world size {report.world_size})</p>"]
    first = report.first
    if first is not None:
        parts.append(f"<p>First finding: {e(first.message)}</p>")
        if first.hint:
            parts.append(f"<p class='hint'>hint: {e(first.hint)}</p>")
    parts.append("<table><tr><th>check</th><th>what it looks for</th><th>checked</th><th>findings</th></tr>")
    for c in report.coverage:
        parts.append(f"<tr><td>{e(c.check)}</td><td>{e(CHECK_TITLES[c.check])}</td><td>{e(c.describe())}</td>"
                     f"<td>{report.count(c.check)}</td></tr>")
    parts.append("</table>")
    if report.findings:
        parts.append("<table><tr><th>check</th><th>tensor</th><th>axis</th><th>ranks</th><th>finding</th></tr>")
        for f in report.findings:
            parts.append(f"<tr><td>{e(f.check)}</td><td>{e(f.tensor or '-')}</td><td>{e(f.axis or '-')}</td>"
                         f"<td>{e(', '.join(map(str, f.ranks)) or '-')}</td><td>{e(_finding_text(f))}</td></tr>")
        parts.append("</table>")
    parts.append("</section>")
    return "\n".join(parts)


def render_check_html(report: CheckReport) -> str:
    return ("<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>dumpcmp check</title><style>"
            "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin:1em 0}"
            "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;white-space:pre-wrap}"
            ".hint{color:#066}</style></head><body>\n" + check_html_section(report, title="dumpcmp check")
            + "\n</body></html>\n")


# ------------------------------------------------------------- compare --check-target
# NOTE: compare's own renderers stay untouched: the target's checks are appended to
# their output (a key of the JSON object, a testsuite, a page section, lines after the
# table), so a compare report reads the same with and without --check-target.
def add_checks_to_json(text: str, checks: CheckReport) -> str:
    data = json.loads(text)
    data["target_checks"] = check_json(checks)
    return json.dumps(data, indent=1) + "\n"


def add_checks_to_junit(text: str, checks: CheckReport) -> str:
    suites = ET.fromstring(text.split("?>", 1)[1] if text.startswith("<?xml") else text)
    check_junit_suite(suites, checks, title="dumpcmp check (target)")
    ET.indent(suites)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"


def add_checks_to_html(text: str, checks: CheckReport) -> str:
    section = check_html_section(checks, title="Checks of the target run (no baseline)")
    head, found, tail = text.rpartition("</body>")
    return f"{head}{section}\n{found}{tail}" if found else text + section + "\n"
