"""``dumpcmp patch check``: static validation, exact messages, nothing imported."""

import os
import sys

from typer.testing import CliRunner

from comparator.cli import app
from patches import check_patch_file

runner = CliRunner()


def test_good_file_passes_without_importing_the_target(engine, write_patch):
    path = write_patch(f"""
        patches:
          - target: {engine}.Block.forward
            tags: {{layer: self.layer_id}}
            edits:
              - match: "y = x * self.__scale"
                append: "dumper.dump('y', y)"
              - at: return
                prepend: [{{dump: out}}]
    """)
    result = check_patch_file(path)
    assert result and result.problems == ()
    assert engine not in sys.modules
    cli = runner.invoke(app, ["patch", "check", path])
    assert cli.exit_code == 0
    assert cli.stdout == f"ok: {path} (1 targets, 2 edits)\n"


def test_missing_anchor_shows_the_closest_lines(engine, write_patch):
    path = write_patch(f"""
        patches:
          - target: {engine}.Block.forward
            edits:
              - match: "z = y + 2"
                append: "pass"
    """)
    cli = runner.invoke(app, ["patch", "check", path])
    assert cli.exit_code == 2
    assert engine not in sys.modules  # found by reading the source, never by importing it
    lines = cli.stderr.splitlines()
    engine_file = os.path.join(os.path.dirname(path), f"{engine}.py")
    assert lines[0].startswith(f"dumpcmp: error: {path}:5:9: edit 1 (match, append) of {engine}.Block.forward: "
                               f"the match text is not in Block.forward ({engine_file}:")
    assert lines[1:] == ["    | z = y + 2", "  closest lines of the real source:", "       23: z = y + 1"]


def test_unknown_module_attribute_and_yaml_errors_all_exit_2(engine, write_patch):
    unknown_class = write_patch(f"""
        patches:
          - target: {engine}.Blok.forward
            edits: [{{at: entry, prepend: pass}}]
    """, "unknown_class.yaml")
    imported = write_patch(f"""
        patches:
          - target: {engine}.OrderedDict.get
            edits: [{{at: entry, prepend: pass}}]
    """, "imported.yaml")
    broken_yaml = write_patch("patches: [\n", "broken.yaml")
    bad_code = write_patch(f"""
        patches:
          - target: {engine}.Block.forward
            edits:
              - match: "z = y + 1"
                replacement: "z = (y +"
    """, "bad_code.yaml")
    cli = runner.invoke(app, ["patch", "check", unknown_class, imported, broken_yaml, bad_code, "no/such_preset"])
    assert cli.exit_code == 2
    errors = cli.stderr.splitlines()
    assert errors[0].startswith(f"dumpcmp: error: {unknown_class}:3:5: target '{engine}.Blok.forward': "
                                f"module {engine} (")
    assert errors[0].endswith("defines no 'Blok'; did you mean Block?")
    assert errors[1].startswith(f"dumpcmp: error: {imported}:3:5: target '{engine}.OrderedDict.get': module {engine} (")
    assert errors[1].endswith("defines no 'OrderedDict'; it is imported there from collections: "
                              "target collections.OrderedDict.get instead")
    assert errors[2] == f"dumpcmp: error: {broken_yaml}:2:1: YAML error: expected the node content, but found '<stream end>' (while parsing a flow node)"
    assert errors[3].startswith(f"dumpcmp: error: {bad_code}:6:") and "syntax error in injected code (edit 1 (match, replacement)" in errors[3]
    assert errors[4].startswith("dumpcmp: error: patch file no/such_preset does not exist and is not a preset; presets: ")


def test_presets_resolve_by_name(monkeypatch):
    from patches import list_presets, resolve_patch_path

    names = list_presets()
    assert {"vllm/qwen3_moe", "vllm/deepseek_v2", "sglang/qwen3_moe", "sglang/deepseek_v2",
            "transformers/qwen3_moe", "transformers/deepseek_v2"} <= set(names)
    assert resolve_patch_path("vllm/qwen3_moe").endswith("patches/presets/vllm/qwen3_moe.yaml")


def test_every_engine_folder_has_the_same_files():
    import os

    from patches.presets import PRESET_DIR

    shapes = {}
    for engine in ("vllm", "sglang", "transformers"):
        shapes[engine] = sorted(f for f in os.listdir(os.path.join(PRESET_DIR, engine)) if f.endswith(".yaml"))
    # One preset per model in every engine; engines that run CUDA graphs also have the
    # cuda_graphs add-on (combined with a model preset; transformers has no graphs).
    models = ["deepseek_v2.yaml", "qwen3_moe.yaml"]
    with_graphs = sorted(models + ["cuda_graphs.yaml"])
    assert shapes == {"vllm": with_graphs, "sglang": with_graphs, "transformers": models}
