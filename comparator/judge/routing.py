"""Routing-aware comparison of MoE layers: expert-choice flips at near-ties.

In bf16 (or fp32 with another reduction order) a token whose k-th and (k+1)-th router
logits are nearly tied can choose a different expert in the target than in the
baseline. Its routed-expert output then differs completely, though nothing is wrong.
Allow-listing every MoE output would hide real bugs; instead, per MoE layer and step:

1. load the chosen experts (``topk_ids``) and the router logits of both runs, aligned
   like any other tensor;
2. a *flip* is a token whose set of chosen experts differs (the order within the top-k
   does not matter: each id carries its own weight);
3. its *margin* is the gap between the k-th and (k+1)-th baseline logit. The flip is
   *benign* when the router logits themselves pass their thresholds and the margin is
   within ``margin_factor x`` the largest per-token |target - baseline| of the router
   logits (the error the logits measurably carry explains the swap); *suspicious*
   otherwise;
4. the top-k ids pass when every flip is benign, and fail with the hint "router logits
   diverged: look upstream" otherwise; the MoE outputs of that layer (routed-expert and
   MoE block outputs, by name) are judged on the tokens whose routing agrees, and the
   benign-flip tokens are listed with their margins (``TensorResult.routing``).

Planning attaches :class:`RoutingSources` to the work items (comparator/plan.py
``attach_routing``); the executor measures each layer-step once with :class:`RoutingJudge`.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Literal, Sequence

from dumper.patterns import UserRegex

if TYPE_CHECKING:
    import torch

    from comparator.plan import TensorWork

UPSTREAM_HINT = "router logits diverged: look upstream"
Regex = re.Pattern[str] | UserRegex

# NOTE: names are searched (re.search) in the dump name; the defaults cover the example
# engine's and the vLLM/SGLang presets' names. Override with RoutingOptions.
DEFAULT_ROUTER_LOGITS = r"(^|[._])router_logits$"
DEFAULT_TOPK_IDS = r"(^|[._])topk_ids$"
DEFAULT_MOE_OUTPUTS = r"(^|[._])(routed_expert_output|routed_output|experts_output|moe_output|fused_moe_output)$"


@dataclass(frozen=True, kw_only=True)
class RoutingOptions:
    """Which dumps carry routing, which are downstream of it, and how lenient a flip may be."""

    enabled: bool = True
    router_logits: Regex = re.compile(DEFAULT_ROUTER_LOGITS)
    topk_ids: Regex = re.compile(DEFAULT_TOPK_IDS)
    moe_outputs: Regex = re.compile(DEFAULT_MOE_OUTPUTS)  # --moe-outputs (a checked user regex)
    margin_factor: float = 2.0  # a flip is benign when margin <= margin_factor * max per-token |Δ logits|

    def __post_init__(self) -> None:
        if not (self.margin_factor >= 0 and math.isfinite(self.margin_factor)):
            raise ValueError(f"margin_factor must be a finite number >= 0, got {self.margin_factor}")


@dataclass(frozen=True, kw_only=True)
class Flip:
    """One token whose chosen experts differ between the runs."""

    token: int  # row after alignment
    baseline_experts: tuple[int, ...]
    target_experts: tuple[int, ...]
    margin: float  # baseline: k-th minus (k+1)-th logit (nan when the logits were not dumped)
    logit_error: float  # this token's max |target - baseline| router logit
    benign: bool

    def to_json(self) -> dict[str, Any]:
        return {"token": self.token, "baseline_experts": list(self.baseline_experts),
                "target_experts": list(self.target_experts), "margin": _number(self.margin),
                "logit_error": _number(self.logit_error), "benign": self.benign}


@dataclass(frozen=True, kw_only=True)
class RoutingCheck:
    """The routing of one MoE layer at one step, baseline vs target."""

    tokens: int
    top_k: int
    flips: tuple[Flip, ...]
    tolerance: float  # the largest margin a flip may have and be benign
    logits_error: float  # max per-token |Δ router logits| (nan when not dumped)
    logits_pass: bool | None  # the router logits passed their thresholds (None: not dumped)
    problem: str | None = None  # why routing could not be analysed (then nothing is masked)

    @property
    def benign(self) -> tuple[Flip, ...]:
        return tuple(f for f in self.flips if f.benign)

    @property
    def suspicious(self) -> tuple[Flip, ...]:
        return tuple(f for f in self.flips if not f.benign)

    def to_json(self) -> dict[str, Any]:
        return {
            "tokens": self.tokens, "top_k": self.top_k, "tolerance": _number(self.tolerance),
            "router_logits_error": _number(self.logits_error), "router_logits_pass": self.logits_pass,
            "benign_flips": [f.to_json() for f in self.benign],
            "suspicious_flips": [f.to_json() for f in self.suspicious],
            "problem": self.problem,
        }

    def describe(self) -> str:
        if self.problem is not None:
            return f"routing not analysed: {self.problem}"
        if not self.flips:
            return f"routing agrees on all {self.tokens} tokens"
        parts = []
        if self.benign:
            parts.append(f"{len(self.benign)} benign flip(s) at near-ties ({_list_flips(self.benign)}; "
                         f"tolerance {self.tolerance:.3g} = factor x router-logit error {self.logits_error:.3g})")
        if self.suspicious:
            parts.append(f"{len(self.suspicious)} suspicious flip(s) ({_list_flips(self.suspicious)}; "
                         f"tolerance {self.tolerance:.3g})")
        return "routing: " + "; ".join(parts)


def _list_flips(flips: Sequence[Flip], limit: int = 6) -> str:
    shown = ", ".join(f"token {f.token} margin {f.margin:.3g}" for f in flips[:limit])
    return shown + (f", ... {len(flips) - limit} more" if len(flips) > limit else "")


def _number(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


# ------------------------------------------------------------------------- measuring
def measure_routing(baseline_ids: "torch.Tensor", target_ids: "torch.Tensor",
                    baseline_logits: "torch.Tensor | None", target_logits: "torch.Tensor | None", *,
                    logits_pass: bool | None, margin_factor: float) -> RoutingCheck:
    """Flips between two aligned [tokens, k] id tensors, classified with the [tokens, experts] logits."""
    if baseline_ids.dim() != 2 or tuple(baseline_ids.shape) != tuple(target_ids.shape):
        return RoutingCheck(tokens=0, top_k=0, flips=(), tolerance=math.nan, logits_error=math.nan, logits_pass=logits_pass,
                            problem=f"top-k ids shapes differ or are not [tokens, k]: baseline {list(baseline_ids.shape)} "
                                    f"vs target {list(target_ids.shape)}")
    tokens, top_k = baseline_ids.shape
    b_sorted = baseline_ids.long().sort(dim=-1).values
    t_sorted = target_ids.long().sort(dim=-1).values
    flipped = (b_sorted != t_sorted).any(dim=-1).nonzero().flatten().tolist()
    usable_logits = (baseline_logits is not None and target_logits is not None
                     and tuple(baseline_logits.shape) == tuple(target_logits.shape)
                     and baseline_logits.dim() == 2 and baseline_logits.shape[0] == tokens
                     and baseline_logits.shape[1] > top_k)
    if usable_logits:
        b64, t64 = baseline_logits.double(), target_logits.double()  # type: ignore[union-attr]
        per_token_error = (t64 - b64).abs().amax(dim=-1)
        logits_error = float(per_token_error.max()) if tokens else 0.0
        top = b64.topk(top_k + 1, dim=-1).values
        margins = top[:, top_k - 1] - top[:, top_k]
        # NOTE: the logits' error explains a swap only when the logits themselves are
        # within tolerance; a broken router (a large error) explains nothing.
        tolerance = margin_factor * logits_error if logits_pass else 0.0
    else:
        per_token_error = margins = None
        logits_error, tolerance = math.nan, 0.0
    flips = []
    for row in flipped:
        margin = float(margins[row]) if margins is not None else math.nan
        error = float(per_token_error[row]) if per_token_error is not None else math.nan
        flips.append(Flip(token=row, baseline_experts=tuple(b_sorted[row].tolist()),
                          target_experts=tuple(t_sorted[row].tolist()), margin=margin, logit_error=error,
                          benign=bool(usable_logits and margin <= tolerance)))
    problem = None if usable_logits or not flipped else "router logits not dumped (or not [tokens, experts]): every flip is suspicious"
    return RoutingCheck(tokens=tokens, top_k=top_k, flips=tuple(flips), tolerance=tolerance, logits_error=logits_error,
                        logits_pass=logits_pass if usable_logits else None, problem=problem)


def keep_agreeing_tokens(check: RoutingCheck, baseline: "torch.Tensor", target: "torch.Tensor",
                         token_dim: int | None) -> tuple["torch.Tensor", "torch.Tensor", str | None]:
    """The rows of a MoE output whose routing agrees (benign flips dropped), and a note."""
    import torch

    if not check.benign or check.suspicious or token_dim is None or check.problem is not None:
        return baseline, target, None
    if baseline.shape[token_dim] != check.tokens or target.shape[token_dim] != check.tokens:
        return baseline, target, (f"routing: {len(check.benign)} benign flip(s) not masked: the tensor has "
                                  f"{baseline.shape[token_dim]} tokens, the routing {check.tokens}")
    keep = torch.ones(check.tokens, dtype=torch.bool)
    keep[[f.token for f in check.benign]] = False
    index = keep.nonzero().flatten()
    note = (f"routing: judged on the {int(keep.sum())} of {check.tokens} tokens whose experts agree; "
            f"{len(check.benign)} benign flip(s) left out ({_list_flips(check.benign)})")
    return baseline.index_select(token_dim, index), target.index_select(token_dim, index), note


# -------------------------------------------------------------------------- planning
@dataclass(frozen=True, kw_only=True)
class RoutingSources:
    """The work items (comparator.plan.TensorWork) holding one layer-step's routing tensors."""

    topk_ids: "TensorWork"
    router_logits: "TensorWork | None"
    role: Literal["topk_ids", "moe_output"]  # judge the flips, or judge the tokens whose routing agrees

    @property
    def key(self) -> tuple[Any, ...]:
        return layer_step(self.topk_ids)


