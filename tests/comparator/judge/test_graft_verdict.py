"""The graft verdict (gone, moved, unchanged) on hand-built results in execution order."""

from __future__ import annotations

from comparator.judge.graft import graft_verdict
from comparator.matching import tags_key
from comparator.results import TensorResult


def result(name: str, step: int, status: str, layer: int = 0, hint: str | None = None) -> TensorResult:
    tags = {"layer": layer}
    return TensorResult(name=name, step=step, tags=tags, status=status, hint=hint,  # type: ignore[arg-type]
                        keys=((name, step, tags_key(tags)),))


def key(name: str, step: int, layer: int = 0):
    return (name, step, tags_key({"layer": layer}))


def test_nothing_grafted_gives_no_verdict():
    assert graft_verdict([result("a", 0, "fail")], frozenset()) is None


def test_gone_moved_and_unchanged():
    grafted = frozenset({key("moe", 0, 1), key("moe", 1, 1)})
    gone = [result("attn", 0, "pass", 1), result("moe", 0, "pass", 1), result("logits", 0, "pass")]
    verdict = graft_verdict(gone, grafted)
    assert verdict.outcome == "gone" and verdict.graft_point == "moe[layer=1]@step0" and verdict.grafted == 1

    moved = [result("moe", 0, "pass", 1), result("mlp", 0, "fail", 2, hint="target = 2 x baseline"),
             result("logits", 0, "fail")]
    verdict = graft_verdict(moved, grafted)
    assert verdict.outcome == "moved" and verdict.next_divergence.name == "mlp"
    assert "target = 2 x baseline" in verdict.detail

    upstream = [result("attn", 0, "fail", 1), result("moe", 0, "pass", 1)]
    assert graft_verdict(upstream, grafted).outcome == "unchanged"
    assert "upstream" in graft_verdict(upstream, grafted).detail

    other_step = [result("moe", 0, "pass", 1), result("moe", 2, "fail", 1)]
    verdict = graft_verdict(other_step, grafted)
    assert verdict.outcome == "unchanged" and "drop step=" in verdict.detail

    # the same divergence as without the graft: the graft point was not the cause
    healthy = [result("moe", 0, "pass", 1), result("mlp", 0, "fail", 2)]
    assert graft_verdict(healthy, grafted, previous="mlp[layer=2]@step0").outcome == "unchanged"
