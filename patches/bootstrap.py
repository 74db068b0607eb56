"""Apply DUMPCMP_PATCH in every Python process of a run.

``dumpcmp run`` puts :data:`SITE_DIR` first on PYTHONPATH; Python then imports its
``sitecustomize.py`` at start-up in the command and in every process it starts
(multiprocessing spawn, torchrun workers, subprocesses), and that calls
:func:`install_from_env`. Fork children inherit the patched code and the hook.

Without the CLI::

    export DUMPCMP_DIR=/tmp/run DUMPCMP_PATCH=my_patches.yaml
    export PYTHONPATH="$(python -m patches.bootstrap)${PYTHONPATH:+:$PYTHONPATH}"
    python serve.py ...
"""

from __future__ import annotations

import os
from typing import Mapping

PATCH_ENV = "DUMPCMP_PATCH"
SITE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_site")

_installed = None


def patch_paths_from_env(environ: Mapping[str, str] | None = None) -> list[str]:
    value = (os.environ if environ is None else environ).get(PATCH_ENV, "")
    return [path for path in value.split(os.pathsep) if path.strip()]


def install_from_env(environ: Mapping[str, str] | None = None):
    """Install the patches named in DUMPCMP_PATCH (once per process); returns the Patcher or None."""
    global _installed
    paths = patch_paths_from_env(environ)
    if not paths:
        return None
    if _installed is None:
        from patches.apply import Patcher

        _installed = Patcher(paths).install()
    return _installed


def installed_fingerprint() -> str:
    """Identifies this process's patched code: a hash of the installed patch files and the dumper's tracing code.

    NOTE: engines that cache compiled code on disk key it by their config and source
    files (vLLM's AOT compile cache); injected code is in neither, so without this a run
    with other patches, or with none, would load another run's compiled model. Presets
    add this to such a cache key.
    """
    import hashlib

    if _installed is None:
        return "dumpcmp-patches:none"
    import dumper.api

    # What a dump call traces into (dumper/compiled.py, through dumper/api.py) is part of
    # the compiled model too: a dumper upgrade must not load an older one's graph.
    dumper_dir = os.path.dirname(os.path.abspath(dumper.api.__file__))
    sources = [os.path.join(dumper_dir, "api.py"), os.path.join(dumper_dir, "compiled.py")]
    digest = hashlib.sha256()
    for path in [*(patch_file.path for patch_file in _installed.files), *sources]:
        digest.update(path.encode())
        try:
            with open(path, "rb") as handle:
                digest.update(handle.read())
        except OSError:
            digest.update(b"?")
    return f"dumpcmp-patches:{digest.hexdigest()[:16]}"


def python_path_with_bootstrap(existing: str | None) -> str:
    """PYTHONPATH with the bootstrap folder first (and only once)."""
    parts = [p for p in (existing or "").split(os.pathsep) if p and os.path.abspath(p) != SITE_DIR]
    return os.pathsep.join([SITE_DIR, *parts])


if __name__ == "__main__":
    print(SITE_DIR)
