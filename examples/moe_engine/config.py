"""What to run: the model's sizes, the parallel layout, and which seed bug to switch on.

``EngineConfig`` is validated once, in the launching process, so a bad combination is
one clear message before any worker starts.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal, get_args

SeedBugName = Literal[
    "ep_reduce_skipped_under_fusion",
    "double_reduce",
    "shared_expert_double_reduce",
    "dense_tp_missing_reduce",
]
# Bugs that live only in CUDA-graph decode (examples/moe_engine/cudagraph.py): no seed.
GraphBugName = Literal["graph_padding_counts"]
BugName = Literal[SeedBugName, GraphBugName]
BUG_NAMES: tuple[str, ...] = get_args(SeedBugName)  # the seed bugs (SEEDS.md)
GRAPH_ONLY_BUGS: tuple[str, ...] = get_args(GraphBugName)
ALL_BUG_NAMES: tuple[str, ...] = BUG_NAMES + GRAPH_ONLY_BUGS

# Which seed of SEEDS.md each switch reproduces, and what it needs to be reachable.
BUG_SEEDS: dict[str, int] = {
    "ep_reduce_skipped_under_fusion": 1,
    "double_reduce": 2,
    "shared_expert_double_reduce": 3,
    "dense_tp_missing_reduce": 4,
}

Device = Literal["cpu", "cuda"]
DType = Literal["float32", "bfloat16"]

DEFAULT_PROMPT_LENS = (5, 3, 7, 2)


class EngineConfigError(ValueError):
    """A configuration the engine cannot run; the message says what would work."""


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """Sizes of the tiny model; every weight derives from ``seed``."""

    vocab_size: int = 128
    hidden_size: int = 64
    num_heads: int = 4
    head_dim: int = 16
    num_layers: int = 3
    # The first ``num_dense_layers`` layers use a dense MLP, the rest a MoE block
    # (DeepSeek's first_k_dense_replace).
    num_dense_layers: int = 1
    dense_intermediate_size: int = 128
    num_experts: int = 8
    top_k: int = 2
    expert_intermediate_size: int = 32
    shared_intermediate_size: int = 64
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    seed: int = 0

    def __post_init__(self) -> None:
        positive = ("vocab_size", "hidden_size", "num_heads", "head_dim", "num_layers", "dense_intermediate_size",
                    "num_experts", "top_k", "expert_intermediate_size", "shared_intermediate_size")
        for name in positive:
            if getattr(self, name) < 1:
                raise EngineConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0 <= self.num_dense_layers <= self.num_layers:
            raise EngineConfigError(
                f"num_dense_layers must be in [0, num_layers={self.num_layers}], got {self.num_dense_layers}"
            )
        if self.top_k > self.num_experts:
            raise EngineConfigError(f"top_k={self.top_k} exceeds num_experts={self.num_experts}")

    def is_moe_layer(self, layer_id: int) -> bool:
        return layer_id >= self.num_dense_layers


@dataclass(frozen=True, kw_only=True)
class EngineConfig:
    """One run of the engine.

    The world is ``tp * ep`` processes. The MoE block splits experts over ``ep`` ranks
    and each expert's weights over ``tp`` ranks (moe-TP). Attention uses the whole world:
    ``dp_attention`` data-parallel groups of ``world / dp_attention`` TP ranks each.
    """

    tp: int = 1
    ep: int = 1
    dp_attention: int = 1
    dense_tp: bool = False
    fusion: bool = False
    bug: BugName | None = None
    # More switches at once (``--bug`` repeated): e.g. the dense layer's missing reduction
    # and the MoE layers' doubled one, two independent divergences at different layers.
    extra_bugs: tuple[BugName, ...] = ()
    steps: int = 3
    prompt_lens: tuple[int, ...] = DEFAULT_PROMPT_LENS
    dtype: DType = "float32"
    device: Device = "cpu"
    save_logits: str | None = None
    # A planted router bug (not a seed): rank 0's copy of the first MoE layer's router
    # weights is perturbed, so that rank routes some tokens to other experts.
    perturb_router: bool = False
    # Split-K expert down-projections summed in an order shuffled per run (os.urandom):
    # two healthy runs then differ at rounding level, as with atomics-based GPU kernels.
    nondeterministic: bool = False
    # Decode from CUDA graphs captured for these batch sizes (the real batch padded up
    # to the next one), or the same static decode path run eagerly at the real size.
    cuda_graph: bool = False
    static_decode: bool = False
    graph_sizes: tuple[int, ...] = (1, 2, 4, 8)
    # Each decoder layer under torch.compile(fullgraph=True), collectives, attention and
    # routed experts as opaque operators (examples/moe_engine/compiled.py).
    compile: bool = False
    # At most this many requests per step (None: all at once): the requests run in groups,
    # one group after another, each prefilled then decoded; 1 runs them one after another.
    # The same tokens, batched differently: what --aligner auto must see through.
    max_batch: int | None = None
    model: ModelConfig = field(default_factory=ModelConfig)

    def __post_init__(self) -> None:
        for name in ("tp", "ep", "dp_attention"):
            if getattr(self, name) < 1:
                raise EngineConfigError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.max_batch is not None and self.max_batch < 1:
            raise EngineConfigError(f"--max-batch must be at least 1 (requests per step), got {self.max_batch}")
        if self.max_batch is not None and self.dp_attention > 1:
            raise EngineConfigError("--max-batch with --dp-attention is not supported (every DP rank would need the "
                                    "same number of steps); use one or the other")
        if self.steps < 0:
            raise EngineConfigError(f"--steps must be 0 or more (decode steps after the prefill), got {self.steps}")
        if not self.prompt_lens or any(length < 1 for length in self.prompt_lens):
            raise EngineConfigError(f"--prompt-lens needs one or more positive lengths, got {list(self.prompt_lens)}")
        if self.dtype not in get_args(DType):
            raise EngineConfigError(f"unknown dtype {self.dtype!r}; valid: {', '.join(get_args(DType))}")
        if self.device not in get_args(Device):
            raise EngineConfigError(f"unknown device {self.device!r}; valid: {', '.join(get_args(Device))}")
        for bug in self.bugs:
            if bug not in ALL_BUG_NAMES:
                raise EngineConfigError(f"unknown bug {bug!r}; valid: {', '.join(ALL_BUG_NAMES)}")
        if len(set(self.bugs)) != len(self.bugs):
            raise EngineConfigError(f"--bug given twice for the same bug: {', '.join(self.bugs)}; give each once")
        self._check_layout()
        self._check_graph_mode()
        self._check_bug_reachable()

    # ------------------------------------------------------------ derived sizes
    @property
    def bugs(self) -> tuple[str, ...]:
        """Every bug switched on (``--bug`` may be repeated)."""
        return ((self.bug,) if self.bug is not None else ()) + tuple(self.extra_bugs)

    def has_bug(self, name: BugName) -> bool:
        return name in self.bugs

    @property
    def world_size(self) -> int:
        return self.tp * self.ep

    @property
    def attn_tp(self) -> int:
        return self.world_size // self.dp_attention

    def replace(self, **changes) -> "EngineConfig":
        return dataclasses.replace(self, **changes)

    # --------------------------------------------------------------- validation
    def _check_layout(self) -> None:
        model, world = self.model, self.world_size
        if world % self.dp_attention:
            raise EngineConfigError(
                f"--dp-attention {self.dp_attention} must divide the world size tp*ep={world}"
            )
        divisible = [
            (model.num_heads, self.attn_tp, "num_heads", "the attention TP size (world/dp-attention)"),
            (model.num_experts, self.ep, "num_experts", "--ep"),
            (model.expert_intermediate_size, self.tp, "expert_intermediate_size", "--tp"),
            (model.shared_intermediate_size, world, "shared_intermediate_size", "the world size tp*ep"),
        ]
        if self.dense_tp:
            divisible.append((model.dense_intermediate_size, self.attn_tp, "dense_intermediate_size",
                              "the attention TP size (--dense-tp)"))
        for size, parts, what, by in divisible:
            if size % parts:
                raise EngineConfigError(f"{what}={size} cannot be split over {by}={parts}; choose sizes that divide it")
        if self.compile and self.dp_attention > 1:
            raise EngineConfigError(
                "--compile with --dp-attention is not supported: gathering the DP ranks' tokens pads them to a "
                "data-dependent size; compile without --dp-attention, or run DP-attention eagerly"
            )
        if self.compile and (self.cuda_graph or self.static_decode):
            raise EngineConfigError(
                "--compile with --cuda-graph/--static-decode is not supported yet: each replaces the layers' "
                "attention and experts in its own way; use one or the other"
            )
        if self.fusion and self.dp_attention > 1:
            raise EngineConfigError(
                "--fusion with --dp-attention is not supported: the deferred reduction would have to be a "
                "reduce-scatter over the gathered tokens; use one or the other"
            )

    def _check_graph_mode(self) -> None:
        if not (self.cuda_graph or self.static_decode):
            return
        if self.cuda_graph and self.static_decode:
            raise EngineConfigError("--cuda-graph and --static-decode exclude each other: "
                                    "--static-decode runs the graph's decode path without capture")
        if self.cuda_graph and self.device != "cuda":
            raise EngineConfigError("--cuda-graph needs --device cuda (use --static-decode on the CPU)")
        if not self.graph_sizes or any(size < 1 for size in self.graph_sizes):
            raise EngineConfigError(f"--graph-sizes needs positive batch sizes, got {list(self.graph_sizes)}")

    def _check_bug_reachable(self) -> None:
        # NOTE: a bug switch that its configuration never reaches would make a healthy
        # run look like a reproduced bug; say what reaches it instead.
        for bug in self.bugs:
            self._check_one_bug_reachable(bug)

    def _check_one_bug_reachable(self, bug: str) -> None:
        if bug in GRAPH_ONLY_BUGS and not (self.cuda_graph and self.model.num_dense_layers < self.model.num_layers):
            raise EngineConfigError(f"--bug {bug} lives only in CUDA-graph decode with a MoE layer: "
                                    f"--device cuda --cuda-graph --bug {bug}")
        if bug == "ep_reduce_skipped_under_fusion" and not (self.fusion and self.ep > 1):
            raise EngineConfigError(f"--bug {bug} needs --fusion and --ep 2 or more, e.g. --ep 2 --fusion --bug {bug}")
        if bug == "double_reduce" and not (self.ep > 1 and not self.fusion):
            raise EngineConfigError(
                f"--bug {bug} needs --ep 2 or more without --fusion (the MoE block's EP and TP reductions "
                f"then both run), e.g. --ep 2 --bug {bug}"
            )
        if bug == "shared_expert_double_reduce" and self.world_size < 2:
            raise EngineConfigError(f"--bug {bug} needs a MoE group of 2 ranks or more, e.g. --tp 2 --bug {bug}")
        if bug == "dense_tp_missing_reduce" and not (self.dense_tp and self.attn_tp > 1 and self.model.num_dense_layers):
            raise EngineConfigError(
                f"--bug {bug} needs --dense-tp, an attention TP size of 2 or more and a dense layer, "
                f"e.g. --tp 2 --dense-tp --bug {bug}"
            )
