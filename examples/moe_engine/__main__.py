"""``python -m examples.moe_engine --tp 2 --ep 2 [--dp-attention 2] [--fusion] [--bug NAME] ...``"""

from __future__ import annotations

import argparse
import sys

from examples.moe_engine.config import ALL_BUG_NAMES, DEFAULT_PROMPT_LENS, EngineConfig, EngineConfigError, ModelConfig


def _prompt_lens(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated lengths such as 5,3,7,2, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m examples.moe_engine",
        description="A tiny MoE transformer engine with TP, EP, DP-attention and all-reduce fusion, "
                    "and the five seed bugs of dumpcmp as switches. World size = tp * ep.",
    )
    parallel = parser.add_argument_group("parallel layout")
    parallel.add_argument("--tp", type=int, default=1, help="TP size of each expert's weights (moe-TP)")
    parallel.add_argument("--ep", type=int, default=1, help="expert-parallel size")
    parallel.add_argument("--dp-attention", type=int, default=1, metavar="N",
                          help="DP-attention size: attention runs in N data-parallel groups of world/N TP ranks")
    parallel.add_argument("--dense-tp", action="store_true",
                          help="split the dense MLP over the attention-TP group (else it is replicated)")
    parallel.add_argument("--fusion", action="store_true",
                          help="defer the MoE output's all-reduce into the next residual-add + norm")
    parser.add_argument("--bug", choices=ALL_BUG_NAMES, action="append", default=None,
                        help="switch on a seed bug, or graph_padding_counts (CUDA-graph decode only); "
                             "repeat for several (e.g. a dense-layer and a MoE-layer bug)")
    parser.add_argument("--perturb-router", action="store_true",
                        help="a planted router bug: perturb rank 0's router weights of the first MoE layer")
    parser.add_argument("--nondeterministic", action="store_true",
                        help="sum each expert's split-K down-projection in a run-seeded shuffled order "
                             "(healthy runs then differ at rounding level)")
    parser.add_argument("--compile", action="store_true",
                        help="run each decoder layer under torch.compile(fullgraph=True); collectives, attention "
                             "and routed experts stay eager as opaque operators (as vLLM's piecewise compile)")
    graphs = parser.add_argument_group("CUDA graphs (examples/moe_engine/cudagraph.py)")
    graphs.add_argument("--cuda-graph", action="store_true",
                        help="decode from CUDA graphs: the batch padded up to the next captured size, then replayed")
    graphs.add_argument("--static-decode", action="store_true",
                        help="the CUDA-graph decode path run eagerly at the real batch size (the kernels a graph replays)")
    graphs.add_argument("--graph-sizes", type=_prompt_lens, default=(1, 2, 4, 8), metavar="N,N,...",
                        help="batch sizes captured under --cuda-graph (default 1,2,4,8)")
    parser.add_argument("--steps", type=int, default=3, help="greedy decode steps after the prefill (default 3)")
    parser.add_argument("--prompt-lens", type=_prompt_lens, default=DEFAULT_PROMPT_LENS, metavar="N,N,...",
                        help="one request per length (default %(default)s)")
    parser.add_argument("--max-batch", type=int, default=None, metavar="N",
                        help="at most N requests per step: groups of N run one after another (1: one request at a "
                             "time), the same tokens batched differently")
    parser.add_argument("--layers", type=int, default=ModelConfig.num_layers, help="number of layers")
    parser.add_argument("--dense-layers", type=int, default=ModelConfig.num_dense_layers,
                        help="how many of the first layers use a dense MLP instead of a MoE block")
    parser.add_argument("--seed", type=int, default=ModelConfig.seed, help="seed of every weight")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--save-logits", metavar="PATH",
                        help="write every request's per-step logits and tokens to PATH (safetensors)")
    return parser


def config_from_args(args: argparse.Namespace) -> EngineConfig:
    model = ModelConfig(num_layers=args.layers, num_dense_layers=args.dense_layers, seed=args.seed)
    return EngineConfig(
        tp=args.tp, ep=args.ep, dp_attention=args.dp_attention, dense_tp=args.dense_tp, fusion=args.fusion,
        bug=args.bug[0] if args.bug else None, extra_bugs=tuple(args.bug[1:]) if args.bug else (), steps=args.steps, prompt_lens=args.prompt_lens, dtype=args.dtype, device=args.device,
        save_logits=args.save_logits, perturb_router=args.perturb_router,
        nondeterministic=args.nondeterministic, cuda_graph=args.cuda_graph, static_decode=args.static_decode,
        graph_sizes=args.graph_sizes, compile=args.compile, max_batch=args.max_batch, model=model,
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = config_from_args(args)
    except EngineConfigError as exc:
        print(f"moe_engine: error: {exc}", file=sys.stderr)
        return 2
    # NOTE: imported only now, so that a bad option is reported without importing torch.
    from examples.moe_engine.launch import WorkerFailed, run

    try:
        run(config)
    except EngineConfigError as exc:
        print(f"moe_engine: error: {exc}", file=sys.stderr)
        return 2
    except WorkerFailed as exc:
        print(f"moe_engine: a worker failed:\n{exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
