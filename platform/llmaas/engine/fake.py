"""A fake engine: the engine contract without model weights, for Serve-layer tests and load tests.

A catalog entry names it, with its own settings (``FakeEngineArgs``)::

    engine: {cls: "llmaas.engine.fake:FakeEngine", args: {step_delay_s: 0.01}}

To everything above the contract (router, handles, autoscaling, pools, ``llmaas status``) it
behaves like ``DeepSpeedEngine``: sequences stream a token per decoding step, at most
``batching.max_batch_size`` of them run together and the rest wait, ``health()`` counts both,
closing a stream frees its slot at once, ``stream_interval`` and ``stream=False`` shape the
chunks as the real scheduler does, and stop strings go through the real
``IncrementalDetokenizer``. Nothing is loaded: token ``t`` reads `` w<t>``, drawn from a
generator seeded by the model id and the prompt (and the request's seed when it samples), so
greedy requests repeat and different prompts (or models) differ. ``task: embed`` entries get
deterministic unit vectors. Logprobs and prompt logprobs, when asked, are plausible made-up
values (negative, deterministic, the token first in its top list, alternatives less likely),
and ``max_tokens`` 0 with prompt logprobs (an echo) returns the prompt's logprobs alone.
``stop_token_ids`` end a sequence as EOS does, and stop strings count only from ``min_tokens`` on
(the real detokenizer's rule); other sampling controls (penalties, ``logit_bias``, the
``min_tokens`` ban of EOS) are accepted and ignored. Structured output (``sampling.structured``)
is refused with ``InvalidStructuredOutput`` naming its ``param`` (a 400): the fake's words cannot
follow a grammar, and output that claimed to would mislead a test.
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import hashlib
import logging
import math
import random
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from llmaas.config.catalog import ModelSpec, Task
from llmaas.engine.chunks import coalesced, interval_policy
from llmaas.engine.detokenizer import IncrementalDetokenizer
from llmaas.engine.errors import EngineError, EngineNotReady, InvalidStructuredOutput, UnsupportedTask
from llmaas.engine.protocol import Engine
from llmaas.engine.types import (
    EngineHealth,
    FinishReason,
    GenerationChunk,
    GenerationRequest,
    ModelInfo,
    TokenLogprob,
)

logger = logging.getLogger(__name__)

FAKE_ENGINE_PATH = "llmaas.engine.fake:FakeEngine"

#: Token ids below this one are special (pad, bos, eos by default): they have no text.
FIRST_WORD_ID = 3


class FakeEngineArgs(BaseModel):
    """The fake's settings: ``engine.args`` of a catalog entry whose ``engine.cls`` is the fake."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    step_delay_s: float = Field(
        default=0.0, ge=0.0, le=60.0, description="Seconds one decoding step (or one embedding batch) takes."
    )
    load_delay_s: float = Field(default=0.0, ge=0.0, le=3600.0, description="Seconds start() takes.")
    max_context_length: int = Field(
        default=2048,
        ge=8,
        description="The model's context when the catalog entry sets no max_context_length.",
    )
    vocab_size: int = Field(default=32000, ge=FIRST_WORD_ID + 2, description="Token ids are below this.")
    eos_token_id: int = Field(default=2, ge=0, description="The end-of-sequence token id.")
    eos_after_tokens: int = Field(
        default=0,
        ge=0,
        description="Generate EOS as the N-th token (finish 'stop' unless ignore_eos); 0: never.",
    )
    embedding_dim: int = Field(
        default=32, ge=1, le=65536, description="Length of the vectors of task: embed."
    )
    fail_after_tokens: int = Field(
        default=0,
        ge=0,
        description="Every sequence ends with an error after N tokens (a failed step); 0: never.",
    )
    fatal_after_tokens: int = Field(
        default=0,
        ge=0,
        description=(
            "The engine breaks beyond repair once a sequence has N tokens (as when a tensor-parallel"
            " rank dies): every sequence ends with an error, health turns unhealthy; 0: never."
        ),
    )
    fail_start: bool = Field(default=False, description="start() raises, as a model that cannot load.")

    @model_validator(mode="after")
    def _eos_in_vocab(self) -> FakeEngineArgs:
        if self.eos_token_id >= self.vocab_size:
            raise ValueError(
                f"eos_token_id ({self.eos_token_id}) must be below vocab_size ({self.vocab_size})"
            )
        return self

    @classmethod
    def from_spec(cls, spec: ModelSpec) -> FakeEngineArgs:
        """The settings in ``spec.engine.args``; a clear ``ValueError`` for unknown keys or bad values."""
        args = dict(spec.engine.args) if spec.engine is not None else {}
        unknown = sorted(set(args) - set(cls.model_fields))
        if unknown:
            hints = [
                f"{key!r} (did you mean {close[0]!r}?)" if close else repr(key)
                for key in unknown
                for close in [difflib.get_close_matches(key, list(cls.model_fields), n=1)]
            ]
            raise ValueError(
                f"model {spec.id!r}: engine.args has unknown key(s) {', '.join(hints)} for "
                f"{FAKE_ENGINE_PATH}; it takes: {', '.join(cls.model_fields)}"
            )
        try:
            return cls.model_validate(args)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or 'args'}: {err['msg']}"
                for err in exc.errors(include_url=False)
            )
            raise ValueError(f"model {spec.id!r}: engine.args of {FAKE_ENGINE_PATH}: {problems}") from None


