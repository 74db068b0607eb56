"""The JUnit XML report (``--format junit``): one testcase per logical tensor.

Any CI renders it: ``fail`` -> <failure>, ``error`` -> <error>, ``skip`` and allowed
failures -> <skipped> (an allowed failure does not fail the gate, so it must not
turn the CI red either). Metrics and hints go into the message and system-out.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from comparator.report.text import one_line, printable
from comparator.report.runs import runs_lines
from comparator.results import Report, TensorResult


def _case_name(result: TensorResult) -> str:
    tags = ",".join(f"{k}={v}" for k, v in sorted(result.tags.items()))
    return f"{result.name}[{tags}]" if tags else result.name


def _details(result: TensorResult) -> str:
    lines = []
    if result.metrics is not None:
        lines.append(" ".join(f"{k}={v:.6g}" for k, v in result.metrics.as_dict().items()))
    if result.stats is not None:
        lines.append("stats only: " + " ".join(f"{k}={v:.6g}" for k, v in result.stats.values().items())
                     + f" checksum_match={result.stats.checksum_match}")
    if result.judgement is not None:
        lines.append(f"rule: {result.judgement.rule}")
    for label, value in (("reason", result.reason), ("hint", result.hint), ("origin", result.origin_detail)):
        if value:
            lines.append(f"{label}: {value}")
    lines.extend(f"note: {note}" for note in result.notes)
    return "\n".join(lines)


def render_junit(report: Report) -> str:
    summary = report.summary
    suites = ET.Element("testsuites", name="dumpcmp compare")
    # A grafted tensor agrees by construction (dumpcmp run --graft): no evidence, so not a pass.
    grafted_passes = sum(r.grafted and r.status == "pass" for r in report.results)
    skipped_count = summary.skipped + summary.allowed_failures + grafted_passes
    failures = summary.failed - sum(r.allowed and r.status == "fail" for r in report.results)
    errors = summary.errored - sum(r.allowed and r.status == "error" for r in report.results)
    suite = ET.SubElement(
        suites, "testsuite", name=f"dumpcmp compare {report.baseline} vs {report.target}",
        tests=str(summary.total), failures=str(failures), errors=str(errors), skipped=str(skipped_count), time="0",
    )
    properties = ET.SubElement(suite, "properties")
    for key, value in (("baseline", report.baseline), ("target", report.target), ("aligner", report.aligner),
                       ("aligner_reason", report.aligner_reason or ""),
                       ("exit_code", str(report.exit_code)),
                       ("compared_fraction", f"{summary.compared_fraction:.4f}"),
                       ("nothing_compared", str(summary.nothing_compared)),
                       ("partially_compared", str(summary.partially_compared))):
        ET.SubElement(properties, "property", name=key, value=value)
    if report.graft is not None:
        ET.SubElement(properties, "property", name="graft", value=f"{report.graft.outcome}: {report.graft.detail}")
    for line in runs_lines(report):  # what differs between the runs' fingerprints
        ET.SubElement(properties, "property", name="runs", value=line)
    for result in report.results:
        case = ET.SubElement(suite, "testcase", classname=f"dumpcmp.step{result.step}",
                             name=_case_name(result) + (" (stats only)" if result.stats_only else ""), time="0")
        message = "; ".join(part for part in (result.reason, result.hint) if part)
        if result.status == "fail" and not result.allowed:
            element = ET.SubElement(case, "failure", message=message or "failed", type=result.origin or "divergence")
            element.text = _details(result)
        elif result.status == "error" and not result.allowed:
            element = ET.SubElement(case, "error", message=message or "error", type="error")
            element.text = _details(result)
        elif result.grafted and result.status == "pass":
            ET.SubElement(case, "skipped", message="grafted: the target went on with the baseline's value here")
        elif result.status != "pass":
            prefix = "allowed failure: " if result.status in ("fail", "error") else ""
            ET.SubElement(case, "skipped", message=prefix + (message or result.status))
        out = _details(result)
        if out:
            ET.SubElement(case, "system-out").text = out
    for element in suites.iter():  # names and messages are user text: legal XML 1.0, one line per attribute
        element.attrib = {key: one_line(value) for key, value in element.attrib.items()}
        if element.text:
            element.text = printable(element.text)
    ET.indent(suites)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"
