"""dumpcmp's bootstrap, run by Python at the start of every process under ``dumpcmp run``.

This folder is put first on PYTHONPATH. It runs any other ``sitecustomize`` the
environment has, then, when DUMPCMP_PATCH is set, installs the patch import hook.
A patch that cannot be applied stops the process with exit code 2: a worker must
not go on silently without its dumps.
"""

import os
import sys


def _run_next_sitecustomize() -> None:
    import importlib.machinery
    import importlib.util

    here = os.path.dirname(os.path.abspath(__file__))
    rest = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)


def _install_patches() -> None:
    try:
        from patches.bootstrap import install_from_env
    except ImportError as exc:
        print(f"dumpcmp: error: DUMPCMP_PATCH is set but dumpcmp is not importable in {sys.executable} ({exc}); "
              "install dumpcmp in the engine's environment", file=sys.stderr, flush=True)
        os._exit(2)
    try:
        install_from_env()
    except Exception as exc:  # noqa: BLE001 - any failure must stop this process loudly
        from dumper.errors import DumpcmpError

        if not isinstance(exc, DumpcmpError):
            import traceback

            traceback.print_exc()
        print(f"dumpcmp: error: {exc}", file=sys.stderr, flush=True)
        os._exit(2)


_run_next_sitecustomize()
if os.environ.get("DUMPCMP_PATCH"):
    _install_patches()
