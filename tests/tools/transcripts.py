"""Transcripts in README.md and docs/*.md are the tool's own output, regenerated and checked.

A fenced block right after ``<!-- transcript -->`` starts with ``$ COMMAND`` and holds
what that command prints (stdout, piped, COLUMNS=100). Regenerate them all with

    python -m tests.tools.transcripts --write

tests/docs/test_transcripts.py fails when a transcript differs from what the command
prints now, so the docs cannot go stale. Parts that change from run to run or machine to
machine (wall times, temp paths, rounding-level differences below 1e-6) are normalised
before comparing.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
MARKER = re.compile(r"^<!--\s*transcript\s*-->\s*\n```\n\$ (?P<command>[^\n]+)\n(?P<output>.*?)^```", re.M | re.S)
WIDTH = "100"
_VOLATILE = [
    (re.compile(r"Ran in \d+(\.\d+)? s\."), "Ran in N s."),
    # Rounding-level metrics depend on the CPU's summation order; anything this small is 'about 0'.
    (re.compile(r"\b\d(\.\d+)?e-(0[7-9]|[1-9]\d)\b"), "~0"),
]


@dataclass(frozen=True)
class Transcript:
    document: Path
    line: int
    command: str
    output: str
    span: tuple[int, int]  # the output's character range in the document


def transcripts(document: Path) -> list[Transcript]:
    text = document.read_text(encoding="utf-8")
    return [Transcript(document=document, line=text.count("\n", 0, m.start()) + 1, command=m.group("command"),
                       output=m.group("output"), span=m.span("output")) for m in MARKER.finditer(text)]


def run_transcript(command: str) -> str:
    args = shlex.split(command)
    if args[0] != "dumpcmp":
        raise ValueError(f"transcripts run dumpcmp commands only, not {command!r}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DUMPCMP_")}
    env.update(COLUMNS=WIDTH, PYTHONPATH=os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p))
    proc = subprocess.run([sys.executable, "-c", "from comparator.cli import main; main()", *args[1:]],
                          env=env, capture_output=True, text=True, timeout=600, cwd=REPO)
    return "\n".join(line.rstrip() for line in proc.stdout.splitlines()) + "\n"


def normalise(text: str) -> str:
    for pattern, replacement in _VOLATILE:
        text = pattern.sub(replacement, text)
    return "\n".join(line.rstrip() for line in text.splitlines())


def write_all() -> int:
    changed = 0
    for document in DOCUMENTS:
        found = transcripts(document)
        if not found:
            continue
        text = document.read_text(encoding="utf-8")
        for transcript in reversed(found):  # from the end: earlier spans stay valid
            output = run_transcript(transcript.command)
            start, end = transcript.span
            if text[start:end] != output:
                text = text[:start] + output + text[end:]
                changed += 1
        document.write_text(text, encoding="utf-8")
    return changed


if __name__ == "__main__":
    if "--write" in sys.argv[1:]:
        print(f"{write_all()} transcript(s) rewritten")
    else:
        for document in DOCUMENTS:
            for transcript in transcripts(document):
                print(f"{document.relative_to(REPO)}:{transcript.line}: $ {transcript.command}")
