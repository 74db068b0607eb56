"""Run the example engine for tests, paying for ``import torch`` once per batch of runs.

``run_jobs`` starts ONE fresh interpreter that runs every job in turn; multi-rank jobs
fork their ranks from it (as the engine's own launcher does on the CPU), so a job costs
its compute, not a torch import per rank. A job either saves every request's logits
through the engine's launcher (``--save-logits``), or captures, per rank, the output of
the first call (the prefill) of chosen submodules with forward hooks: the engine has
no dump calls of its own.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import socket
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

from tests.helpers.procs import clean_env


@dataclass(frozen=True, kw_only=True)
class Job:
    name: str
    args: str
    capture: tuple[str, ...] = field(default_factory=tuple)


def run_jobs(jobs: list[Job], out_dir: Path, *, timeout: float = 300) -> dict[str, list[dict]]:
    """``{job name: [per-rank tensors]}``; a logits job has one entry (rank 0's saved file)."""
    from safetensors.torch import load_file

    out_dir.mkdir(parents=True, exist_ok=True)
    spec = json.dumps([asdict(job) for job in jobs])
    proc = subprocess.run([sys.executable, "-m", "tests.examples.engine_runs", spec, str(out_dir)],
                          env=clean_env(), capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"engine jobs failed with {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    results: dict[str, list[dict]] = {}
    for job in jobs:
        files = sorted((out_dir / job.name).glob("rank*.safetensors"))
        results[job.name] = [load_file(str(out_dir / job.name / f"rank{rank}.safetensors")) for rank in range(len(files))]
    return results


def run_cli(args: list[str], *, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "examples.moe_engine", *args], env=env or clean_env(),
                          capture_output=True, text=True, timeout=timeout)


@contextlib.contextmanager
def capture_first_outputs(model, names: tuple[str, ...]) -> Iterator[dict]:
    """``{qualified name: fp32 CPU copy of its first output}`` for the named submodules of ``model``."""
    captured: dict = {}
    modules = dict(model.named_modules())
    handles = []
    for name in names:
        def hook(module, inputs, output, name=name):
            captured.setdefault(name, output.detach().float().cpu().clone())
        handles.append(modules[name].register_forward_hook(hook))
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


# ----------------------------------------------------------- the child interpreter
def _capture_rank(rank: int, config, names: tuple[str, ...], job_dir: str, port: int) -> None:
    from safetensors.torch import save_file

    from examples.moe_engine.launch import open_worker

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(config.world_size), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    with open_worker(config, rank=rank, local_rank=rank) as engine:
        with capture_first_outputs(engine.model, names) as captured:
            results = engine.generate()
    tensors = dict(captured)
    tensors.update({f"logits.req{result.req_id}": result.logits for result in results})
    save_file(tensors, os.path.join(job_dir, f"rank{rank}.safetensors"))


def _run_job(job: Job, out_dir: str) -> None:
    import torch.multiprocessing as mp

    from examples.moe_engine.__main__ import build_parser, config_from_args
    from examples.moe_engine.launch import run

    job_dir = os.path.join(out_dir, job.name)
    os.makedirs(job_dir, exist_ok=True)
    config = config_from_args(build_parser().parse_args(shlex.split(job.args)))
    if not job.capture:
        with open(os.devnull, "w") as devnull:
            run(config.replace(save_logits=os.path.join(job_dir, "rank0.safetensors")), out=devnull)
        return
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    if config.world_size == 1:
        _capture_rank(0, config, job.capture, job_dir, port)
        return
    mp.start_processes(_capture_rank, args=(config, job.capture, job_dir, port), nprocs=config.world_size,
                       start_method="fork")


def _main(spec: str, out_dir: str) -> None:
    jobs = [Job(name=item["name"], args=item["args"], capture=tuple(item["capture"])) for item in json.loads(spec)]
    # NOTE: 1-rank jobs compute in this process; run them last, so that every fork
    # happens before this process has run any torch kernel (and started thread pools).
    for job in sorted(jobs, key=lambda job: _world_size(job.args) == 1):
        _run_job(job, out_dir)


def _world_size(args: str) -> int:
    from examples.moe_engine.__main__ import build_parser, config_from_args

    return config_from_args(build_parser().parse_args(shlex.split(args))).world_size


if __name__ == "__main__":
    _main(sys.argv[1], sys.argv[2])
