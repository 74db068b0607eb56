"""An observer-sensitive toy for the observer check: its output depends on how long a step took.

With dumping on, each `dumper.dump` of a 16 MB tensor copies it (milliseconds); with
dumping off it returns at once. The output doubles when the step was slow: dumping
changes the result, as a hidden race would. Usage: python observer_toy.py OUT.safetensors
"""
import sys
import time

import torch
from safetensors.torch import save_file

from dumper import dumper

activations = torch.randn(4_000_000)
timings = []
for _ in range(3):
    start = time.perf_counter()
    dumper.dump("activations", activations)
    timings.append(time.perf_counter() - start)
slow = min(timings) > 1e-3  # a "race": the result depends on the step's timing
print(f"step took {min(timings) * 1e3:.3f} ms", file=sys.stderr)
save_file({"out": torch.arange(8.0) * (2.0 if slow else 1.0)}, sys.argv[1])
