"""The SGLang presets' step-entry metadata on batches shaped like SGLang's ForwardBatch (SGLang does not run here).

The presets' ``ModelRunner.forward`` patch is taken as it is from each preset file,
pointed at a stand-in runner, and run under ``dumpcmp run`` on an extend batch (two
requests prefilled), a decode batch and an idle batch (no rids, one padding token).
Each token's request comes out as the stable hash of its rid, -1 on padding; two
runs whose random rids differ compare with default options (``auto`` matches the
requests by their input ids and renames the ids).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import yaml

from dumper.request_ids import request_number
from patches.presets import PRESET_DIR
from tests.helpers.example_runs import DUMPCMP, dumpcmp
from tests.helpers.procs import REPO, clean_env

RUNNER = '''
import torch


class Mode:
    def __init__(self, name):
        self.name = name

    def is_extend(self):
        return self.name == "extend"


class ForwardBatch:
    def __init__(self, mode, rids, input_ids, positions, seq_lens, extend=None):
        self.forward_mode = Mode(mode)
        self.rids = rids
        self.input_ids = torch.tensor(input_ids)
        self.positions = torch.tensor(positions)
        self.seq_lens = torch.tensor(seq_lens)
        self.req_pool_indices = torch.arange(len(seq_lens))
        self.extend_seq_lens_cpu = extend


class ModelRunner:
    def forward(self, forward_batch, skip_attn_backend_init=None, pp_proxy_tensors=None):
        return forward_batch.input_ids.sum()
'''

SCRIPT = '''
import sys

from stand_in_runner import ForwardBatch, ModelRunner

first, second = sys.argv[1], sys.argv[2]
runner = ModelRunner()
runner.forward(ForwardBatch("extend", [first, second], [11, 42, 7, 5, 77], [0, 1, 2, 0, 1], [3, 2], extend=[3, 2]))
runner.forward(ForwardBatch("decode", [first, second], [9, 13], [3, 2], [4, 3]))
runner.forward(ForwardBatch("idle", None, [0], [0], []))
'''


def step_entry_patch(preset: str) -> dict:
    """The preset's ModelRunner.forward patch, pointed at the stand-in runner."""
    with open(os.path.join(PRESET_DIR, "sglang", preset), encoding="utf-8") as handle:
        patches = yaml.safe_load(handle)["patches"]
    (patch,) = [p for p in patches if p["target"] == "sglang.srt.model_executor.model_runner.ModelRunner.forward"]
    return {**patch, "target": "stand_in_runner.ModelRunner.forward"}


def sglang_like_run(tmp_path, preset: str, name: str, rids: tuple[str, str]) -> str:
    (tmp_path / "stand_in_runner.py").write_text(textwrap.dedent(RUNNER))
    (tmp_path / "script.py").write_text(textwrap.dedent(SCRIPT))
    patch = tmp_path / f"{preset}.step.yaml"
    patch.write_text(yaml.safe_dump({"patches": [step_entry_patch(preset)]}))
    run_dir = str(tmp_path / name)
    # The stand-in runner is importable from tmp_path, as an engine's module is where it is installed.
    env = clean_env(PYTHONPATH=os.pathsep.join([str(REPO), str(tmp_path)]))
    proc = subprocess.run([*DUMPCMP, "run", "--patch", str(patch), "--dir", run_dir, "--", sys.executable,
                           str(tmp_path / "script.py"), *rids], env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert "turned off" not in proc.stderr, proc.stderr  # no site failed
    return run_dir


@pytest.mark.parametrize("preset", ["qwen3_moe.yaml", "deepseek_v2.yaml"])
def test_each_token_is_named_by_its_rid(tmp_path, preset):
    from dumper.reader import open_run

    rids = ("9f1c2e4a7b3d4c5e8f60718293a4b5c6", "0a1b2c3d4e5f60718293a4b5c6d7e8f9")
    run_dir = sglang_like_run(tmp_path, preset, "run", rids)
    with open_run(run_dir) as run:
        found = {r.step: run.load(r).tolist() for r in run.records if r.name == "token_req_ids"}
        dims = {r.dims for r in run.records if r.name == "token_req_ids"}
    first, second = (request_number(rid) for rid in rids)
    assert found == {0: [first] * 3 + [second] * 2, 1: [first, second], 2: [-1]}
    assert dims == {"t # tp:replicated"}


def test_two_runs_with_other_random_rids_compare_with_default_options(tmp_path):
    baseline = sglang_like_run(tmp_path, "qwen3_moe.yaml", "baseline", ("aaaa0001", "aaaa0002"))
    target = sglang_like_run(tmp_path, "qwen3_moe.yaml", "target", ("bbbb0001", "bbbb0002"))
    proc = dumpcmp("compare", baseline, target, "--format", "json")
    assert proc.returncode == 0, proc.stdout[-3000:]
    report = json.loads(proc.stdout)
    assert report["aligner"] == "by_request"
    assert report["aligner_reason"] == ("auto: by_request: both runs hold the same tokens at each of 3 steps; the runs "
                                        "do not share request ids: requests matched by input ids (2 exactly)")
    ids = [r for r in report["results"] if r["name"] == "token_req_ids"]
    # The extend and decode steps; the idle batch (one padding row, no token) is dropped whole.
    assert [r["step"] for r in ids] == [0, 1] and all(r["status"] == "pass" for r in ids)
    assert all("request ids renamed" in r["alignment"]["detail"] for r in ids)
