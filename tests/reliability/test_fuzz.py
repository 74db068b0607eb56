"""Fuzz the run reader, the comparator and the YAML loaders: only clean, typed errors.

Every mutated input must either work or raise a DumpcmpError (the CLI's one-line
exit 2); any other exception is a bug. Thousands of examples run in CI time.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from comparator import compare
from comparator.options import load_name_map
from comparator.judge.thresholds import load_thresholds
from dumper.errors import DumpcmpError
from dumper.reader import open_run
from patches.spec import parse_patch_text
from tests.helpers.procs import dump_run

FUZZ = settings(max_examples=1000, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)

CHILD = """
import torch
from dumper import dumper
torch.manual_seed(0)
for step in range(2):
    for layer in range(2):
        with dumper.tags(layer=layer):
            dumper.dump("hidden", torch.randn(4, 8), dims="t h")
            dumper.dump("ids", torch.arange(4), dims="t")
    dumper.step()
"""


@pytest.fixture(scope="module")
def good_run(tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzz") / "run"
    dump_run(path, CHILD)
    logging.getLogger("dumper").setLevel(logging.CRITICAL)
    return path


def _files(run_dir):
    rank = os.path.join(run_dir, "rank-00000")
    data = sorted(f for f in os.listdir(rank) if f.endswith(".safetensors"))
    return os.path.join(run_dir, "run.json"), os.path.join(rank, "rank.json"), os.path.join(rank, "index.jsonl"), [
        os.path.join(rank, f) for f in data
    ]


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=8,
)
RECORD_FIELDS = ["seq", "step", "name", "tags", "rank", "world_size", "parallel", "dtype", "shape", "dims",
                 "stats", "checksum", "file", "key", "nbytes"]
HOSTILE_VALUES = st.sampled_from([
    "../../../../etc/passwd", "/etc/passwd", "..", "data-000000.safetensors", [10**12, 10**12], [-1], [],
    "complex128", "float8_e4m3fn", "not-a-dtype", 2**63, -5, None, {"tp": {"rank": 5, "size": 2}}, "t h[zz]",
])


@st.composite
def mutations(draw):
    kind = draw(st.sampled_from(["index_bytes", "index_field", "data_flip", "data_truncate", "run_json", "rank_json",
                                 "index_line_drop"]))
    return kind, draw(st.randoms(use_true_random=False))


def _mutate(run_dir, kind, rng, draw_value):
    run_json, rank_json, index, data_files = _files(run_dir)
    if kind == "index_bytes":
        raw = bytearray(open(index, "rb").read())
        for _ in range(rng.randint(1, 8)):
            raw[rng.randrange(len(raw))] = rng.randrange(256)
        open(index, "wb").write(bytes(raw))
    elif kind == "index_field":
        lines = open(index).read().splitlines()
        number = rng.randrange(len(lines))
        record = json.loads(lines[number])
        record[rng.choice(RECORD_FIELDS)] = draw_value
        lines[number] = json.dumps(record)
        open(index, "w").write("\n".join(lines) + "\n")
    elif kind == "index_line_drop":
        lines = open(index).read().splitlines()
        del lines[rng.randrange(len(lines))]
        open(index, "w").write("\n".join(lines) + "\n")
    elif kind == "data_flip":
        target = rng.choice(data_files)
        raw = bytearray(open(target, "rb").read())
        for _ in range(rng.randint(1, 4)):
            raw[rng.randrange(len(raw))] ^= 1 << rng.randrange(8)
        open(target, "wb").write(bytes(raw))
    elif kind == "data_truncate":
        target = rng.choice(data_files)
        raw = open(target, "rb").read()
        open(target, "wb").write(raw[: rng.randrange(len(raw))])
    elif kind == "run_json":
        data = json.load(open(run_json))
        data[rng.choice(list(data) + ["schema_version"])] = draw_value
        open(run_json, "w").write(json.dumps(data))
    elif kind == "rank_json":
        open(rank_json, "w").write(json.dumps(draw_value))


def _read_everything(run_dir):
    with open_run(run_dir) as run:
        for record in run.records:
            try:
                run.load(record, verify=True)
            except DumpcmpError:
                pass


@contextlib.contextmanager
def mutated_copy(good_run, mutation, value):
    kind, rng = mutation
    with tempfile.TemporaryDirectory() as scratch:
        run_dir = os.path.join(scratch, "run")
        shutil.copytree(good_run, run_dir)
        _mutate(run_dir, kind, rng, value)
        yield run_dir


@FUZZ
@given(mutation=mutations(), value=st.one_of(JSON_VALUES, HOSTILE_VALUES))
def test_reader_never_crashes(good_run, mutation, value):
    with mutated_copy(good_run, mutation, value) as run_dir:
        try:
            _read_everything(run_dir)
        except DumpcmpError:
            pass


@settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(mutation=mutations(), value=st.one_of(JSON_VALUES, HOSTILE_VALUES))
def test_compare_never_crashes(good_run, mutation, value):
    with mutated_copy(good_run, mutation, value) as run_dir:
        try:
            report = compare(good_run, run_dir)
        except DumpcmpError:
            return
        assert report.exit_code in (0, 1, 2, 3)


YAML_TEXT = st.one_of(
    st.text(max_size=200),
    st.lists(st.sampled_from([
        "patches:", "- target: a.b.C.f", "  edits:", "  - match: x = 1", "    prepend: y()", "rules:", "- name: mlp",
        "  rel_diff: 1e-3", "  norm_ratio: [0.9, 1.1]", "defaults:", "  bfloat16: {rel_diff: 2}", "names:",
        "  a: b", "&a [*a]", "!!python/object:os.system", "? [1, 2]", "- *x", "--- !tag", "{", "]", "%YAML 1.1",
        "  dump: {name: x, expr: y}", "  at: return", "  tags: {layer: self.i}", "step: true", "\t",
    ]), max_size=12).map("\n".join),
)


def _load_yaml_everywhere(text: str) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        path = os.path.join(scratch, "f.yaml")
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(text)
        for loader in (load_thresholds, load_name_map, lambda p: parse_patch_text(open(p).read(), path=p)):
            try:
                loader(path)
            except DumpcmpError:
                pass


@FUZZ
@given(text=YAML_TEXT)
def test_yaml_loaders_never_crash(text):
    _load_yaml_everywhere(text)


@pytest.mark.parametrize("text, message", [
    ("a: &a [x, x]\n" + "".join(f"b{i}: &b{i} [*{'a' if i == 0 else f'b{i-1}'}, *{'a' if i == 0 else f'b{i-1}'}]\n" for i in range(20)),
     "more than 32 YAML aliases"),
    ("[" * 100 + "]" * 100, "nested deeper than 64 levels"),
    ("!!python/object/apply:os.system ['touch /tmp/dumpcmp-pwned']", "could not determine a constructor"),
])
def test_hostile_yaml_is_refused_clearly(text, message):
    for loader in (load_thresholds, load_name_map):
        with tempfile.TemporaryDirectory() as scratch:
            path = os.path.join(scratch, "f.yaml")
            open(path, "w").write(text)
            with pytest.raises(DumpcmpError, match=message.split(" (")[0].replace("[", r"\[")):
                loader(path)
    assert not os.path.exists("/tmp/dumpcmp-pwned")


# ------------------------------------------------------------- issue 21: more kinds of input
# Tag values, settings, regex options and file kinds. Each target is cheap (no process
# is started per example), so a few hundred examples each stay within seconds in CI.

QUICK = settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)


class _Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("no str")


def _circular() -> list:
    loop: list = []
    loop.append(loop)
    return loop


TAG_ATOMS = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**80), 2**80), st.floats(), st.text(max_size=20),
    st.sampled_from([float("nan"), float("-inf"), 2**63, "x" * 5000]),
    st.builds(lambda v: __import__("numpy").float32(v), st.floats(width=32)),
    st.builds(lambda n: __import__("torch").ones(n), st.integers(0, 3)),
    st.builds(_Unprintable), st.builds(_circular), st.builds(object), st.frozensets(st.integers(0, 5), max_size=3),
)
TAG_VALUES = st.recursive(TAG_ATOMS, lambda inner: st.lists(inner, max_size=3) | st.tuples(inner, inner)
                          | st.dictionaries(st.one_of(st.text(max_size=4), st.integers(0, 3)), inner, max_size=3),
                          max_leaves=12)


@QUICK
@given(tags=st.dictionaries(st.text(min_size=1, max_size=6), TAG_VALUES, max_size=4))
def test_tag_values_are_written_as_json_the_reader_takes_or_refused_alone(tags):
    from dumper.format import IndexRecord, TensorStats
    from dumper.record_check import BadRecord, check_tags

    try:
        checked = check_tags(tags)
    except BadRecord:
        return  # the record alone is skipped (tests/reliability/test_data_loss.py)
    record = IndexRecord(seq=0, step=0, name="x", tags=checked.tags, rank=0, world_size=1, parallel={},
                         dtype="float32", shape=(1,), dims=None,
                         stats=TensorStats(numel=1, min=0.0, max=0.0, mean=0.0, abs_mean=0.0, std=0.0, l2=0.0, nan=0, inf=0),
                         checksum="crc32:00000000", file=None, key=None, nbytes=4, time=0.0)
    line = record.to_json_line()  # allow_nan=False: raises for anything JSON cannot hold
    assert IndexRecord.from_json(json.loads(line)).tags == json.loads(json.dumps(checked.tags))


SETTING_TEXT = st.one_of(st.text(max_size=12), st.sampled_from(
    ["nan", "inf", "-inf", "1e400", "-1", "0", "0.0000001", "1e-300", "99999999999999999999", "1_000", " 2 ", "0x10"]))


@QUICK
@given(name=st.sampled_from(["DUMPCMP_QUEUE_MB", "DUMPCMP_FILE_MB", "DUMPCMP_GRAPH_MB", "DUMPCMP_ESCALATE_STEPS",
                             "DUMPCMP_ONLINE_RTOL", "DUMPCMP_OVERWRITE", "DUMPCMP_ENABLE", "DUMPCMP_MODE",
                             "DUMPCMP_FILTER", "DUMPCMP_COLLECTIVES"]), text=SETTING_TEXT)
def test_every_setting_gives_a_config_or_a_config_error(name, text):
    from dumper.config import KNOWN_ENV, config_from_env
    from dumper.errors import ConfigError

    if name not in KNOWN_ENV:
        return
    environ = {"DUMPCMP_DIR": "/nonexistent/run", name: text}
    if name in ("DUMPCMP_ESCALATE_STEPS", "DUMPCMP_ONLINE_RTOL"):
        environ["DUMPCMP_AGAINST"] = "/nonexistent/baseline"
    try:
        config = config_from_env(environ)
    except ConfigError:
        return
    assert 0 < config.queue_bytes <= 1 << 40 and 0 < config.file_bytes <= 1 << 40


REGEX_TEXT = st.one_of(
    st.text(max_size=40),
    st.lists(st.sampled_from(["(", ")", "a", "+", "*", "?", "{2}", "{1,99999}", "|", "[a-z]", "\\d", "(?=", "(?<=x)",
                              "\\1", "(?P<n>", "^", "$", ".", "{", "]", "(?:", "\\", "*?", "++"]), max_size=30).map("".join),
    st.integers(1, 200).map(lambda n: "(" * n + "a" + ")" * n),
)


@QUICK
@given(pattern=REGEX_TEXT, names=st.lists(st.text(max_size=60) | st.just("a" * 3000 + "!"), max_size=3))
def test_every_regex_option_compiles_safely_or_says_why(pattern, names):
    from comparator.options import compile_pattern
    from dumper.filters import DumpFilter

    for build in (lambda: compile_pattern(pattern, "--names"), lambda: DumpFilter(names=(pattern,))):
        try:
            built = build()
        except DumpcmpError:
            continue
        for name in names:  # matching is linear (RE2) or free of nested repeats: it ends
            built.search(name) if not isinstance(built, DumpFilter) else built.keeps_name(name)


FILE_KINDS = ["fifo", "directory", "symlink_out", "symlink_loop", "empty", "sparse_huge", "latin1", "deep_json",
              "long_line"]


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(target=st.sampled_from(["run.json", "rank-00000/rank.json", "rank-00000/index.jsonl", "data"]),
       kind=st.sampled_from(FILE_KINDS))
def test_any_run_file_may_be_any_kind_of_file(good_run, target, kind):
    with tempfile.TemporaryDirectory() as scratch:
        run_dir = os.path.join(scratch, "run")
        shutil.copytree(good_run, run_dir)
        path = _files(run_dir)[3][0] if target == "data" else os.path.join(run_dir, target)
        os.unlink(path)
        if kind == "fifo":
            os.mkfifo(path)
        elif kind == "directory":
            os.mkdir(path)
        elif kind == "symlink_out":
            os.symlink(os.path.join(good_run, os.path.relpath(path, run_dir)), path)
        elif kind == "symlink_loop":
            os.symlink(path, path)
        elif kind == "sparse_huge":
            with open(path, "wb") as handle:
                handle.truncate(1 << 42)
        else:
            content = {"empty": b"", "latin1": b'{"name": "caf\xe9"}\n', "deep_json": b"[" * 100_000 + b"]" * 100_000,
                       "long_line": b'{"x": "' + b"y" * (2 << 20) + b'"}\n'}[kind]
            with open(path, "wb") as handle:
                handle.write(content)
        try:
            _read_everything(run_dir)
        except DumpcmpError:
            pass
