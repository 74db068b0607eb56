"""docs/errors.md lists every user-facing error message the code can raise, and no other."""

from __future__ import annotations

from tests.tools.error_catalogue import CATALOGUE, collect, documented_modules, refresh


def test_catalogue_matches_the_code():
    text = CATALOGUE.read_text(encoding="utf-8")
    catalogue = collect()
    missing = sorted(set(catalogue) - set(documented_modules(text)))
    assert not missing, f"modules raising user errors without a section in docs/errors.md: {missing}"
    assert refresh(text, catalogue) == text, (
        "docs/errors.md is out of date with the code's error messages; run "
        "`python -m tests.tools.error_catalogue --write` and explain any new module's errors"
    )


def test_every_section_explains_its_errors():
    text = CATALOGUE.read_text(encoding="utf-8")
    for section in text.split("\n## ")[1:]:
        module, _, body = section.partition("\n")
        prose = body.split("<!-- messages:")[0].strip()
        assert len(prose) > 40 and "TODO" not in prose, f"docs/errors.md: {module} needs its cause and remedy"
