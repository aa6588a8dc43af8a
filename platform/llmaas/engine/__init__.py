"""The inference engines behind each ModelReplica, and the contract they share."""

from llmaas.config.catalog import ModelSpec, Task
from llmaas.engine.errors import EngineError, EngineNotReady, EngineOverloaded, UnsupportedTask
from llmaas.engine.protocol import Engine
from llmaas.engine.types import (
    EngineHealth,
    FinishReason,
    GenerationChunk,
    GenerationRequest,
    ModelInfo,
    SamplingParams,
)


def default_engine_cls(spec: ModelSpec) -> type[Engine]:
    """The backend for a catalog entry (imported lazily: DeepSpeed is heavy)."""
    if spec.task is Task.EMBED:
        from llmaas.engine.embedding import EmbeddingEngine

        return EmbeddingEngine
    from llmaas.engine.deepspeed_engine import DeepSpeedEngine

    return DeepSpeedEngine


__all__ = [
    "Engine",
    "EngineError",
    "EngineHealth",
    "EngineNotReady",
    "EngineOverloaded",
    "FinishReason",
    "GenerationChunk",
    "GenerationRequest",
    "ModelInfo",
    "SamplingParams",
    "UnsupportedTask",
    "default_engine_cls",
]
