"""Every transcript in the docs is what the tool prints today (tests/tools/transcripts.py)."""

from __future__ import annotations

import pytest

from tests.tools.transcripts import DOCUMENTS, normalise, run_transcript, transcripts

ALL = [t for document in DOCUMENTS for t in transcripts(document)]


def test_the_readme_shows_the_demo_as_a_transcript():
    assert any(t.document.name == "README.md" and t.command == "dumpcmp demo" for t in ALL)


@pytest.mark.slow
@pytest.mark.parametrize("transcript", ALL, ids=lambda t: f"{t.document.name}:{t.line}")
def test_transcript_is_what_the_tool_prints(transcript):
    printed = run_transcript(transcript.command)
    assert normalise(printed) == normalise(transcript.output), (
        f"{transcript.document.name}:{transcript.line} is stale; run python -m tests.tools.transcripts --write")
