"""The engine contract: what a ModelReplica needs from an inference backend.

Deployments depend on this class only; the DeepSpeed backend implements it. A catalog entry
chooses another implementation with ``engine: {cls: "module:Class", args: {...}}`` (Serve-layer
tests and load tests name ``llmaas.engine.fake:FakeEngine``), which every builder path honours;
code that makes a ``ModelReplica`` itself can also hand one in through its keyword-only
``engine_cls`` argument.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from llmaas.config.catalog import ModelSpec
from llmaas.engine.errors import EngineNotReady, UnsupportedTask
from llmaas.engine.types import AdapterRef, EngineHealth, GenerationChunk, GenerationRequest, ModelInfo

logger = logging.getLogger(__name__)


class Engine(ABC):
    """An inference backend for one model in one replica."""

    def __init__(self, spec: ModelSpec, model_path: Path) -> None:
        self.spec = spec
        self.model_path = model_path
        self._info: ModelInfo | None = None  # set by start()
        self._on_fatal: Callable[[str], None] | None = None
        self.fatal_error: str | None = None

    @abstractmethod
    async def start(self) -> None:
        """Load weights, form the tensor-parallel group, warm up. Called once before traffic."""

    @property
    def info(self) -> ModelInfo:
        """Limits and special tokens; valid after ``start``."""
        if self._info is None:
            raise EngineNotReady(f"model {self.spec.id!r} is still loading")
        return self._info

    def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        """Stream chunks for one sequence. Closing the iterator cancels the sequence."""
        raise UnsupportedTask(f"model {self.spec.id!r} does not generate text (task: {self.spec.task.value})")

    async def embed(self, inputs: list[list[int]]) -> list[list[float]]:
        """One normalised vector per tokenized input."""
        raise UnsupportedTask(
            f"model {self.spec.id!r} does not make embeddings (task: {self.spec.task.value})"
        )

    async def classify(self, inputs: list[list[int]]) -> list[list[float]]:
        """Class probabilities per tokenized input, in the order of ``info.labels``."""
        raise UnsupportedTask(f"model {self.spec.id!r} does not classify text (task: {self.spec.task.value})")

    @property
    def supports_adapters(self) -> bool:
        """Whether requests may run LoRA adapters over this model's weights (``load_adapter``)."""
        return False

    async def load_adapter(self, adapter: AdapterRef) -> None:
        """Load ``adapter`` (if it is not loaded) so that requests naming it can run."""
        raise UnsupportedTask(f"model {self.spec.id!r} does not serve LoRA adapters")

    def unload_adapter(self, name: str) -> None:  # noqa: B027 - optional hook
        """Let adapter ``name`` go once no sequence uses it; callable from any thread."""

    @abstractmethod
    def health(self) -> EngineHealth:
        """Cheap liveness/readiness report."""

    async def shutdown(self) -> None:  # noqa: B027 - optional hook
        """Release workers and memory."""

    def on_fatal(self, callback: Callable[[str], None]) -> None:
        """Have ``callback(reason)`` called once, from any thread, if the engine breaks beyond repair.

        A tensor-parallel rank that died is such a break: the engine has already ended its
        requests with an error and refuses new ones, and only a new replica can serve again.
        Engines that cannot break that way never call it.
        """
        self._on_fatal = callback
        if self.fatal_error is not None:
            callback(self.fatal_error)

    def _fatal(self, reason: str) -> None:
        """Record a break beyond repair and tell the ``on_fatal`` callback (once)."""
        if self.fatal_error is not None:
            return
        self.fatal_error = reason
        logger.error("model %s cannot serve any more: %s", self.spec.id, reason)
        if self._on_fatal is not None:
            self._on_fatal(reason)
