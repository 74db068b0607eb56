"""``--executor`` and ``--address`` at the edge: the choices, and Ray missing (no cluster needed).

The Ray executor itself runs in tests/comparator/test_ray_executor.py, on a local cluster.
"""

from __future__ import annotations

import socket
import subprocess

import pytest

from comparator import compare
from comparator.errors import ClusterError, OptionError
from comparator.options import CompareOptions
from tests.conftest import require_engine
from tests.helpers.example_runs import DUMPCMP
from tests.helpers.procs import clean_env


@pytest.mark.parametrize(("values", "message"), [
    ({"executor": "slurm"}, "unknown executor 'slurm'; valid executors: local, ray"),
    ({"address": "head:6379"}, "--address head:6379: names a Ray cluster, for --executor ray only"),
    ({"executor": "ray", "jobs": 4}, "--jobs 4: for the local executor only; with --executor ray each node runs as "
                                     "many tasks as Ray gives it CPUs"),
])
def test_executor_options_are_checked(values, message):
    with pytest.raises(OptionError) as raised:
        CompareOptions.from_values(**values)
    assert str(raised.value) == message


def _without_ray(tmp_path) -> dict[str, str]:
    """An environment where ``import ray`` fails as it does where Ray is not installed."""
    shadow = tmp_path / "no_ray" / "ray"
    shadow.mkdir(parents=True, exist_ok=True)
    (shadow / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'ray'\", name='ray')\n")
    env = clean_env()
    env["PYTHONPATH"] = f"{tmp_path / 'no_ray'}:{env['PYTHONPATH']}"
    return env


def test_without_ray_the_ray_executor_is_one_line_saying_what_to_install(tmp_path, runs):
    proc = subprocess.run([*DUMPCMP, "compare", str(runs["tp1"]), str(runs["tp2"]), "--executor", "ray"],
                          env=_without_ray(tmp_path), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "dumpcmp: error: --executor ray needs Ray, which is not installed: pip install 'dumpcmp[ray]'"]
    # The local executor does not need it.
    local = subprocess.run([*DUMPCMP, "compare", str(runs["tp1"]), str(runs["tp2"])], env=_without_ray(tmp_path),
                           capture_output=True, text=True, timeout=120)
    assert local.returncode == 0, local.stderr


def test_the_library_raises_the_typed_error_before_reading_the_runs(tmp_path, monkeypatch):
    """The options say it, before a run is opened: finding Ray takes no import."""
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` meets where Ray is not installed
    with pytest.raises(ClusterError, match=r"pip install 'dumpcmp\[ray\]'"):
        compare(tmp_path / "missing", tmp_path / "also-missing", executor="ray")


@pytest.mark.engine
def test_an_address_where_nothing_answers_is_one_line_at_once(runs):
    require_engine("ray", "pip install 'dumpcmp[ray]'")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{sock.getsockname()[1]}"  # bound, not listening: nothing answers
        with pytest.raises(ClusterError) as raised:
            compare(runs["tp1"], runs["tp2"], executor="ray", address=address)
    assert str(raised.value).startswith(f"cannot connect to the Ray cluster at {address}: nothing answers there (")
