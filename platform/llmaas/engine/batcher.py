"""The generation scheduler of a replica: continuous batching over a ModelRunner.

Requests join the running batch between decode steps: newcomers are prefilled together
(left-padded, within ``max_batch_tokens``) and their KV cache is merged into the running
one, left-padded to a common length. A finished or cancelled row leaves at the next step,
and cache columns that became padding in every row are dropped.

Chunked prefill: a prompt of more than four chunks that arrives while others decode is prefilled a
chunk per decode step, in a KV cache of its own (``_Chunking``), and joins the batch with its last
chunk; running streams keep stepping meanwhile. Unless the catalog fixes the chunk size, it is
sized from measured step times so that a chunk costs about one decode step of the running batch.

The model runs in one background thread (torch releases the GIL in its kernels), so the
replica's event loop keeps streaming tokens and taking requests while a step runs.

Structured output: ``generate`` compiles a request's grammar before queueing it, on the event
loop's side, through the ``GrammarCompiler`` (its own thread, bounded in time and size), so a
slow or hostile schema never stalls the step thread, and a refused one never enters the
batch. The sampler masks constrained rows; a sequence whose grammar is complete ends at once
with finish reason ``stop``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from llmaas.config.catalog import ModelSpec
from llmaas.engine.chunks import coalesced, interval_policy
from llmaas.engine.detokenizer import Decoder, IncrementalDetokenizer
from llmaas.engine.errors import EngineNotReady, InvalidStructuredOutput
from llmaas.engine.guided import GrammarCompiler
from llmaas.engine.kv_budget import KVBudget
from llmaas.engine.kv_slab import compaction_order
from llmaas.engine.prefix_cache import PrefixCache
from llmaas.engine.runner import ModelRunner, StepInput
from llmaas.engine.sampling import SequenceSampler, prompt_logprobs, sample_batch
from llmaas.engine.types import FinishReason, GenerationChunk, GenerationRequest, TokenLogprob

logger = logging.getLogger(__name__)

#: Most bytes of float32 logits one prompt-logprobs prefill may hold (rows x width x vocab x 4):
#: rows that ask for prompt logprobs are prefilled in groups that stay under it (one row alone
#: may exceed it). NOTE: only those rows pay for logits at every position; the others are
#: prefilled apart, with the last position's logits only.
PROMPT_LOGITS_BYTES = 256 * 2**20
#: Chunked prefill: the first chunk size before any step was timed, and the least one (below it,
#: a step's fixed cost dominates and the prompt would take too many steps).
FIRST_CHUNK_TOKENS = 64
MIN_CHUNK_TOKENS = 16
#: A prompt is prefilled in chunks when it holds more than this many chunks: a shorter one stalls the
#: running streams for a few steps at most, and every chunk costs a forward pass of its own.
LONG_PROMPT_CHUNKS = 4


@dataclass(eq=False)
class Sequence:
    """One request being generated; touched by the event loop (queue, cancel) and the model thread."""

    request: GenerationRequest
    loop: asyncio.AbstractEventLoop
    detok: IncrementalDetokenizer
    max_new_tokens: int
    sampler: SequenceSampler
    out: asyncio.Queue[GenerationChunk] = field(default_factory=asyncio.Queue)
    generated: list[int] = field(default_factory=list)
    prompt_logprobs: list[TokenLogprob | None] | None = None  # computed at prefill, sent with the first chunk
    cached_tokens: int = 0  # prompt tokens whose KV came from the prefix cache
    prefix_keys: list[bytes] | None = None  # the prompt's block keys in the prefix cache
    cancelled: bool = False  # NOTE: set by the event loop, read by the model thread; a bool store is atomic
    done: bool = False

    @property
    def prompt_len(self) -> int:
        return len(self.request.prompt_token_ids)

    @property
    def adapter(self) -> str:
        """The LoRA adapter this sequence runs with ("": the base weights)."""
        return self.request.adapter.name if self.request.adapter is not None else ""

    @property
    def scores_only(self) -> bool:
        """Prompt logprobs and nothing generated (``max_tokens`` 0, an echo): one forward pass."""
        return self.max_new_tokens == 0 and self.request.sampling.prompt_logprobs is not None

    @property
    def final_len(self) -> int:
        """Cache slots the sequence holds when it ends (the admission reserve)."""
        return self.prompt_len + self.max_new_tokens

    def emit(self, chunk: GenerationChunk) -> None:
        try:
            self.loop.call_soon_threadsafe(self.out.put_nowait, chunk)
        except RuntimeError:  # the replica's event loop is closed: nobody is listening any more
            self.cancelled = True


@dataclass
class _Chunking:
    """The one prompt being prefilled in chunks; its KV so far is held by the runner (``partial``)."""

    seq: Sequence
    done: int = 0  # prompt tokens whose KV is held (the cached prefix included)
    started: bool = False  # a chunk ran: the next step resumes the runner's partial cache


@dataclass
class _Batch:
    """The running batch, row-aligned with the KV cache on every rank."""

    rows: list[Sequence] = field(default_factory=list)
    pending: list[int] = field(default_factory=list)  # sampled token each row feeds next
    alive: list[bool] = field(default_factory=list)
    mask: torch.Tensor | None = None  # [rows, cached tokens]: 0 marks left padding
    last_pos: torch.Tensor | None = None  # [rows]: position of each row's last cached token

    @property
    def num_alive(self) -> int:
        return sum(self.alive)

    def clear(self) -> None:
        self.rows, self.pending, self.alive = [], [], []
        self.mask = self.last_pos = None


def chunk_size(tokens: int, seconds: float, target_s: float, *, most: int) -> int:
    """The next chunk size, after a chunk of ``tokens`` took ``seconds``, for chunks of ``target_s``.

    NOTE: a step costs about ``a + b * tokens``; scaling the size by target / measured converges
    to the size whose step takes the target (each update shrinks the error by ``a / target``).
    Below ``MIN_CHUNK_TOKENS`` a step's fixed cost would dominate: the prompt would take too long.
    """
    if target_s <= 0 or seconds <= 0:
        return max(MIN_CHUNK_TOKENS, min(most, tokens))
    return max(MIN_CHUNK_TOKENS, min(most, round(tokens * target_s / seconds)))


def left_pad(mask: torch.Tensor, width: int) -> torch.Tensor:
    return torch.nn.functional.pad(mask, (width - mask.shape[1], 0))


class BatchScheduler:
    """Owns the waiting queue and the model thread."""

    def __init__(
        self,
        spec: ModelSpec,
        runner: ModelRunner,
        decoder: Decoder,
        *,
        eos_token_ids: set[int],
        max_context_length: int,
        kv_budget: KVBudget,
        pad_token_id: int = 0,
        vocab_size: int = 0,
        grammars: GrammarCompiler | None = None,
        prefix_cache: PrefixCache | None = None,
        prefix_cache_state: str = "",
    ) -> None:
        self.spec = spec
        self.runner = runner
        self.decoder = decoder
        self.eos_token_ids = eos_token_ids
        self.max_context_length = max_context_length
        self.pad_token_id = pad_token_id
        self.vocab_size = vocab_size  # sizes prompt-logprobs prefills (0: unknown, one group)
        self.kv_budget = kv_budget
        self.grammars = grammars  # None: structured output is refused (a 400)
        self.prefix_cache = prefix_cache  # None: every prompt is prefilled whole
        self.prefix_cache_state = prefix_cache_state  # "on" or "off: <why>"
        self._waiting: queue.Queue[Sequence] = queue.Queue()
        # work that must run between steps, on the model thread (loading an adapter changes the model)
        self._between_steps: queue.Queue[tuple[Callable[[], Any], concurrent.futures.Future[Any]]] = (
            queue.Queue()
        )
        self._running = 0
        self._stream_interval = interval_policy(self.spec.batching.stream_interval, lambda: self._running)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_error: str | None = None
        self.steps = 0
        self.peak_batch = 0
        self.kv_used_tokens = 0
        self.kv_peak_tokens = 0
        self.kv_deferred = 0  # admissions deferred because the KV cache was full
        self._deferred: Sequence | None = None
        self._chunking: _Chunking | None = None  # the prompt being prefilled in chunks
        self.chunk_tokens = spec.batching.prefill_chunk_tokens or FIRST_CHUNK_TOKENS
        self.chunked_prompts = 0  # prompts prefilled in chunks
        self._decode_s = 0.0  # moving average of a decode step's time (sizes the chunks)
        self._ended: list[tuple[Sequence, GenerationChunk]] = []  # last chunks of this step
        self._live: set[Sequence] = set()  # every sequence a caller still waits on (event loop side)
        self.failed = False

    # ---- event-loop side -------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name=f"llmaas-batch-{self.spec.id}", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self.failed

    def fail(self, reason: str) -> None:
        """End every sequence with ``reason`` and take no more; callable from any thread.

        For a break the model thread cannot see or survive: a tensor-parallel peer that died
        leaves rank 0 blocked inside a collective that never returns, so its sequences are
        ended from here. NOTE: a chunk the model thread sends after this one is never read
        (a caller stops at the first chunk that has a finish reason).
        """
        self.last_error = reason
        self.failed = True
        self._stop.set()
        for seq in list(self._live):
            if not seq.done:
                seq.done = True
                seq.emit(self._chunk(seq, finish_reason=FinishReason.ABORT, error=reason))

    @property
    def num_running(self) -> int:
        return self._running

    @property
    def num_waiting(self) -> int:
        return self._waiting.qsize() + (self._deferred is not None)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        if not self.alive:
            why = f": {self.last_error}" if self.failed else ""
            raise EngineNotReady(f"model {self.spec.id!r} is not running{why}")
        params = request.sampling
        matcher = None
        if params.structured is not None:
            if self.grammars is None:
                raise InvalidStructuredOutput(
                    f"model {self.spec.id!r} cannot constrain its output", params.structured.param
                )
            # NOTE: compiled off the model thread, within its bounds; raises before anything is queued
            matcher = (await self.grammars.compile(params.structured)).matcher()
        seq = Sequence(
            request=request,
            loop=asyncio.get_running_loop(),
            detok=IncrementalDetokenizer(self.decoder, params.stop, params.min_tokens),
            max_new_tokens=max(
                0, min(params.max_tokens, self.max_context_length - len(request.prompt_token_ids))
            ),
            sampler=SequenceSampler(params, request.prompt_token_ids, matcher=matcher),
        )
        self._live.add(seq)
        self._waiting.put(seq)
        if self.failed:  # NOTE: fail() ran between the check above and the add: it did not see seq
            self.fail(self.last_error or "the engine failed")
        try:
            async for chunk in coalesced(seq.out, request.stream, self._stream_interval):
                yield chunk
        finally:
            self._live.discard(seq)
            if not seq.done:
                seq.cancelled = True  # the model thread drops it at the next step

    async def between_steps(self, work: Callable[[], Any]) -> Any:
        """Run ``work`` on the model thread between two steps (at once while the thread is not up)."""
        if not self.alive:
            return await asyncio.to_thread(work)
        return await asyncio.wrap_future(self.queue_between_steps(work))

    def queue_between_steps(self, work: Callable[[], Any]) -> concurrent.futures.Future[Any]:
        """Queue ``work`` for the model thread, between two steps, in order; its future, from any thread."""
        done: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._between_steps.put((work, done))
        return done

    def uses_adapter(self, name: str) -> bool:
        """Whether a sequence a caller waits on runs with adapter ``name`` (event-loop side)."""
        return any(seq.adapter == name for seq in list(self._live))

    def _run_between_steps(self) -> None:
        while True:
            try:
                work, done = self._between_steps.get_nowait()
            except queue.Empty:
                return
            try:
                done.set_result(work())
            except Exception as exc:  # the caller gets it; the loop goes on
                logger.warning("work between steps on %s failed: %s", self.spec.id, exc)
                done.set_exception(exc)

    def shutdown(self) -> None:
        self._stop.set()
        if self.grammars is not None:
            self.grammars.shutdown()
        if self._thread is not None:
            self._thread.join(timeout=10)

    # ---- model-thread side -----------------------------------------------------------
    def _loop(self) -> None:
        batch = _Batch()
        while not self._stop.is_set():
            joining: list[Sequence] = []
            self._run_between_steps()
            try:
                joining = self._admit(batch)
                if joining:
                    self._join(batch, joining)
                if self._chunking is not None:
                    self._prefill_chunk(batch, self._chunking)
                if batch.rows:
                    self._decode(batch)
            except Exception as exc:  # a failed step must end every request in it, not hang them
                logger.exception("step failed on %s", self.spec.id)
                self.last_error = f"{type(exc).__name__}: {exc}"
                chunked = [self._chunking.seq] if self._chunking is not None else []
                for seq in {id(s): s for s in [*batch.rows, *joining, *chunked]}.values():
                    if not seq.done:
                        self._finish(seq, FinishReason.ABORT, error=f"generation failed: {self.last_error}")
                batch = _Batch()
                self._chunking = None
            self._running = batch.num_alive + (self._chunking is not None)
            self.kv_used_tokens = 0 if batch.mask is None or not batch.rows else batch.mask.numel()
            self.kv_peak_tokens = max(self.kv_peak_tokens, self.kv_used_tokens)
            # NOTE: last chunks go out after the counts above: a caller that has its whole answer
            # never sees its sequence still counted as running.
            for seq, chunk in self._ended:
                seq.emit(chunk)
            self._ended.clear()

    def _next_waiting(self, timeout: float) -> Sequence | None:
        if self._deferred is not None:
            seq, self._deferred = self._deferred, None
            return seq
        try:
            return self._waiting.get(timeout=timeout) if timeout > 0 else self._waiting.get_nowait()
        except queue.Empty:
            return None

    def _admit(self, batch: _Batch) -> list[Sequence]:
        """Waiting sequences that join the batch before the next step, in arrival order.

        A newcomer joins while the batch has a free row, the KV cache can hold every row to
        its end (``KVBudget``), and the padded prompts of this step stay within
        ``max_batch_tokens``. NOTE: prefill runs between decode steps, so that budget bounds
        the stall it causes running sequences. An idle engine waits ``batch_wait_ms`` for
        company; a busy one takes only what is already waiting. The first sequence that does
        not fit stops admission (no overtaking), so a long request cannot starve.
        """
        limits = self.spec.batching
        running = [s for s, a in zip(batch.rows, batch.alive, strict=True) if a and not s.cancelled]
        chunking = [self._chunking.seq] if self._chunking is not None else []
        free = limits.max_batch_size - len(running) - len(chunking)
        if free <= 0 or (running and not self.runner.supports_join):
            return []
        idle = not running and not chunking
        # NOTE: rows that just finished stay in the cache until the next decode step drops
        # them, so they count against the budget at their current width.
        held = (len(batch.rows) if running else 0) + len(chunking)
        width = batch.mask.shape[1] if running and batch.mask is not None else 0
        reserve = max([width, *(s.final_len for s in [*running, *chunking])])
        new: list[Sequence] = []
        longest = 0
        deadline = time.monotonic()
        while len(new) < free:
            wait = 0.05 if idle and not new else deadline - time.monotonic()
            seq = self._next_waiting(wait)
            if seq is None:
                break
            if seq.cancelled:
                seq.done = True
                continue
            uncached = seq.prompt_len - self._cached_estimate(seq)
            chunked = running and self._chunks(seq, uncached)
            too_many_tokens = new and max(longest, uncached) * (len(new) + 1) > limits.max_batch_tokens
            over_budget = not self.kv_budget.fits(held + len(new) + 1, max(reserve, seq.final_len))
            if (
                (too_many_tokens and not chunked)
                or (over_budget and (running or new or chunking))
                or (chunked and self._chunking is not None)  # one chunked prompt at a time
            ):
                self._deferred = seq  # first in line for the next step
                self.kv_deferred += int(bool(over_budget))
                break
            if chunked:
                self._chunking = _Chunking(seq)
                self.chunked_prompts += 1
                held += 1
                reserve = max(reserve, seq.final_len)
                continue
            if idle and not new:  # an idle engine waits for company from its first arrival on
                deadline = time.monotonic() + limits.batch_wait_ms / 1000.0
            new.append(seq)
            longest = max(longest, uncached)
            reserve = max(reserve, seq.final_len)
        live = []
        for seq in new:
            if seq.max_new_tokens > 0 or (seq.scores_only and seq.prompt_len <= self.max_context_length):
                live.append(seq)
            elif seq.scores_only:
                self._finish(
                    seq,
                    FinishReason.ABORT,
                    error=f"the prompt ({seq.prompt_len} tokens) is longer than the model's context "
                    f"({self.max_context_length}): its logprobs cannot be computed",
                )
            else:
                self._finish(seq, FinishReason.LENGTH)
        return live

    def _chunks(self, seq: Sequence, uncached: int) -> bool:
        """Whether ``seq`` (``uncached`` prompt tokens to run) is prefilled in chunks."""
        params = seq.request.sampling
        return (
            self.spec.batching.chunked_prefill
            and self.runner.supports_chunked_prefill
            and params.prompt_logprobs is None
            and seq.max_new_tokens > 0
            and uncached > LONG_PROMPT_CHUNKS * self.chunk_tokens
        )

    def _prefill_chunk(self, batch: _Batch, chunking: _Chunking) -> None:
        """Run the next chunk of the prompt being prefilled in chunks; its last joins the batch.

        NOTE: with nobody decoding any more, the rest of the prompt runs in one step: there is no
        stream left to keep at pace.
        """
        seq = chunking.seq
        if seq.cancelled:
            seq.done = True
            self._chunking = None  # NOTE: the runner lets its partial KV go with the next chunked prompt
            return
        cache = self.prefix_cache
        prefix = None
        if not chunking.started and cache is not None:
            seq.cached_tokens = self._cached_estimate(seq)
            part = cache.take(seq.prefix_keys or [], seq.cached_tokens, seq.prompt_len)
            prefix = part.unsqueeze(2) if part is not None else None
            chunking.done = seq.cached_tokens
        start = chunking.done
        last = batch.num_alive == 0 or seq.prompt_len - start <= self.chunk_tokens
        end = seq.prompt_len if last else start + self.chunk_tokens
        ids = torch.tensor([seq.request.prompt_token_ids[start:end]], dtype=torch.long)
        positions = torch.arange(start, end, dtype=torch.long).unsqueeze(0)
        mask = torch.ones((1, end), dtype=torch.long)
        if batch.num_alive == 0:
            batch.clear()
        kind: Literal["chunk", "join", "prefill"] = "join" if batch.rows else "prefill"
        if not last:
            kind = "chunk"
        keep_kv = last and cache is not None and bool(cache.missing(seq.prefix_keys or []))
        started = time.perf_counter()
        logits = self.runner.step(
            StepInput(
                kind,
                ids,
                mask,
                positions,
                prefix_kv=prefix,
                keep_kv=keep_kv,
                resume=chunking.started,
                adapters=(seq.adapter,),
            )
        )
        self.steps += 1
        chunking.started, chunking.done = True, end
        if not last:
            self._size_chunks(end - start, time.perf_counter() - started)
            return
        self._chunking = None
        if cache is not None and keep_kv:
            self._store_prefixes(cache, [seq], seq.prompt_len)
        self._add_rows(batch, [seq], mask, positions[:, -1], logits)

    def _size_chunks(self, tokens: int, seconds: float) -> None:
        """Resize the chunks so that one costs about one decode step (unless the catalog fixed it)."""
        if self.spec.batching.prefill_chunk_tokens is None:
            self.chunk_tokens = chunk_size(
                tokens, seconds, self._decode_s, most=self.spec.batching.max_batch_tokens
            )

    def _join(self, batch: _Batch, new: list[Sequence]) -> None:
        """Prefill ``new`` and merge it into the running batch (left-padded to a common length).

        Rows that ask for prompt logprobs need the logits of every prompt position: they are
        prefilled apart from the others (in groups within ``PROMPT_LOGITS_BYTES``), so rows that
        do not ask never pay for it; rows that only score their prompt leave the cache alone.
        """
        if batch.num_alive == 0:
            batch.clear()
        plain = [s for s in new if s.request.sampling.prompt_logprobs is None]
        scoring = [s for s in new if s.request.sampling.prompt_logprobs is not None and not s.scores_only]
        scores_only = [s for s in new if s.scores_only]
        groups = self._logit_groups(scoring)
        if not self.runner.supports_join and scoring:
            # NOTE: a cache that cannot take joining rows takes one prefill: every row's logits then
            plain, groups = [], [plain + scoring]
        if plain and self.prefix_cache is not None:
            # NOTE: hits and misses are prefilled apart, so hits run only their uncached tokens
            hits = [s for s in plain if self._cached_estimate(s) > 0]
            misses = [s for s in plain if self._cached_estimate(s) == 0]
            for part in (hits, misses):
                if part:
                    self._prefill(batch, part, all_logits=False)
        elif plain:
            self._prefill(batch, plain, all_logits=False)
        for group in groups:
            self._prefill(batch, group, all_logits=True)
        for group in self._logit_groups(scores_only):
            self._prefill(batch, group, all_logits=True, score=True)

    def _logit_groups(self, seqs: list[Sequence]) -> list[list[Sequence]]:
        """``seqs`` split so that each group's logits at every position fit ``PROMPT_LOGITS_BYTES``."""
        per_token = 4 * max(1, self.vocab_size)
        groups: list[list[Sequence]] = []
        width = 0
        for seq in seqs:
            wider = max(width, seq.prompt_len)
            if groups and (len(groups[-1]) + 1) * wider * per_token <= PROMPT_LOGITS_BYTES:
                groups[-1].append(seq)
                width = wider
            else:
                groups.append([seq])
                width = seq.prompt_len
        return groups

    def _cached_estimate(self, seq: Sequence) -> int:
        """Prompt tokens of ``seq`` that the prefix cache holds now (0 where it cannot be used)."""
        cache = self.prefix_cache
        if cache is None or seq.request.sampling.prompt_logprobs is not None:
            return 0
        if seq.prefix_keys is None:
            seq.prefix_keys = cache.keys(seq.request.prompt_token_ids, seq.request.prefix_salt)
        return cache.match(seq.prefix_keys, seq.prompt_len) * cache.block_size

    def _prefill(self, batch: _Batch, new: list[Sequence], *, all_logits: bool, score: bool = False) -> None:
        """One prefill step for ``new``: into the running batch, or only scored (``score``).

        With the prefix cache, the step runs only the last ``run`` columns of the left-padded
        prompts, where ``run`` is the longest uncached part of a row; each row takes from the
        cache the KV of every prompt token before those columns. NOTE: a row whose cached part is
        longer recomputes a few cached tokens instead of leaving a hole in its mask: they sit where
        the step computes padding anyway, and the batch's cache stays left-padded and as wide as
        its longest prompt (what ``KVBudget`` assumes).
        """
        width = max(s.prompt_len for s in new)
        ids = torch.full((len(new), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(new), width), dtype=torch.long)
        for row, seq in enumerate(new):
            prompt = seq.request.prompt_token_ids
            ids[row, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
            mask[row, width - len(prompt) :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        kind: Literal["prefill", "join", "score"] = "score" if score else "join" if batch.rows else "prefill"
        cache = None if all_logits or score else self.prefix_cache
        adapters = tuple(seq.adapter for seq in new)
        step = StepInput(kind, ids, mask, positions, all_logits=all_logits, adapters=adapters)
        if cache is not None:
            step = self._with_prefix(cache, new, step, width)
        logits = self.runner.step(step)
        self.steps += 1
        if cache is not None and step.keep_kv:
            self._store_prefixes(cache, new, width)
        if all_logits:
            for row, seq in enumerate(new):
                top_n = seq.request.sampling.prompt_logprobs or 0
                seq.prompt_logprobs = prompt_logprobs(logits[row], seq.request.prompt_token_ids, top_n)
            logits = logits[:, -1, :]
        if score:
            for seq in new:
                self._finish(seq, FinishReason.LENGTH)
            return
        self._add_rows(batch, new, mask, positions[:, -1], logits)

    def _add_rows(
        self,
        batch: _Batch,
        new: list[Sequence],
        mask: torch.Tensor,
        last_pos: torch.Tensor,
        logits: torch.Tensor,
    ) -> None:
        """Add prefilled rows to the running batch (their KV joined it) and sample their first tokens."""
        if batch.mask is None or batch.last_pos is None:
            batch.mask, batch.last_pos = mask, last_pos
        else:
            total = max(batch.mask.shape[1], mask.shape[1])
            batch.mask = torch.cat([left_pad(batch.mask, total), left_pad(mask, total)])
            batch.last_pos = torch.cat([batch.last_pos, last_pos])
        batch.rows.extend(new)
        pending, alive = self._sample(logits, new)
        batch.pending.extend(pending)
        batch.alive.extend(alive)
        self.peak_batch = max(self.peak_batch, batch.num_alive)

    def _with_prefix(self, cache: PrefixCache, new: list[Sequence], step: StepInput, width: int) -> StepInput:
        """``step`` cut to the rows' uncached columns, with the cached KV before them."""
        hits = [self._cached_estimate(seq) for seq in new]
        run = max(seq.prompt_len - hit for seq, hit in zip(new, hits, strict=True))
        cached = width - run
        parts: list[torch.Tensor | None] = []
        for seq in new:
            assert seq.prefix_keys is not None
            seq.cached_tokens = max(0, seq.prompt_len - run)
            parts.append(cache.take(seq.prefix_keys, seq.cached_tokens, seq.prompt_len))
        keep_kv = any(cache.missing(seq.prefix_keys or []) for seq in new)
        if cached == 0:
            return StepInput(
                step.kind,
                step.input_ids,
                step.attention_mask,
                step.position_ids,
                keep_kv=keep_kv,
                adapters=step.adapters,
            )
        first = next(part for part in parts if part is not None)
        layers, _, heads, _, dim = first.shape
        prefix = first.new_zeros((layers, 2, len(new), heads, cached, dim))
        for row, part in enumerate(parts):
            if part is not None:
                prefix[:, :, row, :, cached - part.shape[3] :] = part
        return StepInput(
            step.kind,
            step.input_ids[:, cached:],
            step.attention_mask,
            step.position_ids[:, cached:],
            prefix_kv=prefix,
            keep_kv=keep_kv,
            adapters=step.adapters,
        )

    def _store_prefixes(self, cache: PrefixCache, new: list[Sequence], width: int) -> None:
        """Copy the full prompt blocks that the cache lacks out of the last prefill, into it."""
        spans: list[tuple[int, int, int]] = []
        stores: list[tuple[list[bytes], int]] = []
        seen: set[bytes] = set()
        for row, seq in enumerate(new):
            keys = seq.prefix_keys or []
            missing = [i for i in cache.missing(keys) if keys[i] not in seen]
            if not missing:
                continue
            seen.update(keys[i] for i in missing)
            first = missing[0]
            pad = width - seq.prompt_len
            end = min(len(keys), cache.capacity_blocks)
            spans.append((row, pad + first * cache.block_size, pad + end * cache.block_size))
            stores.append((keys, first))
        for (keys, first), kv in zip(stores, self.runner.take_kv(spans), strict=True):
            cache.put(keys, first, kv)

    def _decode(self, batch: _Batch) -> None:
        """One decode step for every live row; finished and cancelled rows leave first."""
        keep = [
            i for i, (s, a) in enumerate(zip(batch.rows, batch.alive, strict=True)) if a and not s.cancelled
        ]
        for seq, alive in zip(batch.rows, batch.alive, strict=True):
            if alive and seq.cancelled:
                seq.done = True
        if not keep:
            batch.clear()
            return
        assert batch.mask is not None and batch.last_pos is not None
        keep_rows = None
        if len(keep) < len(batch.rows):
            keep = compaction_order(keep)  # the last rows fill the holes: the cache moves only those
            index = torch.tensor(keep, dtype=torch.long)
            batch.mask, batch.last_pos = (
                batch.mask.index_select(0, index),
                batch.last_pos.index_select(0, index),
            )
            batch.rows = [batch.rows[i] for i in keep]
            batch.pending = [batch.pending[i] for i in keep]
            keep_rows = tuple(keep)
        # columns that are padding in every remaining row are dropped from the cache too
        trim = int(torch.cumprod((batch.mask == 0).all(dim=0).int(), dim=0).sum())
        batch.mask = torch.cat([batch.mask[:, trim:], torch.ones((len(keep), 1), dtype=torch.long)], dim=1)
        batch.last_pos = batch.last_pos + 1
        step = StepInput(
            "decode",
            torch.tensor(batch.pending, dtype=torch.long).unsqueeze(1),
            batch.mask,
            batch.last_pos.unsqueeze(1),
            keep_rows=keep_rows,
            trim_left=trim,
            adapters=tuple(seq.adapter for seq in batch.rows),
        )
        started = time.perf_counter()
        logits = self.runner.step(step)
        elapsed = time.perf_counter() - started
        self._decode_s = elapsed if self._decode_s <= 0 else 0.8 * self._decode_s + 0.2 * elapsed
        self.steps += 1
        batch.pending, batch.alive = self._sample(logits, batch.rows)
        self.peak_batch = max(self.peak_batch, len(keep))

    def _sample(self, logits: torch.Tensor, seqs: list[Sequence]) -> tuple[list[int], list[bool]]:
        """Next token of each row (what it feeds next) and whether the row goes on.

        NOTE: a row the sampler cannot sample ends alone, with its error; the others go on.
        """
        result = sample_batch(logits, [s.sampler for s in seqs], eos_token_ids=self.eos_token_ids)
        pending: list[int] = []
        alive: list[bool] = []
        for seq, token, logprob, error in zip(
            seqs, result.tokens, result.logprobs, result.errors, strict=True
        ):
            if error is None:
                pending.append(token)
                alive.append(self._advance(seq, token, logprob))
                continue
            if seq.cancelled:
                seq.done = True
            else:
                logger.warning("sequence %s of %s failed: %s", seq.request.request_id, self.spec.id, error)
                self._finish(seq, FinishReason.ABORT, error=error)
            pending.append(self.pad_token_id)
            alive.append(False)
        return pending, alive

    def _advance(self, seq: Sequence, token_id: int, logprob: TokenLogprob | None = None) -> bool:
        """Append one token to a sequence; emit its text; return whether it goes on."""
        if seq.cancelled:
            seq.done = True
            return False
        seq.generated.append(token_id)
        params = seq.request.sampling
        matcher = seq.sampler.matcher
        # NOTE: EOS that a grammar accepted ends the sequence even with ignore_eos: nothing may follow
        ends = token_id in params.stop_token_ids or (
            token_id in self.eos_token_ids and (not params.ignore_eos or matcher is not None)
        )
        if ends:
            self._finish(
                seq, FinishReason.STOP, token_ids=[token_id], text=seq.detok.flush(), logprob=logprob
            )
            return False
        text = seq.detok.push(token_id)
        if seq.detok.stopped:
            self._finish(seq, FinishReason.STOP, token_ids=[token_id], text=text, logprob=logprob)
            return False
        if matcher is not None and matcher.finished:  # the grammar is complete: only EOS could follow
            self._finish(
                seq, FinishReason.STOP, token_ids=[token_id], text=text + seq.detok.flush(), logprob=logprob
            )
            return False
        if len(seq.generated) >= seq.max_new_tokens:
            self._finish(
                seq,
                FinishReason.LENGTH,
                token_ids=[token_id],
                text=text + seq.detok.flush(),
                logprob=logprob,
            )
            return False
        seq.emit(self._chunk(seq, text=text, token_ids=[token_id], logprob=logprob))
        return True

    def _chunk(self, seq: Sequence, *, logprob: TokenLogprob | None = None, **fields: Any) -> GenerationChunk:
        """A chunk of ``seq``: the first carries its prompt logprobs; with logprobs asked, one per token."""
        if seq.prompt_logprobs is not None:
            fields["prompt_logprobs"], seq.prompt_logprobs = seq.prompt_logprobs, None
        if seq.request.sampling.logprobs is not None:
            fields["logprobs"] = [] if logprob is None else [logprob]
        return GenerationChunk(
            request_id=seq.request.request_id,
            num_prompt_tokens=seq.prompt_len,
            num_cached_tokens=seq.cached_tokens,
            num_generated_tokens=len(seq.generated),
            **fields,
        )

    def _finish(
        self,
        seq: Sequence,
        reason: FinishReason,
        *,
        token_ids: list[int] | None = None,
        text: str = "",
        error: str | None = None,
        logprob: TokenLogprob | None = None,
    ) -> None:
        """End ``seq``; its last chunk is sent at the end of this step (see ``_loop``)."""
        seq.done = True
        chunk = self._chunk(
            seq, text=text, token_ids=token_ids or [], finish_reason=reason, error=error, logprob=logprob
        )
        self._ended.append((seq, chunk))
