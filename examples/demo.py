"""``dumpcmp demo``: the example MoE engine as a baseline and a target, dumped and compared.

The library half of the command. :func:`run_demo` dumps a 1-process baseline and a
multi-process target of ``examples.moe_engine`` through the same patch mechanism as
``dumpcmp run --patch example/moe_engine`` (the preset ships as package data), runs
the two at once, compares them with :func:`comparator.compare`, and returns a
:class:`DemoResult`; :func:`render_demo` prints it for people.

    from examples.demo import DemoConfig, run_demo
    result = run_demo(DemoConfig(bug="double_reduce"))
    result.report.first_divergence, result.found_expected, result.seconds
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from dumper.errors import DumpcmpError

if TYPE_CHECKING:
    from rich.console import Console

    from comparator.results import Report

PRESET = "example/moe_engine"
ENGINE = ("-m", "examples.moe_engine")


class DemoOptionError(DumpcmpError):
    """An unknown scenario name."""


class DemoRunFailed(RuntimeError):
    """The example engine failed under ``dumpcmp run`` (a bug: the message holds its stderr)."""


@dataclass(frozen=True, kw_only=True)
class Scenario:
    """One target run of the example engine, and what the comparison should find."""

    name: str
    target_args: tuple[str, ...]
    layout: str  # the target's processes, in words
    seed: int | None  # SEEDS.md row
    story: str  # what went wrong in the real engine
    shows: str  # what the tool must show
    aligner: str = "none"
    engine_args: tuple[str, ...] = ()  # given to the baseline and the target alike
    exclude: str | None = None  # a regex of dump names left out of the comparison
    excluded_why: str | None = None
    fixed_by_aligner: str | None = None  # compare again with this aligner: the fix the hint names
    expected: tuple[str, int | None] | None = None  # (tensor, layer) of the first divergence; None: all pass
    expected_hint: str | None = None  # a phrase the first divergence's hint holds


SCENARIOS: dict[str, Scenario] = {
    scenario.name: scenario
    for scenario in (
        Scenario(
            name="ep_reduce_skipped_under_fusion",
            target_args=("--tp", "2", "--ep", "2", "--fusion", "--bug", "ep_reduce_skipped_under_fusion"),
            layout="4 processes: MoE TP 2 x EP 2, all-reduce fused into the next add + norm",
            seed=1,
            story="SGLang, Qwen3-30B MoE: with the all-reduce fused into the next layer's residual + norm, "
                  "the MoE block skipped its EP reduction and nothing did it later.",
            shows="the MoE output of the first MoE layer: EP ranks disagree on a tensor that must be "
                  "replicated, and their sum is the baseline: a missing all-reduce over ep",
            expected=("moe_output", 1),
            expected_hint="missing all-reduce over ep",
        ),
        Scenario(
            name="double_reduce",
            target_args=("--tp", "2", "--ep", "2", "--bug", "double_reduce"),
            layout="4 processes: MoE TP 2 x EP 2",
            seed=2,
            story="SGLang, 14 MoE models: hand-written copies of the 'skip the post-experts all-reduce' "
                  "condition drifted apart and reduced the MoE output twice.",
            shows="the MoE output of the first MoE layer is 2 x the baseline (cosine similarity 1, so a "
                  "cosine-only check passes it): a duplicated reduction",
            expected=("moe_output", 1),
            expected_hint="duplicated reduction over a group of size 2",
        ),
        Scenario(
            name="shared_expert_double_reduce",
            target_args=("--tp", "2", "--bug", "shared_expert_double_reduce"),
            layout="2 processes: TP 2",
            seed=3,
            story="vLLM, DeepSeek-V2-Lite: a stale 'already reduced' flag made the shared experts' output "
                  "all-reduced twice (accuracy 0.35 -> 0.02).",
            shows="the shared-expert output of the first MoE layer is 2 x the baseline while the "
                  "routed-expert output still matches",
            expected=("shared_expert_output", 1),
            expected_hint="duplicated reduction over a group of size 2",
        ),
        Scenario(
            name="dense_tp_missing_reduce",
            target_args=("--tp", "2", "--dense-tp", "--bug", "dense_tp_missing_reduce"),
            layout="2 processes: TP 2, dense MLP split over the attention-TP group",
            seed=4,
            story="SGLang, MoE dense layers: the dense MLP gained TP over the attention-TP group, with a "
                  "new all-reduce; drop it and each rank keeps a partial sum.",
            shows="the dense MLP output of layer 0: TP ranks hold partial sums that add up to the baseline",
            expected=("dense_mlp_output", 0),
            expected_hint="missing all-reduce over attn_tp",
        ),
        Scenario(
            name="dp_attention_padding",
            target_args=("--ep", "2", "--dp-attention", "2"),
            engine_args=("--prompt-lens", "5"),
            layout="2 processes: DP-attention 2 x EP 2, one request: DP rank 1 is idle (healthy)",
            seed=5,
            story="SGLang's DP-attention nightly test failed on every tensor with a shape mismatch: an idle DP "
                  "rank still contributes a padding token, so the target holds [6, h] where the baseline holds "
                  "[5, h].",
            shows="without a token aligner the tensors fail on their shape, and the hint says the extra rows "
                  "look like padding and names the aligner; with that aligner every tensor passes",
            exclude="^num_tokens_per_dp_rank$",
            excluded_why="num_tokens_per_dp_rank (one count per DP rank: differs by design)",
            fixed_by_aligner="concat_steps",
            expected=("input_ids", None),
            expected_hint="looks like padding, try --aligner concat_steps",
        ),
        Scenario(
            name="none",
            target_args=("--tp", "2", "--ep", "2", "--dp-attention", "2", "--dense-tp"),
            layout="4 processes: DP-attention 2 x attention TP 2 (dense MLP too), MoE TP 2 x EP 2",
            seed=None,
            story="A healthy target: every parallel path of the engine at once, with the DP ranks' padding "
                  "trimmed by the concat_steps token aligner.",
            shows="every tensor passes against the 1-process baseline",
            aligner="concat_steps",
        ),
    )
}
# The seed that is easiest to miss and hardest to localise by hand: the ranks are
# each self-consistent, the logits are merely wrong, and only the sum over EP is right.
DEFAULT_SCENARIO = "ep_reduce_skipped_under_fusion"


def scenario_names() -> list[str]:
    return list(SCENARIOS)


def get_scenario(name: str) -> Scenario:
    scenario = SCENARIOS.get(name)
    if scenario is None:
        raise DemoOptionError(f"unknown bug {name!r}; valid: {', '.join(SCENARIOS)}")
    return scenario


@dataclass(frozen=True, kw_only=True)
class DemoConfig:
    bug: str = DEFAULT_SCENARIO
    keep: str | None = None  # keep the two runs in KEEP/baseline and KEEP/target

    def __post_init__(self) -> None:
        get_scenario(self.bug)


@dataclass(frozen=True, kw_only=True)
class DemoResult:
    scenario: Scenario
    baseline_command: tuple[str, ...]
    target_command: tuple[str, ...]
    baseline_dir: str | None  # None when the runs were not kept
    target_dir: str | None
    report: "Report"
    seconds: float
    fixed_report: "Report | None" = None  # the comparison again with the scenario's fixed_by_aligner

    @property
    def found_expected(self) -> bool:
        """Whether the comparison shows what the scenario says it should."""
        first = self.report.first_divergence
        if self.scenario.expected is None:
            return first is None and self.report.exit_code == 0
        if first is None or (self.fixed_report is not None and self.fixed_report.exit_code != 0):
            return False
        name, layer = self.scenario.expected
        return (first.name == name and first.tags.get("layer") == layer
                and (self.scenario.expected_hint or "") in (first.hint or ""))


def run_demo(config: DemoConfig) -> DemoResult:
    """Dump the baseline and the scenario's target (at the same time), then compare them."""
    scenario = get_scenario(config.bug)
    started = time.perf_counter()
    if config.keep is not None:
        return _run_in(Path(config.keep), scenario, started, keep=True)
    with tempfile.TemporaryDirectory(prefix="dumpcmp-demo-") as root:
        return _run_in(Path(root), scenario, started, keep=False)


