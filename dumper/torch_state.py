"""What torch is doing right now, asked without importing it (the dumper stays cheap to import)."""

from __future__ import annotations

import sys
from typing import Any

def compiling() -> bool:
    """True while torch.compile's dynamo traces the caller; never imports torch."""
    torch = sys.modules.get("torch")
    return torch is not None and torch.compiler.is_compiling()


def capturing() -> bool:
    """Is this thread's current CUDA stream capturing a graph? (False, cheaply, without CUDA.)"""
    torch = sys.modules.get("torch")
    return torch is not None and torch.cuda.is_initialized() and torch.cuda.is_current_stream_capturing()


def is_tensor(value: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)
