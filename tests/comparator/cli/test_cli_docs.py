"""docs/cli.md is generated from the typer app: it must match what the app says today."""

from comparator.cli.docs import DOC_PATH, render_cli_markdown


def test_cli_reference_is_up_to_date():
    expected = render_cli_markdown()
    found = DOC_PATH.read_text(encoding="utf-8") if DOC_PATH.exists() else ""
    assert found == expected, "docs/cli.md is out of date: regenerate it with `python -m comparator.cli.docs --write`"


def test_cli_reference_covers_every_command_and_option():
    text = render_cli_markdown()
    for command in ("compare", "ls", "run", "show", "patch check"):
        assert f"## `dumpcmp {command}`" in text
    for option in ("--format", "--thresholds", "--allow-fail", "--plot", "--baseline", "--mode", "--filter"):
        assert f"`{option}`" in text
    assert "`table` \\| `json` \\| `junit` \\| `html`" in text
    assert "3 nothing was compared" in text
