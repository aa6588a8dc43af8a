"""The DeepSpeed-inference backend for generative models."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from llmaas.config.catalog import ModelSpec
from llmaas.engine.batcher import BatchScheduler
from llmaas.engine.errors import EngineError, EngineNotReady
from llmaas.engine.guided import GrammarCompiler
from llmaas.engine.kv_budget import context_length
from llmaas.engine.prefix_cache import ON, PrefixCache
from llmaas.engine.protocol import Engine
from llmaas.engine.runner import ModelRunner, PeerGroup
from llmaas.engine.types import AdapterRef, EngineHealth, GenerationChunk, GenerationRequest, ModelInfo

logger = logging.getLogger(__name__)

#: The prefix cache's default ceiling (``prefix_cache.max_tokens`` unset): without a
#: ``kv_cache_bytes``, the KV budget is a nominal ``max_batch_size`` full contexts, a quarter of
#: which could be gigabytes the replica never reserved.
DEFAULT_PREFIX_CACHE_BYTES = 512 * 2**20


def read_architecture(model_path: Path) -> str:
    """The ``model_type`` in config.json, without loading the model."""
    try:
        return str(json.loads((Path(model_path) / "config.json").read_text())["model_type"])
    except (OSError, KeyError, ValueError):
        return ""


class DeepSpeedEngine(Engine):
    """Generation on DeepSpeed-inference shards, scheduled by ``BatchScheduler``."""

    def __init__(self, spec: ModelSpec, model_path: Path, *, peers: PeerGroup | None = None) -> None:
        super().__init__(spec, model_path)
        self.runner = ModelRunner(spec, model_path, peers=peers)
        self.scheduler: BatchScheduler | None = None
        # LoRA adapters loaded on the model (event-loop side), and those let go once unused
        self._adapters: set[str] = set()
        self._doomed: set[str] = set()
        self._adapter_lock = asyncio.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await asyncio.to_thread(self._load)
        assert self.scheduler is not None
        self.scheduler.start()
        if self.runner.peers is not None:
            self.runner.peers.watch(self._peer_lost)

    def _peer_lost(self, reason: str) -> None:
        """A tensor-parallel rank died (any thread): end every request now, then report the break.

        NOTE: the group cannot heal (rank 0 may be stuck in a collective with the dead rank, and
        a new rank cannot join a formed process group), so only a new replica serves again.
        """
        message = f"a tensor-parallel rank of model {self.spec.id!r} died: {reason}"
        if self.scheduler is not None:
            self.scheduler.fail(message)
        self._fatal(message)

    def _load(self) -> None:
        from transformers import AutoTokenizer

        tokenizer: Any = AutoTokenizer.from_pretrained(self.model_path)
        self.runner.load()
        config = self.runner.model_config
        context = context_length(self.spec, config)
        budget = self.runner.kv_budget
        if budget.capacity_tokens < context:
            logger.warning(
                "model %s: kv_cache_bytes holds %d tokens, so its context is cut from %d to %d",
                self.spec.id,
                budget.capacity_tokens,
                context,
                budget.capacity_tokens,
            )
            context = budget.capacity_tokens
        eos: set[int] = set()
        for source in (getattr(self.runner.local.model, "generation_config", None), config, tokenizer):
            value = getattr(source, "eos_token_id", None)
            if isinstance(value, int):
                eos.add(value)
            elif isinstance(value, list | tuple):
                eos.update(int(v) for v in value)
        prefix_state = self.runner.prefix_cache_state()
        prefix_cache = None
        if prefix_state == ON:
            settings = self.spec.prefix_cache
            held = settings.max_tokens
            if held is None:
                held = min(budget.capacity_tokens // 4, DEFAULT_PREFIX_CACHE_BYTES // budget.bytes_per_token)
            prefix_cache = PrefixCache(settings.block_size, held)
            if prefix_cache.capacity_blocks == 0:
                prefix_state, prefix_cache = "off: prefix_cache.max_tokens holds no block", None
        if prefix_state != ON:
            logger.info("model %s: prefix cache %s", self.spec.id, prefix_state)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(eos, default=0)
        self.scheduler = BatchScheduler(
            self.spec,
            self.runner,
            tokenizer,
            eos_token_ids=eos,
            max_context_length=context,
            pad_token_id=int(pad),
            vocab_size=int(config.vocab_size),
            kv_budget=budget,
            # NOTE: cheap until the first structured request builds the tokenizer's grammar tables
            grammars=GrammarCompiler(tokenizer, eos_token_ids=eos, name=self.spec.id),
            prefix_cache=prefix_cache,
            prefix_cache_state=prefix_state,
        )
        self._info = ModelInfo(
            model_id=self.spec.id,
            task=self.spec.task.value,
            max_context_length=context,
            vocab_size=int(config.vocab_size),
            eos_token_ids=sorted(eos),
            tensor_parallel_size=self.spec.tensor_parallel_size,
            architecture=str(getattr(config, "model_type", "")),
        )

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        if self.scheduler is None:
            raise EngineNotReady(f"model {self.spec.id!r} is still loading")
        if request.adapter is not None and request.adapter.name not in self._adapters:
            raise EngineError(f"adapter {request.adapter.name!r} is not loaded on model {self.spec.id!r}")
        try:
            async for chunk in self.scheduler.generate(request):
                yield chunk
        finally:
            if self._doomed:
                self._reap()

    @property
    def supports_adapters(self) -> bool:
        return self.runner.supports_adapters

    async def load_adapter(self, adapter: AdapterRef) -> None:
        """Load ``adapter`` between two steps (one load at a time); a loaded one is kept, not reloaded."""
        if self.scheduler is None:
            raise EngineNotReady(f"model {self.spec.id!r} is still loading")
        if not self.supports_adapters:
            await super().load_adapter(adapter)
        if adapter.name in self._adapters and adapter.name not in self._doomed:
            return  # NOTE: the request path's case (the replica asks before every adapter request)
        scheduler = self.scheduler
        async with self._adapter_lock:
            self._doomed.discard(adapter.name)
            if adapter.name in self._adapters:
                return
            try:
                await scheduler.between_steps(lambda: self.runner.load_adapter(adapter.name, adapter.path))
            except Exception as exc:
                raise EngineError(f"adapter {adapter.name!r} could not be loaded: {exc}") from exc
            self._adapters.add(adapter.name)
            logger.info("model %s: adapter %s loaded from %s", self.spec.id, adapter.name, adapter.path)

    def unload_adapter(self, name: str) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._doom, name)

    def _doom(self, name: str) -> None:
        if name in self._adapters:
            self._doomed.add(name)
            self._reap()

    def _reap(self) -> None:
        """Unload the adapters let go that no sequence uses any more (event loop)."""
        scheduler = self.scheduler
        if scheduler is None:
            return
        for name in [n for n in self._doomed if not scheduler.uses_adapter(n)]:
            self._doomed.discard(name)
            self._adapters.discard(name)
            # NOTE: queued behind any earlier load and ahead of any later one (run in order)
            scheduler.queue_between_steps(functools.partial(self.runner.unload_adapter, name))
            logger.info("model %s: adapter %s unloaded", self.spec.id, name)

    def health(self) -> EngineHealth:
        scheduler = self.scheduler
        if scheduler is None:
            return EngineHealth(healthy=False, detail="loading")
        if not scheduler.alive:
            return EngineHealth(healthy=False, detail=f"scheduler stopped: {scheduler.last_error}")
        if self.runner.peers is not None:
            try:
                self.runner.peers.check_alive()
            except Exception as exc:
                return EngineHealth(healthy=False, detail=f"tensor-parallel peer lost: {exc}")
        return EngineHealth(
            healthy=True,
            running=scheduler.num_running,
            waiting=scheduler.num_waiting,
            steps=scheduler.steps,
            peak_batch=scheduler.peak_batch,
            kv_capacity_tokens=scheduler.kv_budget.capacity_tokens,
            kv_used_tokens=scheduler.kv_used_tokens,
            kv_peak_tokens=scheduler.kv_peak_tokens,
            kv_deferred=scheduler.kv_deferred,
            chunked_prompts=scheduler.chunked_prompts,
            adapters=sorted(self._adapters),
            prefill_chunk_tokens=scheduler.chunk_tokens,
            **self._prefix_cache_health(scheduler),
        )

    @staticmethod
    def _prefix_cache_health(scheduler: BatchScheduler) -> dict[str, Any]:
        cache = scheduler.prefix_cache
        if cache is None:
            return {"prefix_cache": scheduler.prefix_cache_state}
        # NOTE: read from the event loop while the model thread updates them: plain int reads
        return {
            "prefix_cache": scheduler.prefix_cache_state,
            "prefix_cache_queries": cache.queries,
            "prefix_cache_hits": cache.hits,
            "prefix_cache_tokens": cache.num_tokens,
            "prefix_cache_capacity_tokens": cache.capacity_tokens,
        }

    async def shutdown(self) -> None:
        if self.scheduler is not None:
            await asyncio.to_thread(self.scheduler.shutdown)
        self.runner.shutdown()
