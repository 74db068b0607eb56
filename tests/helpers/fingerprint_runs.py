"""Example-engine runs (stats mode: small) for the gate and fingerprint tests, dumped once per session.

Beside the shared ones of tests/helpers/example_runs.py ("ep2_stats", "bug_stats"):
another healthy EP=2 run (tonight's), an EP=1 run (a layout change), another seed (other
weights) and bfloat16 (another dtype).
"""

from __future__ import annotations

from pathlib import Path

from tests.helpers.example_runs import dump_example, example_run, example_runs_root

EXTRA = {
    "fp_tonight": "--ep 2",
    "fp_ep1": "",
    "fp_seed1": "--ep 2 --seed 1",
    "fp_bf16": "--ep 2 --dtype bfloat16",
}


def fingerprint_runs(tmp_path_factory) -> dict[str, Path]:  # type: ignore[no-untyped-def]
    root = example_runs_root(tmp_path_factory)
    runs = {"base": example_run(root, "ep2_stats"), "bug": example_run(root, "bug_stats")}
    missing = {name: args for name, args in EXTRA.items() if not (root / name / "run.json").exists()}
    if missing:
        def dump(name: str, args: str) -> Path:
            return dump_example(root, name, args, mode="stats")

        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=2) as pool:
            for future in [pool.submit(dump, name, args) for name, args in missing.items()]:
                future.result()
    runs.update({name: root / name for name in EXTRA})
    return runs
