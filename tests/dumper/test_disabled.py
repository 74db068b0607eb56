"""With dumping off, dump() does nothing: no files, no callable evaluated, no torch import."""

from __future__ import annotations

import json

from tests.helpers.procs import clean_env, run_python


def test_disabled_dump_is_a_no_op(tmp_path):
    code = f"""
    import os, sys, json
    from dumper import dumper
    assert not dumper.enabled
    called = []
    dumper.dump("x", lambda: called.append(1))
    with dumper.tags(layer=1):
        dumper.dump("y", object())
    dumper.step()
    print(json.dumps({{"called": called, "torch": "torch" in sys.modules, "files": os.listdir({str(tmp_path)!r})}}))
    """
    out = run_python(code, env=clean_env())
    result = json.loads(out.stdout)
    assert result == {"called": [], "torch": False, "files": []}
    assert out.stderr == ""


def test_configured_but_not_enabled(tmp_path):
    run_dir = tmp_path / "run"
    code = """
    import torch
    from dumper import dumper
    dumper.dump("before", torch.ones(2))
    dumper.enable()
    dumper.dump("after", torch.ones(2))
    """
    run_python(code, env=clean_env(DUMPCMP_DIR=str(run_dir), DUMPCMP_ENABLE="0"))
    lines = (run_dir / "rank-00000" / "index.jsonl").read_text().splitlines()
    assert [json.loads(line)["name"] for line in lines] == ["after"]