def layer_step(item: "TensorWork") -> tuple[Any, ...]:
    """Which layer and step a work item belongs to: its unit's steps and its tags."""
    from comparator.matching import tags_key

    return (item.unit.baseline_steps, item.unit.target_steps, tags_key(item.tags))


# ------------------------------------------------------------------------- executing
LoadAligned = Callable[["TensorWork"], "tuple[torch.Tensor, torch.Tensor]"]  # work item -> aligned (baseline, target)
JudgeLogits = Callable[["TensorWork", "torch.Tensor", "torch.Tensor"], bool]  # work item, tensors -> passed thresholds


class RoutingJudge:
    """Measures each layer-step's routing once (cached) for the executor that owns it."""

    def __init__(self, options: RoutingOptions, load_aligned: LoadAligned, logits_pass: JudgeLogits) -> None:
        self.options = options
        self.load_aligned = load_aligned
        self.logits_pass = logits_pass
        self.cache: dict[tuple[Any, ...], RoutingCheck] = {}

    def check(self, sources: RoutingSources) -> RoutingCheck:
        key = sources.key
        if key not in self.cache:
            self.cache[key] = self._measure(sources)
        return self.cache[key]

    def _measure(self, sources: RoutingSources) -> RoutingCheck:
        from dumper.errors import DumpcmpError

        try:
            baseline_ids, target_ids = self.load_aligned(sources.topk_ids)
        except DumpcmpError as exc:
            return RoutingCheck(tokens=0, top_k=0, flips=(), tolerance=math.nan, logits_error=math.nan,
                                logits_pass=None, problem=f"cannot load the top-k ids: {exc}")
        baseline_logits = target_logits = None
        passed: bool | None = None
        if sources.router_logits is not None:
            try:
                baseline_logits, target_logits = self.load_aligned(sources.router_logits)
                if tuple(baseline_logits.shape) == tuple(target_logits.shape):
                    passed = self.logits_pass(sources.router_logits, baseline_logits, target_logits)
            except DumpcmpError:
                baseline_logits = target_logits = None
        return measure_routing(baseline_ids, target_ids, baseline_logits, target_logits, logits_pass=passed,
                               margin_factor=self.options.margin_factor)


