"""Start the engine's processes: in this process, under torchrun, or as forked/spawned workers.

Every worker initialises torch.distributed (gloo on the CPU, NCCL on CUDA), tells the
dumper where it sits (``dumper.set_parallel``), builds the engine and generates; rank 0
gathers every request's tokens and logits, prints them and optionally saves them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import socket
import sys
import traceback
from typing import Iterator, TextIO

import torch
import torch.distributed as dist

from dumper import dumper
from examples.moe_engine.config import EngineConfig, EngineConfigError
from examples.moe_engine.engine import Engine, RequestResult
from examples.moe_engine.parallel import Comm, ParallelLayout


class WorkerFailed(RuntimeError):
    """A worker process raised or died; the message holds its error."""


def run(config: EngineConfig, *, out: TextIO | None = None) -> list[RequestResult] | None:
    """Run the engine; every request's results where this process is rank 0, else ``None``.

    Under torchrun (RANK and WORLD_SIZE set) this process is one worker; otherwise a
    world of one runs here, and a larger world in ``config.world_size`` new processes
    (forked on the CPU, where it saves every worker importing torch again; spawned for CUDA).
    """
    torchrun = torchrun_env()
    if torchrun is not None:
        rank, world_size, local_rank = torchrun
        if world_size != config.world_size:
            raise EngineConfigError(
                f"torchrun started {world_size} processes but tp*ep={config.world_size}; "
                f"use torchrun --nproc-per-node {config.world_size}"
            )
        return run_worker(config, rank=rank, local_rank=local_rank, out=out)
    check_devices(config)
    if config.world_size == 1:
        return run_worker(config, rank=0, local_rank=0, out=out)
    launch_workers(config)
    return None


def torchrun_env() -> tuple[int, int, int] | None:
    """(rank, world size, local rank) when a launcher such as torchrun started this process."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ or "MASTER_ADDR" not in os.environ:
        return None
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    return rank, world_size, int(os.environ.get("LOCAL_RANK", rank))


def check_devices(config: EngineConfig) -> None:
    if config.device != "cuda":
        return
    if not torch.cuda.is_available():
        raise EngineConfigError("--device cuda, but torch sees no CUDA device; use --device cpu")
    if torch.cuda.device_count() < config.world_size:
        raise EngineConfigError(
            f"tp*ep={config.world_size} processes need as many GPUs; torch sees {torch.cuda.device_count()}"
        )


def launch_workers(config: EngineConfig) -> None:
    import torch.multiprocessing as mp

    port = _free_port()
    start_method = "spawn" if config.device == "cuda" else "fork"
    try:
        mp.start_processes(_worker_entry, args=(config, port), nprocs=config.world_size, join=True,
                           start_method=start_method)
    except Exception as exc:  # noqa: BLE001 - ProcessRaisedException / ProcessExitedException
        raise WorkerFailed(str(exc)) from None


def _worker_entry(rank: int, config: EngineConfig, port: int) -> None:
    # Seen by the dumper before the group exists, and by anything the worker starts.
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(config.world_size), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    run_worker(config, rank=rank, local_rank=rank)


def run_worker(config: EngineConfig, *, rank: int, local_rank: int, out: TextIO | None = None
               ) -> list[RequestResult] | None:
    with open_worker(config, rank=rank, local_rank=local_rank) as engine:
        results = gather_results(engine, engine.generate())
    if results is not None:
        report(config, results, out=out or sys.stdout)
        if config.save_logits:
            save_results(config, results, config.save_logits)
    return results


@contextlib.contextmanager
def open_worker(config: EngineConfig, *, rank: int, local_rank: int) -> Iterator[Engine]:
    """One rank's engine, with torch.distributed initialised (world > 1) and torn down after."""
    torch.set_num_threads(1)
    world_size = config.world_size
    if config.device == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world_size > 1:
        backend = "nccl" if config.device == "cuda" else "gloo"
        dist.init_process_group(backend, rank=rank, world_size=world_size, init_method="env://")
    try:
        layout = ParallelLayout(rank=rank, tp=config.tp, ep=config.ep, dp_attention=config.dp_attention)
        comm = Comm(layout)
        dumper.set_parallel(**layout.dumper_axes())
        for axis, group in comm.groups.items():
            # NOTE: under --ep 2 the attn_tp, ep and world groups hold the same ranks: name them.
            dumper.name_group(group, axis)
        engine = Engine(config, comm, device)
        yield engine
    except BaseException:
        # NOTE: say why first: tearing down NCCL waits for peers that may sit in a
        # collective this rank will never join, so a failed rank skips the teardown.
        print(f"rank {rank} failed:\n{traceback.format_exc()}", file=sys.stderr, flush=True)
        raise
    else:
        if world_size > 1:
            engine.close()
            dist.destroy_process_group()


def gather_results(engine: Engine, local: list[RequestResult]) -> list[RequestResult] | None:
    """Every request's results on rank 0 (from the first attention-TP rank of its DP group); None elsewhere."""
    layout = engine.comm.layout
    if layout.world_size == 1:
        return local
    mine = local if layout.attn_tp_rank == 0 else []
    gathered: list[list[RequestResult]] | None = [[] for _ in range(layout.world_size)] if layout.rank == 0 else None
    dist.gather_object(mine, gathered, dst=0)
    if gathered is None:
        return None
    return sorted((result for part in gathered for result in part), key=lambda result: result.req_id)


def describe(config: EngineConfig) -> str:
    flags = [f"tp={config.tp}", f"ep={config.ep}", f"dp_attention={config.dp_attention}"]
    flags += [name for name in ("dense_tp", "fusion", "cuda_graph", "static_decode", "compile") if getattr(config, name)]
    flags.append(f"bug={'+'.join(config.bugs) or 'none'}")
    return (f"moe_engine: {' '.join(flags)} (world {config.world_size}: attn_tp {config.attn_tp}, "
            f"moe_tp {config.tp}) {config.dtype} on {config.device}")


def report(config: EngineConfig, results: list[RequestResult], *, out: TextIO) -> None:
    print(describe(config), file=out)
    for result in results:
        tokens = " ".join(str(token) for token in result.tokens)
        print(f"request {result.req_id} (prompt {len(result.prompt)} tokens): {tokens}", file=out)
    out.flush()


def save_results(config: EngineConfig, results: list[RequestResult], path: str) -> None:
    """safetensors: ``logits.req<N>`` [steps+1, vocab] fp32, ``tokens.req<N>`` and ``prompt.req<N>`` int64."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    for result in results:
        tensors[f"logits.req{result.req_id}"] = result.logits.float().contiguous()
        tensors[f"tokens.req{result.req_id}"] = torch.tensor(result.tokens, dtype=torch.long)
        tensors[f"prompt.req{result.req_id}"] = torch.tensor(result.prompt, dtype=torch.long)
    config_json = json.dumps({k: v for k, v in dataclasses.asdict(config).items() if k != "save_logits"})
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    save_file(tensors, tmp, metadata={"config": config_json})
    os.replace(tmp, path)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
