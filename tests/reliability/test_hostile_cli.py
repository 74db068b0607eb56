"""Hostile and broken inputs to ls, compare, show and patch check, through the real CLI.

Each must end in a clean outcome: a one-line ``dumpcmp: error: ...`` and exit 2
(or, where part of the input is usable, a report that names what is broken), and
never a traceback, never code execution.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import struct
import subprocess
import sys

import traceback

import pytest
from typer.testing import CliRunner

from comparator.cli import app
from tests.helpers.procs import clean_env, dump_run

CHILD = """
import torch
from dumper import dumper
torch.manual_seed(0)
for layer in range(3):
    with dumper.tags(layer=layer):
        dumper.dump("hidden", torch.randn(4, 8), dims="t h")
"""


# NOTE: the damaged runs are copies of good_run (same run id): compare needs --allow-self to take them.
def dumpcmp(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the CLI in-process (fast); an escaped exception shows up as a traceback in stderr."""
    result = CliRunner().invoke(app, list(args))
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        stderr += "Traceback (most recent call last):\n" + "".join(traceback.format_exception(result.exception))
    return subprocess.CompletedProcess(args, result.exit_code, result.stdout, stderr)


def test_the_real_console_entry_point(good_run, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "comparator.cli", "ls", str(tmp_path / "nothing")],
                          env=clean_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.startswith("dumpcmp: error:") and "Traceback" not in proc.stderr


def assert_clean_failure(result, *, contains: str, code: int = 2):
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == code, (result.returncode, result.stdout[-2000:], result.stderr)
    if code == 2:
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert lines and lines[-1].startswith("dumpcmp: error:"), result.stderr
    assert contains in result.stderr + result.stdout, (contains, result.stderr, result.stdout[-2000:])


@pytest.fixture(scope="module")
def good_run(tmp_path_factory):
    path = tmp_path_factory.mktemp("hostile") / "good"
    dump_run(path, CHILD, DUMPCMP_FILE_MB="0.0001")  # one data file per record
    return path


@pytest.fixture
def broken(good_run, tmp_path):
    path = tmp_path / "broken"
    shutil.copytree(good_run, path)
    rank = path / "rank-00000"
    data = sorted(rank.glob("data-*.safetensors"))
    return path, rank, data


