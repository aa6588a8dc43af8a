"""The router's exact-response cache: the same deterministic request gets the same answer again.

A model opts in through the catalog (``response_cache``); a request takes part when it sends
``"cache": true`` (or by the model's default) and its answer is a function of its body: one
choice, greedy (temperature 0, asked or the model's default) or seeded. The key is a hash of the
canonical body (its JSON with sorted keys, without the fields that only label it), the model's
revision (its catalog entry's weights and numerics) and the tenant (the caller's key id), so a
tenant never sees another's answers. A hit is answered with a new id and time and, when the
request streams, streams the recorded chunks as the miss did. Entries live ``ttl_s`` and each
model holds at most ``max_entries`` answers and ``max_bytes`` of them (least recently used go
first). Each router replica holds its own cache; nothing crosses processes.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Literal, TypeVar

from pydantic import BaseModel

from llmaas.config.catalog import ModelSpec
from llmaas.openai.protocol import ChatCompletionRequest, CompletionRequest, new_id, now

#: The header that tells the caller what the cache did.
CACHE_HEADER = "X-LLMaaS-Cache"
CacheStatus = Literal["hit", "miss", "bypass"]
#: What the cache did for the current request (the router copies it into ``CACHE_HEADER``).
CACHE_STATUS: ContextVar[CacheStatus | None] = ContextVar("llmaas_cache_status", default=None)


def cache_status() -> CacheStatus | None:
    """What the cache did for the current request (None: the model has no cache)."""
    return CACHE_STATUS.get()


def reset_cache_status() -> None:
    CACHE_STATUS.set(None)


R = TypeVar("R", bound=BaseModel)
#: Body fields that label a request without changing its answer.
_LABELS = {"cache", "user", "metadata", "store"}
_GREEDY_BELOW = 1e-5


@dataclass
class _Entry:
    answer: list[BaseModel]  # the response, or a stream's chunks in order
    size: int
    expires: float


def revision(spec: ModelSpec) -> str:
    """What makes one model's answers: its weights and numerics (not its replicas or batching)."""
    fields = spec.model_dump(
        mode="json", include={"source", "dtype", "quantization", "tensor_parallel_size", "max_context_length"}
    )
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def cacheable(request: CompletionRequest | ChatCompletionRequest, spec: ModelSpec) -> bool:
    """Whether this request may use the cache: the model and request opt in, and the answer is a
    function of the body."""
    config = spec.response_cache
    wanted = request.cache if request.cache is not None else config.default
    if not (config.enabled and wanted) or request.n != 1:
        return False
    temperature = request.temperature if request.temperature is not None else spec.sampling.temperature
    return temperature < _GREEDY_BELOW or request.seed is not None


class ResponseCache:
    """Per model: an LRU of answers with a time to live and an entry and byte budget."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._models: dict[str, OrderedDict[str, _Entry]] = {}
        self._bytes: dict[str, int] = {}
        # NOTE: per model id, the spec a revision was hashed from: a catalog load hashes each once.
        self._revisions: dict[str, tuple[ModelSpec, str]] = {}

    def _revision(self, spec: ModelSpec) -> str:
        """``revision(spec)``, hashed once per spec (a catalog load brings new specs)."""
        known = self._revisions.get(spec.id)
        if known is None or known[0] is not spec:
            known = self._revisions[spec.id] = (spec, revision(spec))
        return known[1]

    def key(
        self, request: CompletionRequest | ChatCompletionRequest, spec: ModelSpec, tenant: str | None
    ) -> str | None:
        """The request's key; None when it may not use the cache."""
        if not cacheable(request, spec):
            return None
        body = request.model_dump(mode="json", exclude=_LABELS, exclude_none=True, by_alias=True)
        text = json.dumps([type(request).__name__, body, self._revision(spec), tenant], sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()

    def get(self, spec: ModelSpec, key: str) -> list[BaseModel] | None:
        entries = self._models.get(spec.id)
        entry = entries.get(key) if entries is not None else None
        if entries is None or entry is None:
            return None
        if entry.expires <= self._clock():
            self._drop(spec.id, key)
            return None
        entries.move_to_end(key)
        return entry.answer

    def put(self, spec: ModelSpec, key: str, answer: list[BaseModel]) -> None:
        config = spec.response_cache
        size = sum(len(part.model_dump_json()) for part in answer)
        if size > config.max_bytes:
            return
        entries = self._models.setdefault(spec.id, OrderedDict())
        if key in entries:
            self._drop(spec.id, key)
        entries[key] = _Entry(answer, size, self._clock() + config.ttl_s)
        self._bytes[spec.id] = self._bytes.get(spec.id, 0) + size
        while len(entries) > config.max_entries or self._bytes[spec.id] > config.max_bytes:
            self._drop(spec.id, next(iter(entries)))

    def _drop(self, model: str, key: str) -> None:
        entry = self._models[model].pop(key)
        self._bytes[model] -= entry.size

    def forget(self, keep: Iterable[ModelSpec]) -> None:
        """A catalog change: drop the models not in ``keep`` and hash each kept model's revision."""
        self._revisions = {spec.id: (spec, revision(spec)) for spec in keep}
        for model in [m for m in self._models if m not in self._revisions]:
            del self._models[model]
            self._bytes.pop(model, None)

    def __len__(self) -> int:
        return sum(len(entries) for entries in self._models.values())


def fresh(part: R, rid: str, created: int) -> R:
    """A cached response or chunk under the id and time of the request it now answers."""
    return part.model_copy(update={"id": rid, "created": created})


def fresh_ids(prefix: str) -> tuple[str, int]:
    return new_id(prefix), now()


async def replay(answer: list[R], prefix: str) -> AsyncIterator[R]:
    """A cached stream's chunks again, under a new id: a hit streams as the miss did."""
    rid, created = fresh_ids(prefix)
    for part in answer:
        yield fresh(part, rid, created)


async def recording(stream: AsyncIterator[R], keep: Callable[[list[R]], None]) -> AsyncIterator[R]:
    """``stream`` as it is; once it ends whole (its last choice finished), ``keep`` its chunks."""
    parts: list[R] = []
    async for part in stream:
        parts.append(part)
        yield part
    if parts and _finished(parts):
        keep(parts)


def _finished(parts: list[R]) -> bool:
    for part in reversed(parts):
        choices = getattr(part, "choices", None)
        if choices:
            return all(getattr(c, "finish_reason", None) is not None for c in choices)
    return False
