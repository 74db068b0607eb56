"""Generated dump sites without their guard (tests compare the call itself).

A ``dump:`` entry becomes ``dumper.enabled and dumper.dump_site(SITE, lambda: CALL)``
(``graft: true``: ``X = dumper.graft_site(SITE, lambda: CALL, X) if dumper.enabled else X``),
so that nothing is evaluated while dumping is off; :func:`unguarded` gives back CALL.
"""

from __future__ import annotations

import re

_DUMP = re.compile(r"dumper\.enabled and dumper\.dump_site\('[^']*', lambda: (?P<call>.*)\)\Z")
_GRAFT = re.compile(r"(?P<target>.*?) = dumper\.graft_site\('[^']*', lambda: (?P<call>.*), (?P=target)\) "
                    r"if dumper\.enabled else (?P=target)\Z")


def unguarded(text: str) -> str:
    found = _DUMP.match(text)
    if found:
        return found["call"]
    found = _GRAFT.match(text)
    if found:
        return f"{found['target']} = {found['call']}"
    return text
