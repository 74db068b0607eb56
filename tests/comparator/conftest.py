"""Runs written by real processes through the dumper, shared by the comparator tests.

One tiny model, dumped by a single process (the baseline) and by 2 and 4 gloo
ranks with tensor parallelism. Each rank dumps:

- ``hidden_in``    replicated over tp                     dims ``t h # tp:replicated``
- ``up_proj``      column-parallel output, split over tp   dims ``t f[tp]``
- ``down_partial`` row-parallel output, a partial sum      dims ``t h[tp:partial]``
- ``mlp_out``      after the all-reduce, replicated        dims ``t h # tp:replicated``
- ``residual``     hidden + mlp_out, replicated            dims ``t h # tp:replicated``

for 2 layers and 2 steps (step 1 starts from step 0's residual). ``BUG`` plants
a fault: ``scale2`` doubles mlp_out of layer 1, ``missing_allreduce`` skips the
all-reduce (every rank keeps its partial sum), ``double_allreduce`` reduces twice.
"""

from __future__ import annotations

import pytest

from tests.helpers.procs import dump_run, torchrun_like

MODEL = r"""
import os
import torch
import torch.distributed as dist
from dumper import dumper

world = int(os.environ.get("WORLD_SIZE", "1"))
rank = int(os.environ.get("RANK", "0"))
bug = os.environ.get("BUG", "")
if world > 1:
    dist.init_process_group("gloo")
    dumper.set_parallel(tp=(rank, world))

def run(bug):
    generator = torch.Generator().manual_seed(0)
    tokens, hidden, ffn = 5, 8, 16
    weights = [(torch.randn(hidden, ffn, generator=generator) / 3, torch.randn(ffn, hidden, generator=generator) / 4)
               for _ in range(2)]
    x = torch.randn(tokens, hidden, generator=generator)
    shard = slice(rank * ffn // world, (rank + 1) * ffn // world)
    for step in range(2):
        for layer, (w_up, w_down) in enumerate(weights):
            with dumper.tags(layer=layer):
                dumper.dump("hidden_in", x, dims="t h # tp:replicated")
                up = x @ w_up[:, shard]
                dumper.dump("up_proj", up, dims="t f[tp]")
                down = torch.relu(up) @ w_down[shard, :]
                dumper.dump("down_partial", down, dims="t h[tp:partial]")
                out = down.clone()
                if world > 1 and bug != "missing_allreduce":
                    dist.all_reduce(out)
                if world > 1 and bug == "double_allreduce":
                    dist.all_reduce(out)
                if bug == "scale2" and layer == 1:
                    out = out * 2
                dumper.dump("mlp_out", out, dims="t h # tp:replicated")
                x = x + out
                dumper.dump("residual", x, dims="t h # tp:replicated")
        dumper.step()

run(bug)
second = os.environ.get("SECOND_DIR")
if second:
    # A second run from the same processes (saves starting gloo ranks twice).
    dumper.flush()
    dumper.configure(dir=second, run_id=None)
    dumper.set_step(0)
    run(os.environ["SECOND_BUG"])
dumper.flush()
if world > 1:
    dist.barrier()
    dist.destroy_process_group()
"""


@pytest.fixture(scope="session")
def runs(tmp_path_factory):
    """Paths of every run, written once per test session."""
    root = tmp_path_factory.mktemp("runs")
    paths = {name: root / name for name in ("tp1", "tp1_again", "tp1_scale2", "tp2", "tp2_missing_allreduce", "tp4")}
    dump_run(paths["tp1"], MODEL)
    dump_run(paths["tp1_again"], MODEL, SECOND_DIR=str(paths["tp1_scale2"]), SECOND_BUG="scale2")
    torchrun_like(paths["tp2"], MODEL, world_size=2, SECOND_DIR=str(paths["tp2_missing_allreduce"]),
                  SECOND_BUG="missing_allreduce")
    torchrun_like(paths["tp4"], MODEL, world_size=4)
    return paths