def _run_in(root: Path, scenario: Scenario, started: float, *, keep: bool) -> DemoResult:
    baseline_dir, target_dir = root / "baseline", root / "target"
    baseline_command = (sys.executable, *ENGINE, *scenario.engine_args)
    target_command = (sys.executable, *ENGINE, *scenario.engine_args, *scenario.target_args)
    # NOTE: the two runs go in parallel: each spends most of its time importing torch
    # and forking, so on 2 cores the pair takes little longer than the target alone.
    processes = [_start_dumped(command, run_dir) for command, run_dir in
                 ((baseline_command, baseline_dir), (target_command, target_dir))]
    from comparator.pipeline import compare  # imports torch while the engines run

    for process, command in zip(processes, (baseline_command, target_command)):
        _, stderr = process.communicate()
        if process.returncode != 0:
            raise DemoRunFailed(f"{' '.join(command[1:])} exited with {process.returncode}:\n{stderr.strip()}")
    report = compare(baseline_dir, target_dir, aligner=scenario.aligner, exclude=scenario.exclude)
    fixed_report = None
    if scenario.fixed_by_aligner is not None:
        fixed_report = compare(baseline_dir, target_dir, aligner=scenario.fixed_by_aligner, exclude=scenario.exclude)
    return DemoResult(
        scenario=scenario, baseline_command=baseline_command, target_command=target_command,
        baseline_dir=str(baseline_dir) if keep else None, target_dir=str(target_dir) if keep else None,
        report=report, seconds=time.perf_counter() - started, fixed_report=fixed_report,
    )


