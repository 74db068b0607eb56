import os

import pytest


def require_engine(module: str, why: str = ""):
    """Import an engine for a test; skip without it, but FAIL under DUMPCMP_REQUIRE_ENGINES=1 (CI)."""
    try:
        return __import__(module)
    except Exception as exc:  # noqa: BLE001 - engines fail to import in many ways
        message = f"{module} is not importable ({exc}){': ' + why if why else ''}"
        if os.environ.get("DUMPCMP_REQUIRE_ENGINES") == "1":
            pytest.fail(message + " and DUMPCMP_REQUIRE_ENGINES=1")
        pytest.skip(message)


@pytest.fixture(autouse=True)
def _no_dumpcmp_env(monkeypatch):
    """Tests never inherit DUMPCMP_* from the shell (CI sets DUMPCMP_REQUIRE_ENGINES only)."""
    for key in list(os.environ):
        if key.startswith("DUMPCMP_") and key != "DUMPCMP_REQUIRE_ENGINES":
            monkeypatch.delenv(key)