def test_truncated_data_files(broken, good_run):
    path, rank, data = broken
    for file in data:
        raw = file.read_bytes()
        file.write_bytes(raw[: len(raw) // 2])
    assert dumpcmp("ls", str(path)).returncode == 0  # ls reads only the index
    # Nothing usable on the target side: exit 2, naming a broken file.
    result = dumpcmp("compare", str(good_run), str(path), "--allow-self")
    assert_clean_failure(result, contains=data[0].parent.name, code=2)


def test_bit_flipped_headers(broken, good_run):
    path, rank, data = broken
    for file in data:
        raw = bytearray(file.read_bytes())
        raw[10] ^= 0xFF
        file.write_bytes(bytes(raw))
    result = dumpcmp("compare", str(good_run), str(path), "--allow-self")
    assert_clean_failure(result, contains=data[0].parent.name, code=2)


def test_one_broken_file_among_good_ones(broken, good_run):
    path, rank, data = broken
    raw = data[0].read_bytes()
    data[0].write_bytes(raw[: len(raw) // 2])
    as_json = json.loads(dumpcmp("compare", str(good_run), str(path), "--allow-self", "--format", "json").stdout)
    errored = [r for r in as_json["results"] if r["status"] == "error"]
    assert errored and all(data[0].name in json.dumps(r) for r in errored)
    assert as_json["summary"]["passed"] + len(errored) == as_json["summary"]["total"]


def test_absurd_shape_in_safetensors_header(broken, good_run):
    path, rank, data = broken
    raw = data[0].read_bytes()
    (header_len,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + header_len])
    key = next(k for k in header if k != "__metadata__")
    header[key]["shape"] = [2**40, 2**40]
    encoded = json.dumps(header).encode()
    data[0].write_bytes(struct.pack("<Q", len(encoded)) + encoded + raw[8 + header_len :])
    result = dumpcmp("show", str(path), "hidden", "--step", "0", "--tags", "layer=0")
    assert "Traceback" not in result.stderr and result.returncode in (0, 2)
    # The other tensors of that file are still compared; the broken one is an error naming the file.
    result = dumpcmp("compare", str(good_run), str(path), "--allow-self")
    assert_clean_failure(result, contains="1 errors", code=1)
    as_json = json.loads(dumpcmp("compare", str(good_run), str(path), "--allow-self", "--format", "json").stdout)
    (errored,) = [r for r in as_json["results"] if r["status"] == "error"]
    assert data[0].name in json.dumps(errored)


def test_index_pointing_outside_the_run(broken, good_run, tmp_path):
    path, rank, _ = broken
    secret = tmp_path / "secret.safetensors"
    shutil.copy(next(rank.glob("data-*.safetensors")), secret)
    lines = (rank / "index.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    for record in records:
        record["file"] = "../../secret.safetensors"
    (rank / "index.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    listing = dumpcmp("ls", str(path), "--format", "json")
    assert listing.returncode == 0
    problems = json.loads(listing.stdout)["problems"]
    assert any("outside its rank directory" in p for p in problems)
    result = dumpcmp("compare", str(good_run), str(path), "--allow-self")
    assert "Traceback" not in result.stderr and result.returncode in (1, 2, 3)


def test_wrong_schema_version(broken, good_run):
    path, _, _ = broken
    info = json.loads((path / "run.json").read_text())
    info["schema_version"] = 7
    (path / "run.json").write_text(json.dumps(info))
    for args in (("ls", str(path)), ("compare", str(good_run), str(path), "--allow-self"), ("show", str(path), "hidden")):
        assert_clean_failure(dumpcmp(*args), contains="run schema version 7")


def test_sglang_pickle_is_refused(tmp_path, good_run):
    exp = tmp_path / "sglang" / "exp"
    exp.mkdir(parents=True)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    with open(exp / "step=0___rank=0___dump_index=1___name=hidden___layer=0.pt", "wb") as handle:
        pickle.dump({"value": Evil(), "meta": {}}, handle)
    for args in (("ls", str(tmp_path / "sglang")), ("compare", str(good_run), str(tmp_path / "sglang")),
                 ("show", str(tmp_path / "sglang"), "hidden")):
        assert_clean_failure(dumpcmp(*args), contains="refused")
    assert not marker.exists()


BOMB = "a: &a [x, x]\n" + "".join(
    f"b{i}: &b{i} [*{'a' if i == 0 else f'b{i - 1}'}, *{'a' if i == 0 else f'b{i - 1}'}]\n" for i in range(40)
)


@pytest.mark.parametrize("text, message, patch_message", [
    (BOMB, "more than 32 YAML aliases", "more than 32 YAML aliases"),
    # Patch files are validated node by node, so the tag is never constructed either.
    ("!!python/object/apply:os.system ['touch /tmp/dumpcmp-pwned']", "python/object/apply",
     "the top level must be a mapping"),
    ("patches: [", "YAML", "YAML"),
])
def test_hostile_yaml(tmp_path, good_run, text, message, patch_message):
    path = tmp_path / "evil.yaml"
    path.write_text(text)
    assert_clean_failure(dumpcmp("patch", "check", str(path)), contains=patch_message)
    assert_clean_failure(dumpcmp("compare", str(good_run), str(good_run), "--thresholds", str(path)), contains=message)
    assert_clean_failure(dumpcmp("compare", str(good_run), str(good_run), "--name-map", str(path)), contains=message)
    assert not os.path.exists("/tmp/dumpcmp-pwned")
