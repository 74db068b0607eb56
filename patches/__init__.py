"""The source patcher: inject dump calls into engine code from YAML, in every process.

    from patches import apply_patches
    with apply_patches(["patches/presets/vllm/qwen3_moe.yaml"]):
        ...                       # patched now and whenever a target module is imported

``check_patch_files`` validates files against the installed source without importing
the engine; :mod:`patches.bootstrap` applies ``DUMPCMP_PATCH`` in every process.
The YAML schema is described in :mod:`patches.spec` and docs/patches.md.
"""

from patches.apply import Patcher, apply_patches
from patches.check import FileCheck, TargetCheck, check_patch_file, check_patch_files
from patches.errors import PatchAnchorError, PatchApplyError, PatchError, PatchFileError, PatchTargetError
from patches.presets import list_presets, resolve_patch_path
from patches.spec import PatchFile, load_patch_file, parse_patch_text

__all__ = [
    "FileCheck",
    "PatchAnchorError",
    "PatchApplyError",
    "PatchError",
    "PatchFile",
    "PatchFileError",
    "PatchTargetError",
    "Patcher",
    "TargetCheck",
    "apply_patches",
    "check_patch_file",
    "check_patch_files",
    "list_presets",
    "load_patch_file",
    "parse_patch_text",
    "resolve_patch_path",
]
