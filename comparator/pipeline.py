"""``compare(baseline, target)``: the whole comparison, as a library call.

Pipeline, planned on metadata first, then executed one logical tensor at a time:

1. open both runs (index only) and group records into logical tensors;
2. pair them (name map, step offset, filters) into series across steps;
3. per series, let the aligner group steps into units, and plan each side's
   unsharding; planning errors become ``error`` results before any data is read
   (comparator/plan.py);
4. per unit, in execution order: load the shards (memory-mapped), unshard, align,
   measure in float64 chunks, judge, hint; then release the tensors
   (comparator/execute.py; comparator/parallel.py with ``jobs > 1``; Ray tasks next to
   the shards with ``executor="ray"``, comparator/ray_executor.py);
5. mark allowed failures, sources and propagated failures, the first divergence,
   the exit code, and the collectives each rank ran around the first divergence.

Peak memory is bounded by one unit's tensors (a few units with ``jobs > 1``), never
by the number of tensors in a run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import os
from typing import Any, Callable, Iterable, Iterator

from comparator.collectives import trace_first_divergence
from comparator.errors import NothingUsableError
from comparator.execute import make_executor
from comparator.fingerprint import read_fingerprint
from comparator.judge.graft import graft_verdict, grafted_keys, mark_grafted
from comparator.judge.hints import graph_replay_hint, replayed_steps
from comparator.judge.routing import annotate_downstream
from comparator.judge.verdicts import finalize
from comparator.options import CompareOptions
from comparator.parallel import run_parallel
from comparator.plan import TensorWork, plan_comparison
from comparator.results import Pair, Report, TensorResult
from dumper.errors import RunNotFoundError
from dumper.reader import open_run

Progress = Callable[[int, int, str], None]  # (done, total, label of the tensor just compared)


def compare(baseline: str | os.PathLike[str], target: str | os.PathLike[str], *,
            options: CompareOptions | None = None, progress: Progress | None = None, **option_values: Any) -> Report:
    """Compare two runs; see :class:`CompareOptions` (or pass its CLI-style values as keywords).

    Raises a DumpcmpError for bad input (missing run, bad thresholds file, nothing usable).
    """
    if options is None:
        options = CompareOptions.from_values(**option_values)
    elif option_values:
        raise TypeError("pass either options= or option keywords, not both")
    with contextlib.ExitStack() as stack:
        planned = stack.enter_context(_index_objects_untracked())
        baseline_run = stack.enter_context(open_run(baseline))
        target_run = stack.enter_context(open_run(target))
        runs = Pair(baseline_run, target_run)
        for _, run in runs.items():
            if not any(rank.records for rank in run.ranks):
                found = f" ({run.problems[0]})" if run.problems else ""
                raise RunNotFoundError(f"{run.path}: the run holds no dumped tensors{found}")
        plan = plan_comparison(runs, options)
        planned()
        if any(isinstance(item, TensorWork) for item in plan.items):
            stack.enter_context(_single_threaded_torch())
        # NOTE: every executor (and worker process) makes the aligner the plan was made with.
        options = dataclasses.replace(options, aligner=plan.aligner)  # type: ignore[arg-type]  # a name of ALIGNERS
        produced: Iterable[TensorResult]
        if options.executor == "ray":
            from comparator.ray_executor import RayExecutor  # imports Ray itself, only now

            produced = RayExecutor(runs, options, plan.axis_sizes).results(plan.items)
        elif options.jobs > 1 and plan.measurable > 1:
            produced = run_parallel(plan.items, runs, options, plan.axis_sizes)
        else:
            executor = make_executor(runs, options, plan.axis_sizes)
            produced = (executor.run(item) for item in plan.items)
        results = []
        for done, result in enumerate(produced, start=1):
            results.append(result)
            if progress is not None:
                progress(done, len(plan.items), result.label)
        problems: dict[str, tuple[str, ...]] = {side: tuple(run.problems) for side, run in runs.items()}
        if options.routing.enabled:
            results = annotate_downstream(results)
        results = _graph_replay_hints(results, runs.map(replayed_steps))
        grafted = grafted_keys(target_run.records)
        results = mark_grafted(results, grafted)
        final, summary, first, code, reason = finalize(results, options)
        if not final:
            reason = f"nothing was compared: {nothing_matched(runs, options)}"
        graft = graft_verdict(final, grafted)
        if graft is not None:  # grafted tensors agree by construction: no evidence, not passes
            passes = sum(r.grafted and r.status == "pass" for r in final)
            summary = dataclasses.replace(summary, passed=summary.passed - passes, grafted=graft.grafted)
        if summary.compared == 0 and summary.errored and all(r.load_error for r in final if r.status == "error"):
            first_error = next(r for r in final if r.status == "error")
            raise NothingUsableError(
                f"no tensor could be read ({summary.errored} failed to load); first: {first_error.reason}"
            )
        collectives = trace_first_divergence(runs, final, first)
    return Report(
        baseline=os.fspath(baseline), target=os.fspath(target), aligner=plan.aligner, aligner_reason=plan.aligner_reason,
        summary=summary,
        first_divergence=first, results=final, exit_code=code, exit_reason=reason, problems=problems,
        thresholds=options.thresholds.source, collectives=collectives,
        fingerprints=Pair(read_fingerprint(baseline), read_fingerprint(target)), graft=graft,
    )


def nothing_matched(runs: Pair[Any], options: CompareOptions) -> str:
    """Why no tensor matched, in terms of what each run holds (the steps and names to choose from)."""
    steps = runs.map(lambda run: sorted({record.step for record in run.records}))
    names = runs.map(lambda run: sorted({record.name for record in run.records}))
    held = f"the baseline holds steps {_span(steps.baseline)}, the target steps {_span(steps.target)}"
    wanted = [(options.baseline_steps or options.steps, steps.baseline), (options.steps, steps.target)]
    if any(not any(step in chosen for step in present) for chosen, present in wanted):
        return f"--steps {options.steps} selects none of them ({held})"
    kept = [n for n in names.target if (options.names is None or options.names.search(n))
            and not (options.exclude is not None and options.exclude.search(n))]
    if not kept:
        shown = ", ".join(names.target[:6]) + (", ..." if len(names.target) > 6 else "")
        return f"--names/--exclude leave none of the target's {len(names.target)} names ({shown})"
    shared = set(names.baseline) & {options.name_map.baseline_name(n) for n in kept}
    if not shared:
        return (f"the runs share no tensor name (baseline: {', '.join(names.baseline[:4])}, ...; target: "
                f"{', '.join(kept[:4])}, ...); map them with --name-map")
    return f"no (name, step, tags) is on both sides ({held})"


def _span(steps: list[int]) -> str:
    if not steps:
        return "none"
    return f"{steps[0]}-{steps[-1]}" if steps == list(range(steps[0], steps[-1] + 1)) else ",".join(map(str, steps))


def _graph_replay_hints(results: list[TensorResult], replayed: Pair[dict[str, tuple[int, int]]]) -> list[TensorResult]:
    """Failures nothing else explains, where one side ran the step from a CUDA graph and the other eagerly."""
    if replayed == Pair({}, {}):
        return results
    return [r if r.status != "fail" or r.hint else dataclasses.replace(
        r, hint=graph_replay_hint(r.name, r.step, replayed.baseline, replayed.target)) for r in results]


@contextlib.contextmanager
def _index_objects_untracked() -> Iterator[Callable[[], None]]:
    """No cyclic garbage collection while the runs are read and planned; restored after.

    NOTE: a million-record run is millions of long-lived objects (records, logical
    tensors, work items) and no cyclic garbage; each full collection while they are being
    made visits all of them: planning 100k records took 4-8 s with the collector on and
    1-2 s without (issue 23). The pipeline freezes them once planned (``gc.freeze``), so the
    collections while comparing skip them too.
    """
    enabled = gc.isenabled()
    gc.disable()

    def planned() -> None:
        gc.freeze()  # the records and the plan live until the end: later collections need not visit them
        if enabled:
            gc.enable()

    try:
        yield planned
    finally:
        gc.unfreeze()
        if enabled:
            gc.enable()
        else:
            gc.disable()


@contextlib.contextmanager
def _single_threaded_torch() -> Iterator[None]:
    """Run torch ops on one thread while comparing, then restore the setting.

    NOTE: the per-tensor reductions are memory-bound and a few megabytes each; intra-op
    threads only add synchronisation (7x slower on a busy 2-core machine). Use
    ``jobs`` for parallelism instead.
    """
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
