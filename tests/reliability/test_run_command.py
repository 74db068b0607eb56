"""``dumpcmp run`` as a hostile or unlucky user drives it (issue 21).

``--overwrite`` may remove only what a dumpcmp run wrote; a SIGTERM to ``dumpcmp run``
reaches the command's whole process group and dumpcmp waits for it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from dumper.errors import ConfigError
from patches.run_dir import foreign_entry, prepare_directory
from tests.helpers.procs import clean_env, dump_run

DUMPCMP = [sys.executable, "-m", "comparator.cli"]


def _user_project(path):
    (path / "src").mkdir(parents=True)
    (path / "README").write_text("my notes")
    (path / "src" / "model.py").write_text("print('precious')")
    return path


@pytest.mark.parametrize("extra", ["run.json", "results.tmp", "rank-00000/notes.txt", "observer/x.py", "rank-link"])
def test_overwrite_refuses_a_directory_holding_anything_a_run_did_not_write(tmp_path, extra):
    run = tmp_path / "run"
    dump_run(run, "import torch\nfrom dumper import dumper\ndumper.dump('x', torch.ones(2))\n")
    if extra == "run.json":
        (run / "run.json").write_text(json.dumps({"name": "another tool's run.json"}))
    elif extra == "rank-link":
        (run / "rank-00001").symlink_to(tmp_path)
    else:
        (run / extra).parent.mkdir(exist_ok=True)
        (run / extra).write_text("mine")
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    with pytest.raises(ConfigError, match="removes only what a dumpcmp run wrote.*refusing to clear it"):
        prepare_directory(str(run), overwrite=True)
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before


def test_overwrite_of_a_user_directory_through_the_cli_removes_nothing(tmp_path):
    project = _user_project(tmp_path / "project")
    (project / "run.json").write_text("{}")
    proc = subprocess.run([*DUMPCMP, "run", "--dir", str(project), "--overwrite", "--", sys.executable, "-c", "pass"],
                          env=clean_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dumpcmp: error: --overwrite removes only"), proc.stderr
    assert (project / "README").read_text() == "my notes"
    assert (project / "src" / "model.py").exists() and (project / "run.json").exists()


def test_overwrite_still_replaces_a_real_run(tmp_path):
    run = tmp_path / "run"
    dump_run(run, "import torch\nfrom dumper import dumper\ndumper.dump('x', torch.ones(2))\n")
    assert foreign_entry(str(run)) is None
    prepare_directory(str(run), overwrite=True)
    assert os.listdir(run) == []


def _running(pid: int) -> bool:
    """Alive and not a zombie (an orphan killed here waits for a reaper that may be slow)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as handle:
                state = handle.read().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return False
        if state in ("Z", "X"):
            return False
        time.sleep(0.1)
    return True


def test_sigterm_to_dumpcmp_run_reaches_the_command_and_its_children(tmp_path):
    marker = tmp_path / "pids"
    # The command starts a grandchild in its group, as an engine starts workers.
    script = (
        "import os, subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
        f"open({str(marker)!r}, 'w').write(f'{{os.getpid()}} {{child.pid}}')\n"
        "time.sleep(600)\n"
    )
    proc = subprocess.Popen([*DUMPCMP, "run", "--dir", str(tmp_path / "run"), "--", sys.executable, "-c", script],
                            env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (marker.exists() and " " in marker.read_text()):
            assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
            time.sleep(0.1)
        pids = [int(p) for p in marker.read_text().split()]
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    alive = [pid for pid in pids if _running(pid)]
    for pid in alive:  # leave nothing behind, even when the test fails
        os.kill(pid, signal.SIGKILL)
    assert not alive, f"still running after SIGTERM to dumpcmp run: {alive}\n{err}"
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "exit code 143" in err
