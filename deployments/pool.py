"""PoolReplica: many small models on few devices, with Serve's model multiplexing.

The models of one catalog pool (``pools:``, and ``pool:`` on each of its models) share one
deployment. A replica loads a model the first time a request names it and keeps up to
``max_models_per_replica`` of them, evicting the least recently used (``serve.multiplexed``);
the router sends each request with its model as ``multiplexed_model_id``, so Serve prefers a
replica that holds it already.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from ray import serve

from llmaas.config.catalog import ModelSpec
from llmaas.engine import (
    Engine,
    EngineHealth,
    GenerationChunk,
    GenerationRequest,
    ModelInfo,
    default_engine_cls,
)
from llmaas.models import resolve_model_path

logger = logging.getLogger("ray.serve")


DRAIN_TIMEOUT_S = 60.0


class LoadedModel:
    """One model's engine in a pool replica; Serve awaits ``__del__`` when it evicts the model.

    NOTE: an evicted model may still be serving the requests that took it before; its engine
    stops only once they end (up to ``DRAIN_TIMEOUT_S``), so that eviction fails no request.
    Serve awaits this under its model-cache lock, so the next model loads after that: the
    replica never holds more than ``max_models_per_replica``, at the cost of the wait.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.active = 0
        self.idle = asyncio.Event()
        self.idle.set()

    @contextlib.contextmanager
    def in_use(self) -> Iterator[Engine]:
        self.active += 1
        self.idle.clear()
        try:
            yield self.engine
        finally:
            self.active -= 1
            if not self.active:
                self.idle.set()

    async def __del__(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.idle.wait(), timeout=DRAIN_TIMEOUT_S)
        logger.info("pool: unloading model %s", self.engine.spec.id)
        await self.engine.shutdown()


class PoolReplica:
    """Serves every model of a pool; ``load`` is multiplexed (see ``pool_class``)."""

    def __init__(self, specs: dict[str, ModelSpec], cache_dir: str) -> None:
        self.specs = specs
        self.cache_dir = Path(cache_dir)

    async def _load(self, model_id: str) -> LoadedModel:
        spec = self.specs.get(model_id)
        if spec is None:
            raise ValueError(f"model {model_id!r} is not in this pool ({', '.join(self.specs)})")
        path = resolve_model_path(spec.source, self.cache_dir)
        engine = default_engine_cls(spec)(spec, path)
        await engine.start()
        logger.info("pool: loaded model %s", model_id)
        return LoadedModel(engine)

    async def load(self, model_id: str) -> LoadedModel:  # replaced by a multiplexed one in pool_class
        return await self._load(model_id)

    async def _model(self) -> LoadedModel:
        return await self.load(serve.get_multiplexed_model_id())

    async def info(self) -> ModelInfo:
        return (await self._model()).engine.info

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        with (await self._model()).in_use() as engine:
            stream = engine.generate(request)
            try:
                async for chunk in stream:
                    yield chunk
            finally:
                await stream.aclose()  # type: ignore[attr-defined]

    async def embed(self, inputs: list[list[int]]) -> list[list[float]]:
        with (await self._model()).in_use() as engine:
            return await engine.embed(inputs)

    async def classify(self, inputs: list[list[int]]) -> list[list[float]]:
        with (await self._model()).in_use() as engine:
            return await engine.classify(inputs)

    def health(self) -> EngineHealth:
        """The pool's replica as ``llmaas status`` shows it: which models it holds now."""
        wrapper: Any = getattr(self, "__serve_multiplex_wrapper", None)
        held = sorted(getattr(wrapper, "models", {}) or {})
        return EngineHealth(healthy=True, detail="models loaded: " + (", ".join(held) or "none"))


def pool_class(max_models_per_replica: int) -> type[PoolReplica]:
    """A ``PoolReplica`` whose ``load`` keeps at most ``max_models_per_replica`` models (LRU)."""

    class MultiplexedPoolReplica(PoolReplica):
        @serve.multiplexed(max_num_models_per_replica=max_models_per_replica)
        async def load(self, model_id: str) -> LoadedModel:
            return await self._load(model_id)

    return MultiplexedPoolReplica
