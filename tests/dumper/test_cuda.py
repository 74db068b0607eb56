"""The CUDA capture path: exact copies, no host sync per dump, safe against memory reuse.
(Dumps under CUDA-graph capture: tests/dumper/test_cuda_graphs.py.)

Skipped without a GPU (CI has none); run on a GPU machine and recorded in docs/gpu.md.
"""

from __future__ import annotations

import time

import pytest
import torch

from dumper.api import Dumper
from dumper.reader import open_run
from dumper.stats import checksum, tensor_stats
from tests.dumper.cases import make_cases

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (CI has none)")


def _queue_long_kernel(milliseconds: float = 500.0) -> None:
    """Queue one kernel that spins for about ``milliseconds`` on the current stream."""
    torch.cuda._sleep(1000)  # NOTE: the first launch loads the kernel; keep it out of the calibration
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    torch.cuda._sleep(10**7)
    end.record()
    end.synchronize()
    cycles_per_ms = 10**7 / start.elapsed_time(end)
    torch.cuda._sleep(int(cycles_per_ms * milliseconds))


def _dumper(run_dir) -> Dumper:
    local = Dumper()
    local.configure(dir=str(run_dir), run_id="cuda-test")
    return local


def _records_by_name(run_dir):
    with open_run(run_dir) as run:
        return {record.name: (record, run.load(record, verify=True)) for record in run.records}


def test_cuda_tensors_round_trip_exactly(tmp_path):
    cases = {name: tensor.cuda() for name, tensor in make_cases().items()}
    cases["big_bf16"] = torch.randn(3, 1 << 20, device="cuda", dtype=torch.bfloat16)
    cases["strided_view"] = cases["big_bf16"][:, ::7]
    local = _dumper(tmp_path / "run")
    for name, tensor in cases.items():
        local.dump(name, tensor, kind="cuda")
    local.close()
    loaded = _records_by_name(tmp_path / "run")
    assert set(loaded) == set(cases)
    for name, tensor in cases.items():
        record, value = loaded[name]
        expected = tensor.cpu()
        assert value.dtype == expected.dtype and tuple(value.shape) == tuple(expected.shape), name
        # Bitwise, NaN payloads included; the checksum was computed from the pinned copy.
        assert checksum(value) == checksum(expected.contiguous()) == record.checksum, name
        assert record.stats == tensor_stats(expected), name


def test_dump_does_not_wait_for_the_device(tmp_path):
    local = _dumper(tmp_path / "run")
    local.dump("warmup", torch.ones(1 << 20, device="cuda"))  # writer thread, pinned arena
    local.flush()
    source = torch.randn(1 << 22, device="cuda")
    # NOTE: allocated and launched once before the long kernel: with CUDA's lazy module
    # loading, the first launch of a kernel waits for the device to go idle (the
    # test's own kernel, not the dumper's).
    produced = torch.empty_like(source)
    torch.mul(source, 2, out=produced)
    done = torch.cuda.Event()
    _queue_long_kernel(500.0)
    torch.mul(source, 2, out=produced)  # queued behind the long kernel
    done.record()
    queued = time.perf_counter()
    for index in range(10):
        local.dump("produced", produced, index=index)
    dumped = time.perf_counter()
    still_busy = not done.query()
    torch.cuda.synchronize()
    drained = time.perf_counter()
    timing = (f"10 dumps {1e3 * (dumped - queued):.2f} ms on the host, "
              f"then the GPU was busy {1e3 * (drained - dumped):.0f} ms more")
    print(timing)
    # Every dump call returned while the producing kernel was still queued.
    assert still_busy and dumped - queued < 0.05, timing
    local.close()
    expected = checksum((source * 2).cpu())
    with open_run(tmp_path / "run") as run:
        copies = [run.load(r, verify=True) for r in run.records if r.name == "produced"]
    assert len(copies) == 10
    # The side stream's copy waited for the engine's stream: it saw the finished product.
    assert all(checksum(copy) == expected for copy in copies)


def test_freed_source_memory_is_not_reused_before_the_copy(tmp_path):
    local = _dumper(tmp_path / "run")
    local.dump("warmup", torch.ones(1 << 20, device="cuda"))
    local.flush()
    numel = 1 << 22
    values = torch.arange(numel, device="cuda", dtype=torch.float32)
    expected = checksum(values.cpu())
    source = torch.empty_like(values)
    _queue_long_kernel(500.0)  # the side stream's copy waits behind this
    source.copy_(values)
    old_pointer = source.data_ptr()
    local.dump("source", source)
    del source  # the engine frees it at once ...
    reuse = torch.empty(numel, device="cuda", dtype=torch.float32)
    reuse.fill_(-1.0)  # ... and writes new data into whatever block it gets
    # record_stream keeps the block out of the allocator until the copy has run.
    assert reuse.data_ptr() != old_pointer
    local.close()
    (record, value), = [item for item in _records_by_name(tmp_path / "run").values() if item[0].name == "source"]
    assert checksum(value) == expected
