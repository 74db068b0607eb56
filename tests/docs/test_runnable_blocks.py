"""The commands in README.md and docs/*.md that are marked runnable are run, as written.

A fenced ```bash (or ```python) block right after a line ``<!-- runnable -->`` is run;
``<!-- runnable: exit N -->`` expects exit code N (``dumpcmp compare`` exits 1 when a
tensor diverges). Blocks of one file run in order, in one fresh temporary directory
(later blocks use the runs that earlier ones dumped), with ``bash -e -o pipefail`` and a
time limit each.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers.procs import REPO, clean_env

MARKER = re.compile(r"^<!--\s*runnable(?::\s*exit\s+(\d+))?\s*-->\s*\n```(bash|python)\n(.*?)^```", re.M | re.S)
BLOCK_TIMEOUT = 240
DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


@dataclass(frozen=True)
class Block:
    line: int
    language: str
    code: str
    exit_code: int


def runnable_blocks(path: Path) -> list[Block]:
    text = path.read_text(encoding="utf-8")
    return [Block(line=text.count("\n", 0, match.start()) + 1, language=match.group(2), code=match.group(3),
                  exit_code=int(match.group(1) or 0)) for match in MARKER.finditer(text)]


def test_the_readme_has_a_runnable_quickstart():
    blocks = runnable_blocks(REPO / "README.md")
    assert len(blocks) >= 3
    code = "\n".join(b.code for b in blocks)
    assert "--format html" in code and "dumpcmp show" in code and "--mode stats" in code


@pytest.mark.slow
@pytest.mark.parametrize("document", [d for d in DOCUMENTS if runnable_blocks(d)], ids=lambda d: d.name)
def test_runnable_blocks(document, tmp_path):
    env = clean_env()
    # `python` and `dumpcmp` are this interpreter's, whatever the shell's PATH says.
    env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")])
    for block in runnable_blocks(document):
        where = f"{document.name}:{block.line}"
        command = ["bash", "-e", "-o", "pipefail", "-c", block.code] if block.language == "bash" else \
            [sys.executable, "-c", block.code]
        try:
            proc = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=BLOCK_TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{where}: the block ran past {BLOCK_TIMEOUT} s:\n{block.code}")
        assert proc.returncode == block.exit_code, (
            f"{where}: exit code {proc.returncode}, the document says {block.exit_code}\n{block.code}\n"
            f"--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-3000:]}")
