"""Build a graft plan from a baseline run: the logical tensors ``dumpcmp run --graft`` puts back.

The comparator's rules live here, not in the engine: the baseline's records are grouped
into logical tensors, unsharded (comparator/unshard.py) and token-aligned per step by
the same aligners as ``compare``; the engine side (dumper/graft.py) only reads the plan
and cuts each tensor to its rank's shard. Everything a user can get wrong is raised as
a GraftError here, before the command starts.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Sequence

from aligners import AlignContext, StepPair, get_aligner
from comparator.matching import LogicalTensor, group_records, tags_key
from comparator.unshard import execute_unshard, plan_unshard
from dumper.errors import DumpcmpError
from dumper.filters import parse_filter
from dumper.graft import GraftEntry, GraftError, GraftPlan, write_graft_plan
from dumper.reader import Run, open_run

if TYPE_CHECKING:
    import torch

GRAFT_ALIGNERS = ("none", "concat_steps")
# Dtypes a graft can hand an engine: floating types (cast to the engine's at the graft point).
GRAFTABLE_DTYPES = ("float64", "float32", "float16", "bfloat16")


def build_graft_plan(baseline: str | os.PathLike[str], expressions: str | Sequence[str], directory: str, *,
                     aligner: str = "none") -> GraftPlan:
    """Select the baseline's logical tensors that any of ``expressions`` matches; write them as a plan into ``directory``."""
    if aligner not in GRAFT_ALIGNERS:
        raise GraftError(f"--graft-aligner {aligner} cannot place a graft; valid for grafting: {', '.join(GRAFT_ALIGNERS)}")
    expressions = (expressions,) if isinstance(expressions, str) else tuple(expressions)
    if not expressions or not all(e.strip() for e in expressions):
        raise GraftError("--graft needs a filter naming the sites to graft, e.g. --graft 'name~moe_output layer=1 step=0'")
    expression = " | ".join(expressions)
    filters = [parse_filter(e) for e in expressions]
    baseline_path = os.path.abspath(os.fspath(baseline))
    with open_run(baseline_path) as run:
        logical = group_records(run.records)
        if not logical:
            raise GraftError(f"--graft-from {baseline_path}: the run holds no dumped tensors")
        chosen = [t for t in logical
                  if any(f.keeps(name=t.name, step=t.step, rank=t.records[0].rank, tags=t.tags) for f in filters)]
        if not chosen:
            names = sorted({t.name for t in logical})
            raise GraftError(f"--graft {expression!r} matches nothing in {baseline_path}; it holds "
                             f"{', '.join(names[:12])}{', ...' if len(names) > 12 else ''} (steps "
                             f"{min(t.step for t in logical)}..{max(t.step for t in logical)})")
        if run.mode == "stats" or any(r.file is None for t in chosen for r in t.records):
            raise GraftError(f"--graft-from {baseline_path} holds no tensor data (a stats-mode run); "
                             "dump the baseline with --mode tensor to graft from it")
        for tensor in chosen:
            dtype = tensor.records[0].dtype
            if dtype not in GRAFTABLE_DTYPES:
                raise GraftError(f"{tensor.label}: the baseline holds {dtype}; a graft hands the engine floating "
                                 f"values only ({', '.join(GRAFTABLE_DTYPES)}); narrow --graft to float tensors")
        entries, tensors = [], {}
        align = get_aligner(aligner)
        aux = _aux_loader(run, logical)
        for index, tensor in enumerate(chosen):
            value = _logical_value(run, tensor, align, aux)
            key = f"g{index}"
            tensors[key] = value
            entries.append(GraftEntry(name=tensor.name, step=tensor.step, tags=dict(tensor.tags), key=key,
                                      shape=tuple(value.shape), dtype=str(value.dtype).removeprefix("torch."),
                                      baseline_step=tensor.step))
    plan = GraftPlan(baseline=baseline_path, filter=expression, aligner=aligner, entries=tuple(entries))
    write_graft_plan(directory, plan, tensors)
    return GraftPlan(baseline=plan.baseline, filter=plan.filter, aligner=plan.aligner, entries=plan.entries,
                     dir=directory)


def _logical_value(run: Run, tensor: LogicalTensor, align: Any, aux: Any) -> "torch.Tensor":
    """One step's unsharded, token-aligned baseline tensor (the aligner's baseline side)."""
    try:
        plan = plan_unshard(f"baseline {tensor.label}", tensor.records)
        value = execute_unshard(plan, run.load, verify_replicas=False).tensor
        context = AlignContext(name=tensor.name, tags=tensor.tags, baseline_token_dim=plan.token_dim,
                               target_token_dim=plan.token_dim, baseline_aux=aux, target_aux=aux,
                               baseline_dims=plan.dims, target_dims=plan.dims)
        (unit,) = align.plan([StepPair(baseline_step=tensor.step, target_step=tensor.step)], context)
        return align.align(unit, [value], [value], context).baseline.to(value.dtype).contiguous()
    except GraftError:
        raise
    except DumpcmpError as exc:
        raise GraftError(f"cannot graft {tensor.label}: {exc}") from None


def _aux_loader(run: Run, logical: list[LogicalTensor]):
    """(name, step, tags) -> that unsharded tensor (token metadata for the aligners), or None."""
    by_key = {(t.name, t.step, tags_key(t.tags)): t for t in logical}

    def load(name: str, step: int, tags: dict[str, Any]) -> "torch.Tensor | None":
        tensor = by_key.get((name, step, tags_key(tags)))
        if tensor is None:
            return None
        return execute_unshard(plan_unshard(tensor.label, tensor.records), run.load, verify_replicas=False).tensor

    return load


__all__ = ["GRAFT_ALIGNERS", "build_graft_plan"]
