r"""Forward-hook capture for code one cannot patch.

    with capture_modules(model, include=r"layers\.\d+\.(self_attn|mlp)$", inputs=True):
        model(input_ids)

Every matching submodule dumps its outputs as ``<qualified name>.output`` (tuples
as ``.output.0``, ``.output.1``, ...) and, with ``inputs=True``, its positional
inputs as ``<qualified name>.input.N``. Layer indices found in the qualified name
(``layers.3``) become a ``layer`` tag. The hooks are removed on exit, always.
"""

from __future__ import annotations

import contextlib
import re
from typing import TYPE_CHECKING, Any, Iterator

from dumper.api import Dumper, dumper as default_dumper
from dumper.errors import ConfigError
from dumper.patterns import compile_user_regex

if TYPE_CHECKING:
    from torch import nn

_LAYER_IN_NAME = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks)\.(\d+)(?:\.|$)")


@contextlib.contextmanager
def capture_modules(
    model: "nn.Module",
    *,
    include: str = r".*",
    exclude: str | None = None,
    inputs: bool = False,
    outputs: bool = True,
    dims: dict[str, str] | None = None,
    target: Dumper | None = None,
) -> Iterator[list[str]]:
    """Attach forward hooks to the matching submodules; yields their qualified names.

    ``dims`` maps a regex over qualified names to a dims annotation for their outputs.
    """
    owner = target if target is not None else default_dumper
    include_re = compile_user_regex(include, "hook include", ConfigError)
    exclude_re = compile_user_regex(exclude, "hook exclude", ConfigError) if exclude else None
    dims_res = [(compile_user_regex(p, "hook dims pattern", ConfigError), a) for p, a in (dims or {}).items()]
    handles = []
    names: list[str] = []
    try:
        for qualname, module in model.named_modules():
            if not qualname or not include_re.search(qualname):
                continue
            if exclude_re is not None and exclude_re.search(qualname):
                continue
            tags: dict[str, Any] = {}
            layer = _LAYER_IN_NAME.search(qualname)
            if layer is not None:
                tags["layer"] = int(layer.group(1))
            module_dims = next((a for pattern, a in dims_res if pattern.search(qualname)), None)
            handles.append(module.register_forward_hook(_make_hook(owner, qualname, tags, inputs, outputs, module_dims)))
            names.append(qualname)
        yield names
    finally:
        for handle in handles:
            handle.remove()


def _make_hook(owner: Dumper, qualname: str, tags: dict[str, Any], inputs: bool, outputs: bool, dims: str | None):
    def hook(module: Any, args: tuple[Any, ...], result: Any) -> None:
        if not owner.enabled:
            return
        if inputs:
            for position, value in enumerate(args):
                owner.dump(f"{qualname}.input.{position}", value, **tags)
        if outputs:
            owner.dump(f"{qualname}.output", result, dims=dims, **tags)

    return hook
