"""The stats-first workflow of docs/scale.md, end to end on a run written by the real dumper.

benchmarks/stats_first.py at a small size (4 ranks: tp 2 x ep 2, 4 layers, a doubled
EP reduction from layer 2 on): a stats run finds the region, a tensor run of that
region alone finds the tensor and the cause, for a fraction of a full tensor run's bytes.
"""

from __future__ import annotations

from benchmarks.stats_first import Layout, Model, run_workflow


def test_stats_then_tensors_of_the_region_finds_the_bug(tmp_path):
    steps = {step.name: step for step in run_workflow(str(tmp_path), Layout(2, 2), Model(layers=4, bug_layer=2),
                                                        full=True)}
    stats = steps["compare stats"].detail
    # Stats cannot add up the EP partial sums, so the first divergence stats can see is
    # the layer's replicated output: the region is right, the tensor not yet.
    assert stats["exit"] == 1
    assert (stats["first"]["name"], stats["first"]["tags"], stats["first"]["step"]) == ("layer.out", {"layer": 2}, 0)
    region = steps["tensor run of layer=2, target"]
    assert region.detail["records"] == 4 * 2 * 6  # ranks x steps x tensors of layer 2 only
    tensors = steps["compare tensors"].detail
    assert (tensors["first"]["name"], tensors["first"]["tags"]) == ("moe.expert_out", {"layer": 2})
    assert tensors["first"]["hint"].startswith("target = 2 x baseline")
    full = steps["(tensor run of everything, target)"]
    assert full.detail["records"] == 4 * region.detail["records"]
    assert region.nbytes < full.nbytes / 3
    assert steps["stats run, target"].nbytes < region.nbytes