class FakeDecoder:
    """The fake's tokenizer, as far as ``IncrementalDetokenizer`` needs one: token ``t`` is `` w<t>``."""

    def __init__(self, special: set[int]) -> None:
        self.special = special

    def decode(self, token_ids: list[int], skip_special_tokens: bool = False) -> str:
        return "".join(
            f" w{t}" if t not in self.special else ("" if skip_special_tokens else f"<s{t}>")
            for t in token_ids
        )


def _seed(*parts: object) -> int:
    """A stable 64-bit seed (``hash()`` of a str changes between processes)."""
    return int.from_bytes(hashlib.blake2b(repr(parts).encode(), digest_size=8).digest(), "big")


@dataclass(eq=False)
class FakeSequence:
    """One request in the fake scheduler."""

    request: GenerationRequest
    max_new_tokens: int
    rng: random.Random
    detok: IncrementalDetokenizer
    out: asyncio.Queue[GenerationChunk] = field(default_factory=asyncio.Queue)
    generated: list[int] = field(default_factory=list)
    done: bool = False
    vocab_size: int = 32000
    prompt_logprobs_sent: bool = False

    @property
    def prompt_len(self) -> int:
        return len(self.request.prompt_token_ids)

    def chunk(self, **fields: Any) -> GenerationChunk:
        """As ``BatchScheduler._chunk``: prompt logprobs on the first chunk, a logprob per token."""
        params = self.request.sampling
        if params.prompt_logprobs is not None and not self.prompt_logprobs_sent:
            self.prompt_logprobs_sent = True
            prompt = self.request.prompt_token_ids
            fields["prompt_logprobs"] = [None] + [
                _fake_logprob(t, prompt[i - 1], params.prompt_logprobs, self.vocab_size)
                for i, t in enumerate(prompt)
                if i
            ]
        if params.logprobs is not None:
            context = [*self.request.prompt_token_ids, *self.generated]
            ids = fields.get("token_ids", [])
            before = context[len(context) - len(ids) - 1 : len(context) - 1] if ids else []
            fields["logprobs"] = [
                _fake_logprob(t, prev, params.logprobs, self.vocab_size)
                for t, prev in zip(ids, before, strict=True)
            ]
        return GenerationChunk(
            request_id=self.request.request_id,
            num_prompt_tokens=self.prompt_len,
            num_generated_tokens=len(self.generated),
            **fields,
        )


def _fake_logprob(token: int, previous: int, top_n: int, vocab_size: int) -> TokenLogprob:
    """A made-up, deterministic logprob of ``token`` after ``previous``: the most likely of its top
    ``top_n``, the alternatives (other word tokens) less likely, every value negative."""
    value = -0.05 - (_seed(previous, token) % 400) / 100.0
    words = vocab_size - FIRST_WORD_ID
    top = [(token, value)]
    step = 1
    while len(top) < top_n and len(top) < words:
        alt = FIRST_WORD_ID + (token - FIRST_WORD_ID + 7 * step) % words
        step += 1
        if all(alt != t for t, _ in top):
            top.append((alt, value - 0.5 * len(top)))
    return TokenLogprob(token_id=token, logprob=value, top=top[:top_n])