def topk_verdict(check: RoutingCheck) -> tuple[bool, str | None, str | None]:
    """(passed, reason, hint) of the top-k ids themselves."""
    if check.problem is not None and not check.flips:
        return True, None, None
    if not check.suspicious:
        return True, None, None
    worst = max(check.suspicious, key=lambda f: f.margin if math.isfinite(f.margin) else math.inf)
    why = ("the router logits fail their thresholds" if check.logits_pass is False
           else "the router logits were not dumped" if check.logits_pass is None
           else f"margins above the tolerance {check.tolerance:.3g}")
    reason = (f"{len(check.suspicious)} of {check.tokens} tokens chose other experts with a clear margin "
              f"(largest {worst.margin:.3g} at token {worst.token}; {why})")
    return False, reason, UPSTREAM_HINT


# ------------------------------------------------------------------------ reporting
def annotate_downstream(results: Sequence[Any]) -> list[Any]:
    """Failures after a benign flip (in execution order) get a hint naming the flip.

    NOTE: a benign flip changes its token's MoE output for real; the next layers carry
    that change (to the token's request through attention, and to later steps through
    the KV cache). Where the token metadata says which rows those are, the executor
    leaves them out (comparator/judge/downstream.py); a failure it could not mask
    (no metadata, rows that do not match it) gets a hint naming the flip instead.
    """
    first: Any = None
    annotated = []
    for result in results:
        routing = result.routing
        if first is None and routing is not None and routing.benign and not routing.suspicious:
            first = result
        elif (first is not None and result.status == "fail" and result.hint is None and routing is None
              and getattr(result, "downstream", None) is None):
            # NOTE: a result judged without the rows the flips reach (judge/downstream.py) failed
            # on the others: the flip does not explain it.
            flip = first.routing.benign[0]
            result = dataclasses.replace(result, hint=(
                f"downstream of {len(first.routing.benign)} benign routing flip(s) at {first.label} (token {flip.token}, "
                f"margin {flip.margin:.3g}): a near-tie sent that token to other experts, and the change propagates "
                "to its request's later tokens and steps; check that the per-token errors sit there"))
        annotated.append(result)
    return annotated
