"""A tiny MoE transformer engine whose parallel paths are real torch.distributed collectives.

``python -m examples.moe_engine --tp 2 --ep 2`` runs it; docs/example-engine.md describes
the model, the parallel modes, the seed bugs (``--bug``) and the anchors dump patches use.
"""

from examples.moe_engine.config import BUG_NAMES, BUG_SEEDS, EngineConfig, EngineConfigError, ModelConfig

__all__ = ["BUG_NAMES", "BUG_SEEDS", "EngineConfig", "EngineConfigError", "ModelConfig", "run"]


def run(config: EngineConfig):
    """Run the engine (see :func:`examples.moe_engine.launch.run`)."""
    from examples.moe_engine.launch import run as _run

    return _run(config)
