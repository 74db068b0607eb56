"""User text (names, tags, paths, messages from runs) made safe for every output.

Names and tags come from other people's runs: they may hold rich markup (``x[/]``),
terminal escape sequences, control characters, bidi overrides or lone surrogates
(from undecodable file names). :func:`printable` shows every such character as a
Python escape (``\\x1b``, ``\\u202e``, ``\\udcff``), so that the text stays one
visible line, encodes as UTF-8, and is legal in XML 1.0; :func:`markup_safe` also
escapes rich markup for strings that rich parses.
"""

from __future__ import annotations

import unicodedata


def _visible(char: str) -> bool:
    if char in "\t\n":
        return True
    category = unicodedata.category(char)
    # Cc: C0/C1 controls, ESC, DEL; Cs: lone surrogates; Cf: format characters
    # (bidi overrides, zero-width joiners) that can hide or reorder what a name shows.
    return category not in ("Cc", "Cs", "Cf") and char not in "\ufffe\uffff"


def printable(text: object) -> str:
    text = str(text)
    if text.isprintable():
        return text
    return "".join(c if _visible(c) else c.encode("unicode_escape", "backslashreplace").decode("ascii")
                   if ord(c) < 0x10000 else f"\\U{ord(c):08x}" for c in text)


def one_line(text: object) -> str:
    """:func:`printable`, with newlines and tabs escaped too (cells, titles, attributes)."""
    return printable(text).replace("\n", "\\n").replace("\t", "\\t")


def markup_safe(text: object) -> str:
    """For a string that rich parses as markup: printable, and ``[`` escaped."""
    from rich.markup import escape

    return escape(printable(text))
