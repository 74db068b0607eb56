"""Applying patches to live functions: each edit kind, anchors, tags, step, restore, the import hook."""

import importlib
import sys
import traceback

import pytest

from dumper import dumper
from patches import PatchAnchorError, PatchTargetError, apply_patches


@pytest.fixture
def recorded(monkeypatch):
    """Every dumper.dump call made by patched code, as (name, value, dims, tags)."""
    calls = []

    def record(name, value, *, dims=None, **tags):
        sticky = getattr(dumper._local, "tags", {}) or {}
        calls.append((name, value, dims, {**sticky, **tags}))

    monkeypatch.setattr(dumper, "dump", record)
    # Patched sites evaluate their expressions only while dumping is on (dumper.dump_site).
    monkeypatch.setattr(dumper, "enabled", True)
    return calls


def load(engine):
    return importlib.import_module(engine)


def test_prepend_append_replacement(engine, write_patch, recorded):
    module = load(engine)
    path = write_patch(f"""
        patches:
          - target: {engine}.Block.forward
            edits:
              - match: "y = x * self.__scale"
                prepend: "dumper.dump('x', x)"
              - match: "y = x * self.__scale"
                append: "dumper.dump('y', y, dims='t h')"
              - match: "z = y + 1"
                replacement: "z = y + 2"
    """)
    block = module.Block(0)
    with apply_patches([path]):
        assert block.forward(3) == 8
    assert [(name, value, dims) for name, value, dims, _ in recorded] == [("x", 3, None), ("y", 6, "t h")]
    assert block.forward(3) == 7  # restored


def test_match_without_mode_deletes_the_lines_as_in_sglang(engine, write_patch):
    module = load(engine)
    path = write_patch(f"""
        patches:
          - target: {engine}.Block.reduce
            edits:
              - match: "total = total + value"
                replacement: "total = total + 2 * value"
              - match: |
                  for value in values:
                      total = total + 2 * value
                append: "total = -total"
    """)
    with apply_patches([path]):
        assert module.Block(0).reduce([1, 2]) == -6


def test_entry_and_return_anchors_see_arguments_and_the_returned_value(engine, write_patch, recorded):
    module = load(engine)
    path = write_patch(f"""
        patches:
          - target: {engine}.Block.forward
            edits:
              - at: entry
                prepend:
                  - dump: block_input
                    expr: x
              - at: return
                prepend:
                  - dump: block_output
                  - "__ret__ = __ret__ * 10"
    """)
    with apply_patches([path]):
        assert module.Block(0).forward(1) == 30
        assert module.Block(0).forward(60) == -10  # the early return is instrumented too
    assert [(name, value) for name, value, _, _ in recorded] == [
        ("block_input", 1), ("block_output", 3), ("block_input", 60), ("block_output", -1)]


def test_return_anchor_covers_falling_off_the_end(engine, write_patch, recorded):
    module = load(engine)
    path = write_patch(f"""
        patches:
          - target: {engine}.log_only
            edits:
              - at: return
                prepend: "dumper.dump('result', __ret__)"
    """)
    with apply_patches([path]):
        module.log_only("hello")
    assert [(name, value) for name, value, _, _ in recorded] == [("result", None)]


def test_tags_are_evaluated_per_call_and_step_advances_when_the_call_ends(engine, write_patch, recorded):
    module = load(engine)
    path = write_patch(f"""
        patches:
          - target: {engine}.Block.forward
            tags: {{layer: self.layer_id, kind: "'moe'"}}
            step: true
            edits:
              - at: entry
                prepend:
                  - dump: x
                    tags: {{double: x * 2}}
    """)
    before = dumper.current_step
    with apply_patches([path]):
        module.Block(4).forward(1)
        module.Block(5).forward(2)
    assert [tags for _, _, _, tags in recorded] == [
        {"layer": 4, "kind": "moe", "double": 2}, {"layer": 5, "kind": "moe", "double": 4}]
    assert dumper.current_step == before + 2
    dumper.set_step(before)


def test_multi_line_anchor_indentation_insensitive(engine, write_patch, recorded):
    module = load(engine)
    path = write_patch(f"""
        patches:
          - target: {engine}.Block.forward
            edits:
              - match: |
                  if z > 100:
                          return -1
                append: "dumper.dump('z', z)"
    """)
    with apply_patches([path]):
        module.Block(0).forward(1)
    assert [(name, value) for name, value, _, _ in recorded] == [("z", 3)]


def test_ambiguous_anchor_is_refused_and_nothing_changes(engine, write_patch):
    module = load(engine)
    original = module.Block.reduce.__code__
    path = write_patch(f"""
        patches:
          - target: {engine}.Block.reduce
            edits:
              - match: "total = total + value"
                append: "pass"
              - match: "return total"
                prepend: "pass"
          - target: {engine}.Child.forward
            edits:
              - match: "return z"
                prepend: "pass"
    """)
    with pytest.raises(PatchAnchorError) as error:
        apply_patches([path]).install()
    assert "the match text is not in Child.forward" in str(error.value)
    assert "p.yaml:11:9: edit 1 (match, prepend)" in str(error.value)
    assert module.Block.reduce.__code__ is original  # all or nothing


def test_ambiguous_anchor_message(engine, write_patch):
    load(engine)
    path = write_patch(f"""
        patches:
          - target: {engine}.Block.forward
            edits:
              - match: "return z"
                prepend: "pass"
              - match: "return -1"
                prepend: "pass"
              - match: "pass"
                append: "pass"
    """)
    with pytest.raises(PatchAnchorError) as error:
        apply_patches([path]).install()
    message = str(error.value)
    assert message.startswith(f"{path}:9:9: edit 3 (match, append) of {engine}.Block.forward: the match text occurs 2 times")
    assert "add neighbouring lines to the match so that it occurs once" in message