def _start_dumped(command: tuple[str, ...], run_dir: Path) -> subprocess.Popen[str]:
    """Start ``command`` as ``dumpcmp run --patch example/moe_engine --dir RUN_DIR`` would."""
    from patches.launch import RunConfig, prepare_run

    env = prepare_run(RunConfig(command=command, dir=str(run_dir), patch_files=(PRESET,), overwrite=True))
    # NOTE: from a checkout that is not installed, the engine's package is found
    # through the path this module was imported from.
    package_root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH", ""), package_root) if p)
    env.setdefault("OMP_NUM_THREADS", "1")
    return subprocess.Popen(list(command), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


# ------------------------------------------------------------------- rendering
def render_demo(result: DemoResult, console: "Console | None" = None) -> None:
    """The demo for people: the two runs, the first divergence with its hint, and the verdict."""
    from rich.table import Table
    from rich.text import Text

    from comparator.report.console import output_console

    console = console or output_console()
    scenario, report = result.scenario, result.report

    def line(*parts: str | tuple[str, str]) -> None:
        # NOTE: Text, not markup: hints hold dims such as '[attn_dp]'.
        console.print(Text.assemble(*parts))

    title = f"seed {scenario.seed}: {scenario.name}" if scenario.seed is not None else "a healthy target (--bug none)"
    line(("dumpcmp demo", "bold"), f" - {title}")
    line((scenario.story, "dim"))
    engine = " ".join(("python -m examples.moe_engine", *scenario.engine_args))
    line("  baseline  ", engine, "  (1 process)")
    line("  target    ", " ".join((engine, *scenario.target_args)))
    line(f"            ({scenario.layout})")
    line(f"  both dumped through the patch preset {PRESET} (the engine has no dump calls), compared with "
         f"aligner={report.aligner}" + (f"; left out: {scenario.excluded_why}" if scenario.excluded_why else ""))
    console.print()
    summary = report.summary
    first = report.first_divergence
    if first is None:
        line(("PASS", "bold green"), f": all {summary.passed} tensors match the baseline (every layer, every step)")
    else:
        line(("FAIL", "bold red"), f": {summary.failed} of {summary.total} tensors diverge; the first, in execution order:")
        table = Table(box=None, pad_edge=False, show_header=True, header_style="bold")
        for column in ("step", "tensor", "layer", "status", "rel_diff", "norm_ratio", "cosine", "shape"):
            longest = max(len(r.name) for r in report.results) if column == "tensor" else None
            table.add_column(column, justify="left" if column in ("tensor", "status", "shape") else "right",
                             overflow="fold", min_width=longest)
        for index in range(max(0, first.index - 3), min(len(report.results), first.index + 2)):
            row = report.results[index]
            metrics = row.metrics
            shape = row.target.shape if row.target is not None else None
            table.add_row(str(row.step), row.name, str(row.tags.get("layer", "-")), row.status,
                          *(_fmt(getattr(metrics, m)) if metrics is not None else "-" for m in
                            ("rel_diff", "norm_ratio", "cosine")), str(list(shape)) if shape is not None else "-",
                          style="bold red" if index == first.index else "dim")
        console.print(table)
        layer = first.tags.get("layer")
        line("  ", ("first divergence", "bold"), f": {first.name}" + (f" of layer {layer}" if layer is not None else "")
             + f", step {first.step}")
        if first.reason and (not first.hint or len(first.reason) <= 70):  # the table has the metrics
            line("  ", ("why", "bold"), f": {first.reason}")
        if first.hint:
            line("  ", ("hint", "bold"), ": ", (first.hint, "cyan"))
    fixed = result.fixed_report
    if fixed is not None:
        verdict = ("PASS", "bold green") if fixed.exit_code == 0 else ("FAIL", "bold red")
        line("  with --aligner ", fixed.aligner, ": ", verdict,
             f" ({fixed.summary.passed} of {fixed.summary.total} tensors match, every step's padding trimmed)")
    console.print()
    found = ("as expected", "green") if result.found_expected else ("NOT what this scenario expects", "bold red")
    line("Expected: ", scenario.shows, ". Found: ", found, ".")
    line(f"Ran in {result.seconds:.1f} s.")
    if result.baseline_dir is not None:
        options = (f" --aligner {report.aligner}" if report.aligner != "none" else "") + (
            f" --exclude '{scenario.exclude}'" if scenario.exclude else "")
        line(f"Runs kept: dumpcmp compare {result.baseline_dir} {result.target_dir}{options}")
    else:
        others = ", ".join(name for name in SCENARIOS if name != scenario.name)
        line(f"Other scenarios: dumpcmp demo --bug NAME ({others}); --keep DIR keeps the runs.")


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    return "0" if value == 0 else f"{value:.3g}" if 1e-3 <= abs(value) < 1e4 else f"{value:.2e}"


__all__ = [
    "DEFAULT_SCENARIO", "SCENARIOS", "DemoConfig", "DemoOptionError", "DemoResult", "DemoRunFailed", "Scenario",
    "get_scenario", "render_demo", "run_demo", "scenario_names",
]
