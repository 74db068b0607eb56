"""vLLM CPU runs under ``dumpcmp run``, for the engine tests (the recipe in examples/vllm/)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

from tests.helpers.procs import REPO, clean_env

PRESET = "patches/presets/vllm/qwen3_moe.yaml"
BUG = "examples/vllm/bug_skip_moe_allreduce.yaml"
ROUTING = "examples/vllm/routing.yaml"
DEEPSEEK_V2_PRESET = "patches/presets/vllm/deepseek_v2.yaml"
# vLLM CPU's rotary kernel mis-rotates MLA's query/key views (examples/vllm/rope_check.py):
# the recipe runs DeepSeek-V2 with vLLM's PyTorch rotary code instead.
DEEPSEEK_V2_ENGINE_OPTIONS = ("--disable-custom-op", "rotary_embedding")
TIMEOUT = 480
TP2_ENV = {"VLLM_CPU_OMP_THREADS_BIND": "0|1"}
ENGINE_SECONDS: dict[str, float] = {}


def dumpcmp(*args: str, timeout: float = TIMEOUT, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", "from comparator.cli import main; main()", *map(str, args)],
                          cwd=REPO, env=env or clean_env(), capture_output=True, text=True, timeout=timeout)


def engine_run(run_dir, patches: list[str], command: list[str], *, options: tuple[str, ...] = (),
               **env: str) -> tuple[list[list[int]], str]:
    """``dumpcmp run --patch P... --dir RUN [OPTIONS] -- python -m CMD``; returns the generated tokens and stderr."""
    args = ["run", *[a for p in patches for a in ("--patch", p)], "--dir", run_dir, *options,
            "--", sys.executable, "-m", *command]
    started = time.monotonic()
    proc = dumpcmp(*args, env=clean_env(VLLM_CPU_KVCACHE_SPACE="1", **env))
    ENGINE_SECONDS[os.path.basename(run_dir)] = time.monotonic() - started
    assert proc.returncode == 0, f"{args}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    found = re.search(r"^GENERATED (.*)$", proc.stdout, re.MULTILINE)
    assert found, proc.stdout[-2000:]
    return json.loads(found.group(1)), proc.stderr
