"""The inference engines behind each ModelReplica, and the contract they share."""

from __future__ import annotations

import importlib
import inspect

from llmaas.config.catalog import ModelSpec, Task
from llmaas.engine.errors import EngineError, EngineNotReady, EngineOverloaded, UnsupportedTask
from llmaas.engine.protocol import Engine
from llmaas.engine.types import (
    AdapterRef,
    EngineHealth,
    FinishReason,
    GenerationChunk,
    GenerationRequest,
    ModelInfo,
    SamplingParams,
)

_EXAMPLE = "llmaas.engine.fake:FakeEngine"


def import_engine_cls(path: str) -> type[Engine]:
    """The ``Engine`` subclass at ``path`` ("package.module:ClassName"); a ``ValueError`` naming the fix."""
    module_name, sep, name = path.partition(":")
    if not sep or not module_name or not name:
        raise ValueError(
            f"engine.cls {path!r} is not an import path: write 'package.module:ClassName', e.g. {_EXAMPLE}"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(
            f"engine.cls {path!r}: cannot import module {module_name!r} ({exc}); name a module installed "
            f"where the replicas run, e.g. {_EXAMPLE}, or leave engine out for the default backend"
        ) from exc
    cls = getattr(module, name, None)
    if cls is None:
        raise ValueError(
            f"engine.cls {path!r}: module {module_name!r} has no {name!r}; check the class name after ':'"
        )
    if not (isinstance(cls, type) and issubclass(cls, Engine)):
        raise ValueError(
            f"engine.cls {path!r} is not a subclass of llmaas.engine.Engine; name an engine class, "
            f"e.g. {_EXAMPLE}"
        )
    if inspect.isabstract(cls):
        raise ValueError(
            f"engine.cls {path!r} is abstract (it leaves {', '.join(sorted(cls.__abstractmethods__))} "
            "unimplemented); name a concrete engine class"
        )
    return cls


def default_engine_cls(spec: ModelSpec) -> type[Engine]:
    """The backend for a catalog entry: ``spec.engine`` when set, else the task's (DeepSpeed for generate,
    the embedding engine for embed, the classification engine for classify).

    Imported lazily: DeepSpeed is heavy. Raises ``ValueError`` naming the model, the path and
    the fix when ``spec.engine`` names no usable engine class.
    """
    if spec.engine is not None:
        try:
            return import_engine_cls(spec.engine.cls)
        except ValueError as exc:
            raise ValueError(f"model {spec.id!r}: {exc}") from exc.__cause__
    if spec.task is Task.EMBED:
        from llmaas.engine.embedding import EmbeddingEngine

        return EmbeddingEngine
    if spec.task is Task.CLASSIFY:
        from llmaas.engine.classification import ClassificationEngine

        return ClassificationEngine
    from llmaas.engine.deepspeed_engine import DeepSpeedEngine

    return DeepSpeedEngine


__all__ = [
    "AdapterRef",
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
    "import_engine_cls",
]
