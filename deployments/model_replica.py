"""ModelReplica: one Serve replica of one catalog model, over the engine contract.

A generating replica also copies its engine's health numbers (running and waiting
sequences, batch and KV occupancy) into Prometheus gauges every second (``llmaas.metrics``).

A generating replica serves its model's LoRA adapters too (catalog entries ``adapter_of`` it):
a request names its adapter, which is loaded through ``serve.multiplexed``, so that Serve knows
which replica holds which adapter and routes their requests there, and evicts the least recently
used beyond ``max_adapters``; the engine lets an evicted adapter go once no sequence uses it.

An engine that breaks beyond repair (a tensor-parallel rank died) has already ended its
requests with an error; its replica then exits, so that Serve replaces it at its next health
check instead of after three failed ones and a drain.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from llmaas.autoscaling import autoscaling_stats
from llmaas.config.catalog import ModelSpec, Task
from llmaas.engine import (
    AdapterRef,
    Engine,
    EngineHealth,
    GenerationChunk,
    GenerationRequest,
    ModelInfo,
    default_engine_cls,
)
from llmaas.metrics import ReplicaGauges, ray_initialized
from llmaas.models import resolve_model_path

logger = logging.getLogger("ray.serve")

FATAL_EXIT_DELAY_S = 1.0  # the ended requests' last chunks reach their callers before the exit


class AdapterLease:
    """An adapter as ``serve.multiplexed`` holds it: let go on the engine when Serve evicts it."""

    def __init__(self, engine: Engine, name: str) -> None:
        self.engine = engine
        self.name = name
        self.released = False

    def __del__(self) -> None:
        # NOTE: Serve calls this on eviction (from a thread), and Python again when it collects the
        # lease, maybe after the adapter was loaded anew: only the first call lets it go.
        if not self.released:
            self.released = True
            self.engine.unload_adapter(self.name)


class ModelReplica:
    """Loads the model (rank 0 plus TP peers), then serves generate / embed / classify / info."""

    async def __init__(  # type: ignore[misc]  # Serve awaits async constructors
        self, spec: ModelSpec, cache_dir: str, *, engine_cls: type[Engine] | None = None
    ) -> None:
        self.spec = spec
        path = await asyncio.to_thread(resolve_model_path, spec.source, Path(cache_dir))
        cls = engine_cls or default_engine_cls(spec)
        kwargs: dict[str, Any] = {}
        if spec.tensor_parallel_size > 1:
            from llmaas.deployments.workers import RayPeerGroup

            kwargs["peers"] = RayPeerGroup(spec, path)
        self.engine = cls(spec, path, **kwargs)
        self._loop = asyncio.get_running_loop()
        self._exiting: asyncio.Task[None] | None = None
        self.engine.on_fatal(self._on_fatal)
        await self.engine.start()
        self._adapter_paths: dict[str, str] = {}
        self._load_adapter: Any = None
        if self.engine.supports_adapters:
            from ray import serve

            @serve.multiplexed(max_num_models_per_replica=spec.max_adapters)
            async def load_adapter(name: str) -> AdapterLease:
                await self.engine.load_adapter(AdapterRef(name=name, path=self._adapter_paths[name]))
                return AdapterLease(self.engine, name)

            self._load_adapter = load_adapter
        self._gauges: asyncio.Task[None] | None = None
        if spec.task is Task.GENERATE and ray_initialized():
            gauges = ReplicaGauges(spec.id, spec.batching.max_batch_size)
            self._gauges = asyncio.create_task(gauges.report_forever(self.engine.health))
        logger.info("model %s ready (tp=%d) from %s", spec.id, spec.tensor_parallel_size, path)

    def _on_fatal(self, reason: str) -> None:
        """The engine cannot serve again (called from any thread): exit, and Serve starts a new replica."""
        self._loop.call_soon_threadsafe(self._exit_soon, reason)

    def _exit_soon(self, reason: str) -> None:
        if self._exiting is None:
            self._exiting = asyncio.create_task(self._exit(reason))

    async def _exit(self, reason: str) -> None:
        logger.error("model %s: %s; this replica exits so that Serve replaces it", self.spec.id, reason)
        await asyncio.sleep(FATAL_EXIT_DELAY_S)
        import ray

        # NOTE: the TP workers are this process's actors: Ray ends them with it.
        ray.kill(ray.get_runtime_context().current_actor, no_restart=True)

    async def info(self) -> ModelInfo:
        return self.engine.info

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        if request.adapter is not None:
            if self._load_adapter is None:
                await self.engine.load_adapter(request.adapter)  # NOTE: raises: adapters cannot run here
            self._adapter_paths[request.adapter.name] = request.adapter.path
            await self._load_adapter(request.adapter.name)  # Serve's LRU: tells the routers it is here
            await self.engine.load_adapter(request.adapter)  # NOTE: a no-op unless it was let go meanwhile
        stream = self.engine.generate(request)
        try:
            async for chunk in stream:
                yield chunk
        finally:
            # NOTE: closing the engine's stream cancels the sequence (client gone or handle cancelled).
            await stream.aclose()  # type: ignore[attr-defined]

    async def embed(self, inputs: list[list[int]]) -> list[list[float]]:
        return await self.engine.embed(inputs)

    async def classify(self, inputs: list[list[int]]) -> list[list[float]]:
        return await self.engine.classify(inputs)

    def record_autoscaling_stats(self) -> dict[str, float]:
        """Serve's autoscaling hook: this replica's running + waiting sequences (``llmaas.autoscaling``)."""
        if self.spec.task is not Task.GENERATE:
            return {}  # NOTE: no scheduler here: the policy falls back to Serve's request counts
        return autoscaling_stats(self.engine.health())

    def health(self) -> EngineHealth:
        return self.engine.health()

    def check_health(self) -> None:
        """Serve's health hook: an unhealthy engine gets its replica replaced."""
        health = self.engine.health()
        if not health.healthy:
            raise RuntimeError(f"model {self.spec.id} unhealthy: {health.detail}")
