import importlib.util
import os
import sys
import textwrap

import pytest

ENGINE_SOURCE = '''\
import functools
from collections import OrderedDict

dumper = "the engine's own dumper"   # patched code must not clobber it


def traced(function):
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        return function(*args, **kwargs)
    return wrapper


class Block:
    def __init__(self, layer_id):
        self.layer_id = layer_id
        self.__scale = 2

    @traced
    def forward(self, x: "NotImportedAnywhere" = None) -> "AlsoMissing":
        """Doubles, then adds one."""
        y = x * self.__scale
        z = y + 1
        if z > 100:
            return -1
        return z

    def reduce(self, values):
        total = 0
        for value in values:
            total = total + value
        return total


class Child(Block):
    def forward(self, x):
        return super().forward(x) + 1000


def make_counter():
    count = 0

    def bump(step):
        nonlocal count
        count = count + step
        return count
    return bump


bump = make_counter()


def log_only(x):
    print(x)
'''


@pytest.fixture
def engine(tmp_path, monkeypatch):
    """A fresh importable module ``fake_engine_<n>`` (its name is returned), removed afterwards."""
    name = f"fake_engine_{len(os.listdir(tmp_path))}_{os.getpid()}"
    (tmp_path / f"{name}.py").write_text(ENGINE_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    yield name
    sys.modules.pop(name, None)


@pytest.fixture
def write_patch(tmp_path):
    """``write_patch(text, name="p.yaml")`` writes a dedented patch file and returns its path."""
    def write(text: str, name: str = "p.yaml") -> str:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text))
        return str(path)
    return write


def require_source(package: str):
    """Skip when ``package``'s source is not installed; FAIL under DUMPCMP_REQUIRE_ENGINES=1 (CI).

    Unlike require_engine, nothing is imported: ``pip install --no-deps sglang`` gives
    the source without the dependencies that importing it needs.
    """
    if importlib.util.find_spec(package) is None:
        message = f"the {package} source is not installed"
        if os.environ.get("DUMPCMP_REQUIRE_ENGINES") == "1":
            pytest.fail(message + " and DUMPCMP_REQUIRE_ENGINES=1")
        pytest.skip(message)