def test_bound_methods_and_subclasses_see_the_patch(engine, write_patch, recorded):
    module = load(engine)
    bound = module.Child(1).forward  # bound before patching; calls Block.forward via super()
    path = write_patch(f"""
        patches:
          - target: {engine}.Block.forward
            edits:
              - at: entry
                prepend: "dumper.dump('x', x)"
    """)
    with apply_patches([path]):
        assert bound(2) == 1005
    assert bound(2) == 1005
    assert [name for name, *_ in recorded] == ["x"]


def test_closures_keep_their_cells(engine, write_patch, recorded):
    module = load(engine)
    bump = module.bump  # make_counter.<locals>.bump: a closure over ``count`` (nonlocal)
    assert bump(1) == 1
    path = write_patch(f"""
        patches:
          - target: {engine}.bump
            edits:
              - at: return
                prepend: "dumper.dump('count', __ret__)"
    """)
    with apply_patches([path]):
        assert bump(2) == 3
    assert bump(3) == 6
    assert [(name, value) for name, value, *_ in recorded] == [("count", 3)]


def test_restore_and_module_globals(engine, write_patch):
    module = load(engine)
    original = module.Block.forward.__wrapped__.__code__
    path = write_patch(f"""
        patches:
          - target: {engine}.Block.forward
            edits:
              - at: entry
                prepend: "dumper.dump('x', x)"
    """)
    with apply_patches([path]):
        assert module.Block.forward.__wrapped__.__code__ is not original
        assert module.dumper == "the engine's own dumper"
    assert module.Block.forward.__wrapped__.__code__ is original
    assert "__dumpcmp_dumper__" not in vars(module)


def test_two_files_on_one_function_compose_and_restore_in_any_order(engine, write_patch, recorded):
    module = load(engine)
    first = write_patch(f"""
        patches:
          - target: {engine}.Block.reduce
            edits:
              - at: entry
                prepend: "dumper.dump('first', values)"
    """, "first.yaml")
    second = write_patch(f"""
        patches:
          - target: {engine}.Block.reduce
            edits:
              - at: return
                prepend: "dumper.dump('second', __ret__)"
    """, "second.yaml")
    outer = apply_patches([first]).install()
    inner = apply_patches([second]).install()
    module.Block(0).reduce([1, 2])
    outer.remove()
    module.Block(0).reduce([3])
    inner.remove()
    module.Block(0).reduce([4])
    assert [(name, value) for name, value, *_ in recorded] == [("first", [1, 2]), ("second", 3), ("second", 3)]


def test_tracebacks_point_at_the_engine_file(engine, write_patch):
    module = load(engine)
    path = write_patch(f"""
        patches:
          - target: {engine}.Block.forward
            edits:
              - at: entry
                prepend: |
                  a = 1
                  b = 2
              - match: "y = x * self.__scale"
                prepend: "c = 3"
    """)
    with apply_patches([path]):
        with pytest.raises(TypeError) as error:
            module.Block(0).forward("text")
    frame = traceback.extract_tb(error.value.__traceback__)[-1]
    assert frame.filename == module.__file__
    assert frame.line == "z = y + 1"


def test_import_hook_patches_a_module_imported_later(engine, write_patch, recorded):
    assert engine not in sys.modules
    path = write_patch(f"""
        patches:
          - target: {engine}.Block.forward
            edits:
              - at: entry
                prepend: "dumper.dump('x', x)"
    """)
    with apply_patches([path]) as patcher:
        assert patcher.waiting_for == (engine,)
        module = importlib.import_module(engine)
        assert patcher.waiting_for == ()
        module.Block(0).forward(1)
    assert [name for name, *_ in recorded] == ["x"]


def test_import_hook_failure_fails_the_import_loudly(engine, write_patch, capsys):
    path = write_patch(f"""
        patches:
          - target: {engine}.Block.forward
            edits:
              - match: "this line is not there"
                prepend: "pass"
    """)
    with apply_patches([path]):
        with pytest.raises(PatchAnchorError):
            importlib.import_module(engine)
    assert f"dumpcmp: error: patching module {engine} on import failed" in capsys.readouterr().err


def test_unknown_attribute_and_inherited_method(engine, write_patch):
    load(engine)
    missing = write_patch(f"""
        patches:
          - target: {engine}.Block.forwrd
            edits: [{{at: entry, prepend: "pass"}}]
    """)
    with pytest.raises(PatchTargetError, match=r"class Block has no attribute 'forwrd'; did you mean forward\?"):
        apply_patches([missing]).install()
    inherited = write_patch(f"""
        patches:
          - target: {engine}.Child.reduce
            edits: [{{at: entry, prepend: "pass"}}]
    """, "inherited.yaml")
    with pytest.raises(PatchTargetError, match=rf"Child inherits 'reduce' from {engine}.Block.reduce; target the class"):
        apply_patches([inherited]).install()


def test_unknown_module(write_patch):
    path = write_patch("""
        patches:
          - target: no_such_engine_pkg.models.Block.forward
            edits: [{at: entry, prepend: "pass"}]
    """)
    with pytest.raises(PatchTargetError, match="no module named 'no_such_engine_pkg' is installed"):
        apply_patches([path]).install()
