"""The host buffer pools behind snapshots (CPU-testable; the pinned arena is pinned only on CUDA)."""

from __future__ import annotations

import random

import torch

from dumper.snapshot import PinnedRing, Snapshotter


def test_ring_hands_out_disjoint_ranges_and_reuses_them_in_order():
    ring = PinnedRing(4096, pinned=False)
    a, token_a = ring.take(1000)
    b, token_b = ring.take(1000)
    c, token_c = ring.take(1500)
    assert ring.take(1000) is None  # 3 x 512-aligned blocks: 1024 + 1024 + 1536 of 4096, then no room at the end
    ranges = sorted((t.data_ptr(), t.data_ptr() + t.numel()) for t in (a, b, c))
    assert all(end <= start for (_, end), (start, _) in zip(ranges, ranges[1:]))
    ring.give(token_b)  # out of order: nothing freed before a
    assert ring.take(1000) is None
    ring.give(token_a)  # a and b freed: the front of the arena wraps around
    d, _ = ring.take(2000)
    assert d.data_ptr() == a.data_ptr()


def test_ring_never_overlaps_live_ranges_under_random_use():
    rng = random.Random(0)
    ring = PinnedRing(1 << 16, pinned=False)
    live = []
    for _ in range(2000):
        if live and (rng.random() < 0.45 or len(live) > 20):
            view, token, _ = live.pop(rng.randrange(len(live)) if rng.random() < 0.2 else 0)
            ring.give(token)
            continue
        nbytes = rng.randrange(1, 9000)
        taken = ring.take(nbytes)
        if taken is None:
            continue
        view, token = taken
        assert view.numel() == nbytes
        span = (view.data_ptr(), view.data_ptr() + nbytes)
        for _, _, other_span in live:
            assert span[1] <= other_span[0] or other_span[1] <= span[0]
        live.append((view, token, span))


def test_cpu_snapshots_are_private_copies():
    snapshotter = Snapshotter(pool_bytes=1 << 20)
    source = torch.arange(10.0)
    snapshot = snapshotter.take(source)
    source.fill_(-1)
    assert torch.equal(snapshot.wait(), torch.arange(10.0))
    snapshot.release()
