"""``dumpcmp run``: every process of a command applies the patches and dumps into one run."""

import os
import socket
import subprocess
import sys
import textwrap

import pytest

from dumper.reader import open_run
from tests.helpers.procs import REPO, clean_env

DUMPCMP = [sys.executable, "-c", "from comparator.cli import main; main()"]


def dumpcmp(*args, cwd, timeout=240, **env):
    """Run the dumpcmp CLI in a fresh interpreter with ``cwd`` (the test's project) importable."""
    settings = {"PYTHONPATH": str(cwd), "OMP_NUM_THREADS": "1", **env}
    settings["PYTHONPATH"] = os.pathsep.join([settings["PYTHONPATH"], str(REPO)])
    return subprocess.run([*DUMPCMP, *args], env=clean_env(**settings), cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture
def project(tmp_path):
    """A tiny 'engine' module, a patch file for it, and a script using it, in tmp_path."""
    (tmp_path / "tiny_engine.py").write_text(textwrap.dedent("""
        import torch

        class Layer:
            def __init__(self, layer_id):
                self.layer_id = layer_id

            def forward(self, x):
                y = x * 2
                return y + 1
    """))
    (tmp_path / "tiny.yaml").write_text(textwrap.dedent("""
        patches:
          - target: tiny_engine.Layer.forward
            tags: {layer: self.layer_id}
            step: true
            edits:
              - match: "y = x * 2"
                append:
                  - dump: y
                    dims: "t"
    """))
    return tmp_path


def test_spawn_and_fork_children_dump_into_the_same_run(project):
    (project / "script.py").write_text(textwrap.dedent("""
        import multiprocessing as mp
        import sys
        import torch

        def work(layer_id):
            import tiny_engine
            tiny_engine.Layer(layer_id).forward(torch.ones(3))

        if __name__ == "__main__":
            for method, layer_id in (("spawn", 1), ("fork", 2)):
                child = mp.get_context(method).Process(target=work, args=(layer_id,))
                child.start()
                child.join()
                assert child.exitcode == 0, method
            work(0)
            sys.exit(3)
    """))
    result = dumpcmp("run", "--patch", "tiny.yaml", "--dir", "run", "--", sys.executable, "script.py", cwd=project)
    assert result.returncode == 3, result.stderr
    run_dir = project / "run"
    rank_dirs = sorted(p.name for p in run_dir.iterdir() if p.is_dir())
    assert len(rank_dirs) == 3  # rank-00000 and two proc-<pid> (every process is rank 0)
    with open_run(run_dir) as run:
        layers = sorted(record.tags["layer"] for record in run.records)
        assert layers == [0, 1, 2]
        assert {record.name for record in run.records} == {"y"}
        assert {record.dims for record in run.records} == {"t"}
        assert {record.step for record in run.records} == {0}


@pytest.mark.slow
def test_torchrun_two_gloo_ranks_dump_under_their_ranks(project):
    (project / "script.py").write_text(textwrap.dedent("""
        import torch
        import torch.distributed as dist
        import tiny_engine

        dist.init_process_group("gloo")
        layer = tiny_engine.Layer(0)
        for _ in range(2):
            y = layer.forward(torch.full((2,), float(dist.get_rank())))
            dist.all_reduce(y)
        dist.destroy_process_group()
    """))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = dumpcmp("run", "--patch", "tiny.yaml", "--dir", "run", "--", sys.executable, "-m",
                     "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
                     "--master-port", str(port), "script.py", cwd=project, timeout=300)
    assert result.returncode == 0, result.stderr
    with open_run(project / "run") as run:
        assert sorted(rank.rank for rank in run.ranks) == [0, 1]
        per_rank = {}
        for record in run.records:
            per_rank.setdefault(record.rank, []).append((record.step, record.name))
        assert per_rank == {0: [(0, "y"), (1, "y")], 1: [(0, "y"), (1, "y")]}
        first = [r for r in run.records if r.rank == 1 and r.step == 0][0]
        assert run.load(first).tolist() == [2.0, 2.0]


def test_bad_inputs_exit_2_before_starting_the_command(project):
    marker = project / "started"
    command = ["--", sys.executable, "-c", f"open({str(marker)!r}, 'w')"]
    bad_filter = dumpcmp("run", "--filter", "step=x", "--dir", "r1", *command, cwd=project)
    assert bad_filter.returncode == 2
    assert bad_filter.stderr.strip() == "dumpcmp: error: 'x' in 'x' is not an integer"
    missing = dumpcmp("run", "--patch", "nope.yaml", "--dir", "r2", *command, cwd=project)
    assert missing.returncode == 2
    assert missing.stderr.startswith("dumpcmp: error: patch file nope.yaml does not exist and is not a preset")
    (project / "busy").mkdir()
    (project / "busy" / "notes.txt").write_text("mine")
    busy = dumpcmp("run", "--dir", "busy", *command, cwd=project)
    assert busy.returncode == 2
    assert "is not empty; choose a new directory or pass --overwrite" in busy.stderr
    refused = dumpcmp("run", "--dir", "busy", "--overwrite", *command, cwd=project)
    assert refused.returncode == 2 and "holds 'notes.txt'; refusing to clear it" in refused.stderr
    (project / "tiny.yaml").write_text("patches:\n  - target: tiny_engine.Layer.forward\n    edits:\n"
                                       "      - match: 'y = x * 3'\n        append: pass\n")
    anchor = dumpcmp("run", "--patch", "tiny.yaml", "--dir", "r3", *command, cwd=project)
    assert anchor.returncode == 2 and "the match text is not in Layer.forward" in anchor.stderr
    assert not marker.exists()


def test_overwrite_replaces_an_earlier_run(project):
    code = "import torch, tiny_engine; tiny_engine.Layer(0).forward(torch.ones(1))"
    first = dumpcmp("run", "--patch", "tiny.yaml", "--dir", "run", "--", sys.executable, "-c", code, cwd=project)
    assert first.returncode == 0, first.stderr
    again = dumpcmp("run", "--patch", "tiny.yaml", "--dir", "run", "--overwrite", "--mode", "stats", "--",
                    sys.executable, "-c", code, cwd=project)
    assert again.returncode == 0, again.stderr
    with open_run(project / "run") as run:
        assert len(run.records) == 1
        assert run.mode == "stats"


def test_a_patch_failing_inside_a_worker_fails_it_loudly(project):
    # --no-check skips the up-front check, so the anchor fails where the module is imported.
    (project / "tiny.yaml").write_text("patches:\n  - target: tiny_engine.Layer.forward\n    edits:\n"
                                       "      - match: 'y = x * 3'\n        append: pass\n")
    result = dumpcmp("run", "--no-check", "--patch", "tiny.yaml", "--dir", "run", "--",
                     sys.executable, "-c", "import tiny_engine", cwd=project)
    assert result.returncode == 1
    assert "dumpcmp: error: patching module tiny_engine on import failed:" in result.stderr
    (project / "tiny.yaml").write_text("patches:\n  - target: not_installed_anywhere.f\n    step: true\n")
    result = dumpcmp("run", "--no-check", "--patch", "tiny.yaml", "--dir", "run2", "--",
                     sys.executable, "-c", "print('never')", cwd=project)
    assert result.returncode == 2
    assert "never" not in result.stdout
    assert "dumpcmp: error: target 'not_installed_anywhere.f': no module named 'not_installed_anywhere'" in result.stderr


def test_manual_bootstrap_without_the_cli(project):
    site_dir = subprocess.run([sys.executable, "-m", "patches.bootstrap"], env=clean_env(), capture_output=True,
                              text=True, check=True).stdout.strip()
    env = clean_env(DUMPCMP_DIR=str(project / "run"), DUMPCMP_PATCH=str(project / "tiny.yaml"))
    env["PYTHONPATH"] = os.pathsep.join([site_dir, str(project), env["PYTHONPATH"]])
    subprocess.run([sys.executable, "-c", "import torch, tiny_engine; tiny_engine.Layer(7).forward(torch.ones(1))"],
                   env=env, cwd=project, check=True, timeout=120)
    with open_run(project / "run") as run:
        assert [(r.name, r.tags["layer"]) for r in run.records] == [("y", 7)]


def test_the_bootstrap_runs_the_environment_s_own_sitecustomize(project, tmp_path):
    other = tmp_path / "other_site"
    other.mkdir()
    (other / "sitecustomize.py").write_text("import os\nos.environ['OTHER_SITECUSTOMIZE'] = 'ran'\n")
    result = dumpcmp("run", "--dir", "run", "--", sys.executable, "-c",
                     "import os; print(os.environ.get('OTHER_SITECUSTOMIZE'))",
                     cwd=project, PYTHONPATH=os.pathsep.join([str(project), str(other)]))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ran"
