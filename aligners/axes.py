"""Axis alignment driven by dims names: bring the target's layout to the baseline's.

``t (h d)`` (one dim of h*d values) meets ``t h d``, and ``h t`` meets ``t h``: both
sides are viewed as their atomic named dims, the target's are permuted into the
baseline's order, then grouped as the baseline's are. Only the names of the dims
matter here (shards and the ``#`` comment were already used by the unsharder); they
come parsed, as :class:`dumper.dims.DimsSpec` (the one parser of the grammar).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from aligners.errors import AxisAlignmentError

if TYPE_CHECKING:
    import torch

    from dumper.dims import DimsSpec

Groups = tuple[tuple[str, ...], ...]


def dim_names(dims: DimsSpec) -> Groups:
    """``t (h[tp] d) # tp:replicated`` -> ``(("t",), ("h", "d"))``."""
    return tuple(dim.parts for dim in dims.dims)


def dim_index(dims: DimsSpec | None, name: str) -> int | None:
    """Index of the dim called ``name`` (not inside a group), or None."""
    if dims is None:
        return None
    for index, group in enumerate(dim_names(dims)):
        if group == (name,):
            return index
    return None


def _text(groups: Groups) -> str:
    return " ".join(g[0] if len(g) == 1 else "(" + " ".join(g) + ")" for g in groups)


def align_axes(baseline: "torch.Tensor", target: "torch.Tensor", *, baseline_dims: DimsSpec | None,
               target_dims: DimsSpec | None) -> tuple["torch.Tensor", str | None]:
    """The target in the baseline's layout, and what was done (None: nothing).

    Raises AxisAlignmentError, naming both dims strings, when no permute and reshape
    reconciles them.
    """
    if baseline_dims is None or target_dims is None:
        return target, None
    b_groups, t_groups = dim_names(baseline_dims), dim_names(target_dims)
    if b_groups == t_groups:
        return target, None

    def fail(why: str) -> AxisAlignmentError:
        return AxisAlignmentError(f"cannot align the target's dims {target_dims.text!r} with the baseline's dims "
                                  f"{baseline_dims.text!r}: {why}; fix the annotation or use --override-dims")

    b_atoms = [n for g in b_groups for n in g]
    t_atoms = [n for g in t_groups for n in g]
    if sorted(b_atoms) != sorted(t_atoms):
        only_b = sorted(set(b_atoms) - set(t_atoms))
        only_t = sorted(set(t_atoms) - set(b_atoms))
        raise fail(f"they name different dims (baseline only: {', '.join(only_b) or '-'}; "
                   f"target only: {', '.join(only_t) or '-'})")
    if len(set(b_atoms)) != len(b_atoms) or "*" in b_atoms:
        raise fail("a dim name repeats or is unnamed ('*'), so the order cannot be matched by name")
    for side, tensor, groups, text in (("baseline", baseline, b_groups, baseline_dims.text),
                                       ("target", target, t_groups, target_dims.text)):
        if tensor.dim() != len(groups):
            raise fail(f"the {side} tensor has {tensor.dim()} dims {list(tensor.shape)}, its dims {text!r} name {len(groups)}")

    sizes: dict[str, int] = {}
    for tensor, groups in ((baseline, b_groups), (target, t_groups)):
        for group, size in zip(groups, tensor.shape):
            if len(group) == 1:
                if group[0] in sizes and sizes[group[0]] != size:
                    raise fail(f"dim {group[0]} has {sizes[group[0]]} entries in the baseline and {size} in the target")
                sizes[group[0]] = int(size)
    changed = True
    while changed:
        changed = False
        for tensor, groups in ((baseline, b_groups), (target, t_groups)):
            for group, size in zip(groups, tensor.shape):
                unknown = [n for n in group if n not in sizes]
                if len(unknown) == 1:
                    known = math.prod(sizes[n] for n in group if n in sizes)
                    if known == 0 or size % known:
                        raise fail(f"({' '.join(group)}) has {size} entries, not a multiple of {known}")
                    sizes[unknown[0]] = int(size) // known
                    changed = True
    missing = [n for n in b_atoms if n not in sizes]
    if missing:
        raise fail(f"the sizes of {', '.join(missing)} are unknown: neither side has them as dims of their own")
    for side, tensor, groups in (("baseline", baseline, b_groups), ("target", target, t_groups)):
        for group, size in zip(groups, tensor.shape):
            if math.prod(sizes[n] for n in group) != size:
                raise fail(f"the {side}'s ({' '.join(group)}) has {size} entries, not "
                           f"{' x '.join(str(sizes[n]) for n in group)}")
    atomic = target.reshape([sizes[n] for n in t_atoms]).permute([t_atoms.index(n) for n in b_atoms])
    aligned = atomic.reshape([math.prod(sizes[n] for n in g) for g in b_groups])
    return aligned, f"{_text(t_groups)!r} -> {_text(b_groups)!r}"
