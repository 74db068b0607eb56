"""Ready-made patch files, one folder per engine, the same file names in each.

``resolve_patch_path("vllm/qwen3_moe")`` gives the preset's path, so ``dumpcmp run
--patch vllm/qwen3_moe`` works without knowing where dumpcmp is installed.
"""

from __future__ import annotations

import os

from patches.errors import PatchFileError

PRESET_DIR = os.path.dirname(os.path.abspath(__file__))


def list_presets() -> list[str]:
    """``engine/name`` of every preset, sorted."""
    found: list[str] = []
    for engine in sorted(os.listdir(PRESET_DIR)):
        folder = os.path.join(PRESET_DIR, engine)
        if os.path.isdir(folder) and not engine.startswith(("_", ".")):
            found.extend(f"{engine}/{name[:-5]}" for name in sorted(os.listdir(folder)) if name.endswith(".yaml"))
    return found


def resolve_patch_path(name: str) -> str:
    """A patch file path as given, or a preset's path for ``engine/name``."""
    if os.path.exists(name):
        return os.path.abspath(name)
    stem = name[:-5] if name.endswith(".yaml") else name
    candidate = os.path.join(PRESET_DIR, *stem.split("/")) + ".yaml"
    if "/" in stem and os.path.isfile(candidate):
        return candidate
    raise PatchFileError(
        f"patch file {name} does not exist and is not a preset; presets: {', '.join(list_presets()) or 'none'}"
    )
