"""What the patcher's injected code calls: guarded dump sites, graft sites, site tags and dims
chosen from the engine's state.

Functions of the owning :class:`dumper.api.Dumper` (split from dumper/api.py to keep it small).
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING, Any, Callable


from dumper.sticky_tags import StickyTags, Suppressed

if TYPE_CHECKING:
    from dumper.api import Dumper

log = logging.getLogger("dumper.api")


def dump_site(owner: "Dumper", site: str, thunk: Callable[[], Any]) -> None:
    if not owner.enabled or site in owner._sites_off:
        return
    try:
        thunk()
    except Exception as exc:  # noqa: BLE001 - the engine's object lacks what the preset expects
        owner._site_failed(site, exc)



def graft_site(owner: "Dumper", site: str, thunk: Callable[[], Any], fallback: Any) -> Any:
    if not owner.enabled or site in owner._sites_off:
        return fallback
    try:
        return thunk()
    except Exception as exc:  # noqa: BLE001 - the engine goes on with its own value
        owner._site_failed(site, exc)
        return fallback



def site_tags(owner: "Dumper", site: str, thunk: Callable[[], dict[str, Any]]) -> contextlib.AbstractContextManager[Any]:
    if not owner.enabled or site in owner._sites_off:
        return contextlib.nullcontext()
    try:
        tags = thunk()
    except Exception as exc:  # noqa: BLE001 - as dump_site
        owner._site_failed(site, exc)
        return Suppressed(owner)  # records without their tags would be mismatched: none at all
    return StickyTags(owner, tags)



def site_failed(owner: "Dumper", site: str, exc: BaseException) -> None:
    owner._sites_off.add(site)
    owner._warn_once(f"site:{site}", f"dumpcmp: patch site {site} turned off: evaluating it raised "
                    f"{type(exc).__name__}: {exc} (the engine continues; fix the expression in the patch file)")



def dims_when(owner: "Dumper", root: Any, path: str, then: str, otherwise: str) -> str | None:
    """``then`` when the attribute ``path`` of ``root`` is true, else ``otherwise``.

    Patch files choose a dump's dims from the engine's state this way
    (``dims: {when: owner._fused_output_is_reduced, then: ..., else: ...}``,
    docs/patches.md): a plain attribute lookup, nothing evaluated. A lookup that
    fails warns once and gives no dims, so the comparator asks for them rather than
    guessing a layout.
    """
    value = root
    try:
        for part in path.split(".") if path else ():
            value = getattr(value, part)
        return then if value else otherwise
    except Exception as exc:  # noqa: BLE001 - never break the engine
        owner._warn_once(f"dims-when:{path}", f"dumpcmp: cannot read {path or 'the value'} to choose dims "
                        f"({type(exc).__name__}: {exc}); the dump has no dims annotation")
        return None