class FakeEngine(Engine):
    """Continuous batching over no model: a step appends one drawn token to every running sequence."""

    def __init__(self, spec: ModelSpec, model_path: Path, **_: Any) -> None:
        # NOTE: extra keywords (the tensor-parallel ``peers`` a ModelReplica hands in) are ignored:
        # the fake has no shards.
        super().__init__(spec, model_path)
        self.args = FakeEngineArgs.from_spec(spec)
        self.context = spec.max_context_length or self.args.max_context_length
        self._decoder = FakeDecoder({*range(FIRST_WORD_ID), self.args.eos_token_id})
        self._waiting: deque[FakeSequence] = deque()
        self._running: list[FakeSequence] = []
        self._stream_interval = interval_policy(
            self.spec.batching.stream_interval, lambda: len(self._running)
        )
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopped = False
        self.last_error: str | None = None
        self.steps = 0
        self.peak_batch = 0
        self.kv_peak_tokens = 0

    # ---- the contract ----------------------------------------------------------------
    async def start(self) -> None:
        await asyncio.sleep(self.args.load_delay_s)
        if self.args.fail_start:
            raise EngineError(f"model {self.spec.id!r} failed to load (engine.args.fail_start of the fake)")
        generates = self.spec.task is Task.GENERATE
        self._info = ModelInfo(
            model_id=self.spec.id,
            task=self.spec.task.value,
            max_context_length=self.context,
            vocab_size=self.args.vocab_size,
            eos_token_ids=[self.args.eos_token_id] if generates else [],
            embedding_dim=None if generates else self.args.embedding_dim,
            tensor_parallel_size=self.spec.tensor_parallel_size,
            architecture="fake",
        )
        if generates:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name=f"fake-{self.spec.id}")

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        if self.spec.task is not Task.GENERATE:
            raise UnsupportedTask(
                f"model {self.spec.id!r} does not generate text (task: {self.spec.task.value})"
            )
        self._check_serving()
        params = request.sampling
        if params.structured is not None:
            raise InvalidStructuredOutput(
                f"model {self.spec.id!r} cannot follow {params.structured.kind} structured output: "
                "the fake engine does not constrain output",
                params.structured.param,
            )
        seq = FakeSequence(
            request=request,
            max_new_tokens=max(0, min(params.max_tokens, self.context - len(request.prompt_token_ids))),
            rng=random.Random(self._sequence_seed(request)),
            detok=IncrementalDetokenizer(self._decoder, params.stop, params.min_tokens),
            vocab_size=self.args.vocab_size,
        )
        self._waiting.append(seq)
        self._wake.set()
        try:
            # NOTE: messages are shaped as BatchScheduler's (llmaas.engine.chunks)
            async for chunk in coalesced(seq.out, request.stream, self._stream_interval):
                yield chunk
        finally:
            if not seq.done:  # closed early (client gone): the slot is free from now on
                seq.done = True
                self._drop(seq)

    async def embed(self, inputs: list[list[int]]) -> list[list[float]]:
        if self.spec.task is not Task.EMBED:
            return await super().embed(inputs)  # raises UnsupportedTask
        self._check_serving()
        size = self.spec.batching.max_batch_size
        vectors: list[list[float]] = []
        for start in range(0, len(inputs), size):
            await asyncio.sleep(self.args.step_delay_s)
            self.steps += 1
            batch = inputs[start : start + size]
            self.peak_batch = max(self.peak_batch, len(batch))
            vectors.extend(self._vector(ids) for ids in batch)
        return vectors

    def health(self) -> EngineHealth:
        if self._info is None:
            return EngineHealth(healthy=False, detail="loading")
        if self.fatal_error is not None or self.last_error is not None:
            return EngineHealth(healthy=False, detail=f"broken: {self.fatal_error or self.last_error}")
        return EngineHealth(
            healthy=True,
            detail="fake engine",
            running=len(self._running),
            waiting=len(self._waiting),
            steps=self.steps,
            peak_batch=self.peak_batch,
            kv_capacity_tokens=self.spec.batching.max_batch_size * self.context,
            kv_used_tokens=self._kv_used(),
            kv_peak_tokens=self.kv_peak_tokens,
        )

    async def shutdown(self) -> None:
        self._stopped = True
        self._end_all("the engine shut down")
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    # ---- the scheduler ---------------------------------------------------------------
    @property
    def num_running(self) -> int:
        return len(self._running)

    @property
    def num_waiting(self) -> int:
        return len(self._waiting)

    async def _loop(self) -> None:
        try:
            while True:
                if not self._running and not self._waiting:
                    self._wake.clear()
                    await self._wake.wait()
                    # an idle engine waits for company, as the real scheduler does
                    await asyncio.sleep(self.spec.batching.batch_wait_ms / 1000.0)
                self._admit()
                if not self._running:
                    continue
                await asyncio.sleep(self.args.step_delay_s)
                self._step()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug here must end every request, not hang them
            logger.exception("fake engine of %s failed", self.spec.id)
            self.last_error = f"{type(exc).__name__}: {exc}"
            self._end_all(f"generation failed: {self.last_error}")

    def _admit(self) -> None:
        """Waiting sequences join the batch, in arrival order, while it has free rows."""
        while self._waiting and len(self._running) < self.spec.batching.max_batch_size:
            seq = self._waiting.popleft()
            if seq.done:
                continue
            if seq.max_new_tokens == 0:  # the prompt fills the context, or an echo scores it
                self._finish(seq, FinishReason.LENGTH)
                continue
            self._running.append(seq)

    def _step(self) -> None:
        """One decoding step: every running sequence gets one token."""
        batch = list(self._running)
        self.steps += 1
        self.peak_batch = max(self.peak_batch, len(batch))
        for seq in batch:
            if seq.done:
                continue
            if self.args.fatal_after_tokens and len(seq.generated) >= self.args.fatal_after_tokens:
                self._break(
                    f"the fake engine of model {self.spec.id!r} broke after {len(seq.generated)} tokens "
                    "(engine.args.fatal_after_tokens)"
                )
                return
            if self.args.fail_after_tokens and len(seq.generated) >= self.args.fail_after_tokens:
                self._finish(
                    seq,
                    FinishReason.ABORT,
                    error=f"generation failed: the fake engine fails sequences after "
                    f"{self.args.fail_after_tokens} tokens (engine.args.fail_after_tokens)",
                )
                continue
            self._advance(seq, self._next_token(seq))
        self.kv_peak_tokens = max(self.kv_peak_tokens, self._kv_used())
        self._running = [s for s in self._running if not s.done]

    def _next_token(self, seq: FakeSequence) -> int:
        if self.args.eos_after_tokens and len(seq.generated) + 1 == self.args.eos_after_tokens:
            return self.args.eos_token_id
        eos = self.args.eos_token_id
        token = seq.rng.randrange(FIRST_WORD_ID, self.args.vocab_size - (eos >= FIRST_WORD_ID))
        return token + 1 if FIRST_WORD_ID <= eos <= token else token  # NOTE: uniform over words, never eos

    def _advance(self, seq: FakeSequence, token_id: int) -> None:
        """As ``BatchScheduler._advance``: append a token, then stop, finish or emit its text."""
        seq.generated.append(token_id)
        params = seq.request.sampling
        eos = token_id == self.args.eos_token_id and not params.ignore_eos
        if eos or token_id in params.stop_token_ids:
            self._finish(seq, FinishReason.STOP, token_ids=[token_id], text=seq.detok.flush())
            return
        text = seq.detok.push(token_id)
        if seq.detok.stopped:
            self._finish(seq, FinishReason.STOP, token_ids=[token_id], text=text)
        elif len(seq.generated) >= seq.max_new_tokens:
            self._finish(seq, FinishReason.LENGTH, token_ids=[token_id], text=text + seq.detok.flush())
        else:
            seq.out.put_nowait(seq.chunk(text=text, token_ids=[token_id]))

    def _finish(
        self,
        seq: FakeSequence,
        reason: FinishReason,
        *,
        token_ids: list[int] | None = None,
        text: str = "",
        error: str | None = None,
    ) -> None:
        seq.done = True
        seq.out.put_nowait(seq.chunk(text=text, token_ids=token_ids or [], finish_reason=reason, error=error))

    def _drop(self, seq: FakeSequence) -> None:
        with contextlib.suppress(ValueError):
            self._running.remove(seq)
        with contextlib.suppress(ValueError):
            self._waiting.remove(seq)

    def _end_all(self, error: str) -> None:
        for seq in [*self._running, *self._waiting]:
            if not seq.done:
                self._finish(seq, FinishReason.ABORT, error=error)
        self._running, self._waiting = [], deque()

    def _break(self, reason: str) -> None:
        """Break beyond repair, as ``DeepSpeedEngine._peer_lost``: end everything, then tell the replica."""
        self._end_all(reason)
        self._fatal(reason)

    def _check_serving(self) -> None:
        if self._info is None:
            raise EngineNotReady(f"model {self.spec.id!r} is still loading")
        broken = self.fatal_error or self.last_error
        if broken is not None or self._stopped:
            why = f": {broken}" if broken else ""
            raise EngineNotReady(f"model {self.spec.id!r} is not running{why}")

    def _kv_used(self) -> int:
        return sum(s.prompt_len + len(s.generated) for s in self._running)

    def _sequence_seed(self, request: GenerationRequest) -> int | None:
        """Greedy: the model and prompt decide the tokens; sampling adds the seed, or chance without one."""
        params = request.sampling
        if not params.greedy and params.seed is None:
            return None
        return _seed(self.spec.id, request.prompt_token_ids, None if params.greedy else params.seed)

    def _vector(self, token_ids: list[int]) -> list[float]:
        rng = random.Random(_seed(self.spec.id, token_ids))
        values = [rng.gauss(0.0, 1.0) for _ in range(self.args.embedding_dim)]
        norm = math.sqrt(sum(v * v for v in values)) or 1.0
        return [v / norm for v in values]


__all__ = ["FAKE_ENGINE_PATH", "FakeEngine", "FakeEngineArgs"]
