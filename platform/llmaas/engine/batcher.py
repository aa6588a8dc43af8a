"""The generation scheduler of a replica: batches concurrent sequences over a ModelRunner.

Concurrent requests are prefilled together (left-padded, within ``max_batch_tokens``) and
decoded step by step; a finished or cancelled row leaves the batch at the next step and its
KV rows are dropped. New requests start with the next batch.

The model runs in one background thread (torch releases the GIL in its kernels), so the
replica's event loop keeps streaming tokens and taking requests while a step runs.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import torch

from llmaas.config.catalog import ModelSpec
from llmaas.engine.detokenizer import Decoder, IncrementalDetokenizer
from llmaas.engine.errors import EngineNotReady
from llmaas.engine.runner import ModelRunner, StepInput
from llmaas.engine.sampling import make_generator, sample
from llmaas.engine.types import FinishReason, GenerationChunk, GenerationRequest

logger = logging.getLogger(__name__)


@dataclass(eq=False)
class Sequence:
    """One request being generated; touched by the event loop (queue, cancel) and the model thread."""

    request: GenerationRequest
    loop: asyncio.AbstractEventLoop
    detok: IncrementalDetokenizer
    max_new_tokens: int
    out: asyncio.Queue[GenerationChunk] = field(default_factory=asyncio.Queue)
    generator: torch.Generator | None = None
    generated: list[int] = field(default_factory=list)
    cancelled: bool = False  # NOTE: set by the event loop, read by the model thread; a bool store is atomic
    done: bool = False

    @property
    def prompt_len(self) -> int:
        return len(self.request.prompt_token_ids)

    def emit(self, chunk: GenerationChunk) -> None:
        try:
            self.loop.call_soon_threadsafe(self.out.put_nowait, chunk)
        except RuntimeError:  # the replica's event loop is closed: nobody is listening any more
            self.cancelled = True


def merge_chunks(first: GenerationChunk, second: GenerationChunk) -> GenerationChunk:
    """Two consecutive chunks of one sequence as one."""
    return second.model_copy(
        update={"text": first.text + second.text, "token_ids": [*first.token_ids, *second.token_ids]}
    )


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
        pad_token_id: int = 0,
    ) -> None:
        self.spec = spec
        self.runner = runner
        self.decoder = decoder
        self.eos_token_ids = eos_token_ids
        self.max_context_length = max_context_length
        self.pad_token_id = pad_token_id
        self._waiting: queue.Queue[Sequence] = queue.Queue()
        self._running = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_error: str | None = None
        self.steps = 0
        self.peak_batch = 0

    # ---- event-loop side -------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name=f"llmaas-batch-{self.spec.id}", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def num_running(self) -> int:
        return self._running

    @property
    def num_waiting(self) -> int:
        return self._waiting.qsize()

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        if not self.alive:
            raise EngineNotReady(f"model {self.spec.id!r} is not running")
        params = request.sampling
        seq = Sequence(
            request=request,
            loop=asyncio.get_running_loop(),
            detok=IncrementalDetokenizer(self.decoder, params.stop),
            max_new_tokens=max(
                0, min(params.max_tokens, self.max_context_length - len(request.prompt_token_ids))
            ),
            generator=make_generator(params),
        )
        self._waiting.put(seq)
        try:
            while True:
                chunk = await seq.out.get()
                # NOTE: a slow reader gets what piled up as one chunk, so per-message costs
                # (Serve streaming, SSE) scale with reads, not with tokens.
                while chunk.finish_reason is None and (not request.stream or not seq.out.empty()):
                    chunk = merge_chunks(chunk, await seq.out.get())
                yield chunk
                if chunk.finish_reason is not None:
                    return
        finally:
            if not seq.done:
                seq.cancelled = True  # the model thread drops it at the next step

    def shutdown(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    # ---- model-thread side -----------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop.is_set():
            batch = self._collect()
            if not batch:
                continue
            self._running = len(batch)
            self.peak_batch = max(self.peak_batch, len(batch))
            try:
                self._run(batch)
            except Exception as exc:  # a failed step must end every request in it, not hang them
                logger.exception("batch of %d failed on %s", len(batch), self.spec.id)
                self.last_error = f"{type(exc).__name__}: {exc}"
                for seq in batch:
                    if not seq.done:
                        self._finish(seq, FinishReason.ABORT, error=f"generation failed: {self.last_error}")
            finally:
                self._running = 0

    def _collect(self) -> list[Sequence]:
        try:
            first = self._waiting.get(timeout=0.05)
        except queue.Empty:
            return []
        batch = [first]
        limits = self.spec.batching
        deadline = time.monotonic() + limits.batch_wait_ms / 1000.0
        longest = first.prompt_len
        while len(batch) < limits.max_batch_size:
            timeout = deadline - time.monotonic()
            try:
                seq = self._waiting.get(timeout=timeout) if timeout > 0 else self._waiting.get_nowait()
            except queue.Empty:
                break
            padded = max(longest, seq.prompt_len) * (len(batch) + 1)
            if padded > limits.max_batch_tokens:
                self._waiting.put(seq)  # NOTE: goes to the back; it starts the next batch at the latest
                break
            batch.append(seq)
            longest = max(longest, seq.prompt_len)
        live = []
        for seq in batch:
            if seq.cancelled:
                seq.done = True
            elif seq.max_new_tokens == 0:
                self._finish(seq, FinishReason.LENGTH)
            else:
                live.append(seq)
        return live

    def _run(self, batch: list[Sequence]) -> None:
        width = max(s.prompt_len for s in batch)
        ids = torch.full((len(batch), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, seq in enumerate(batch):
            prompt = seq.request.prompt_token_ids
            ids[row, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
            mask[row, width - len(prompt) :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = self.runner.step(StepInput("prefill", ids, mask, positions))
        self.steps += 1
        rows = batch
        last_pos = positions[:, -1]
        while True:
            next_ids = sample(logits, [s.request.sampling for s in rows], [s.generator for s in rows])
            keep = [
                i for i, (seq, tok) in enumerate(zip(rows, next_ids, strict=True)) if self._advance(seq, tok)
            ]
            if not keep:
                return
            if len(keep) < len(rows):
                index = torch.tensor(keep, dtype=torch.long)
                mask, last_pos = mask.index_select(0, index), last_pos.index_select(0, index)
            rows = [rows[i] for i in keep]
            self._running = len(rows)
            mask = torch.cat([mask, torch.ones((len(rows), 1), dtype=torch.long)], dim=1)
            last_pos = last_pos + 1
            step = StepInput(
                "decode",
                torch.tensor([[next_ids[i]] for i in keep], dtype=torch.long),
                mask,
                last_pos.unsqueeze(1),
                keep_rows=tuple(keep) if len(keep) < len(next_ids) else None,
            )
            logits = self.runner.step(step)
            self.steps += 1

    def _advance(self, seq: Sequence, token_id: int) -> bool:
        """Append one token to a sequence; emit its text; return whether it goes on."""
        if seq.cancelled:
            seq.done = True
            return False
        seq.generated.append(token_id)
        params = seq.request.sampling
        if token_id in self.eos_token_ids and not params.ignore_eos:
            self._finish(seq, FinishReason.STOP, token_ids=[token_id], text=seq.detok.flush())
            return False
        text = seq.detok.push(token_id)
        if seq.detok.stopped:
            self._finish(seq, FinishReason.STOP, token_ids=[token_id], text=text)
            return False
        if len(seq.generated) >= seq.max_new_tokens:
            self._finish(seq, FinishReason.LENGTH, token_ids=[token_id], text=text + seq.detok.flush())
            return False
        seq.emit(self._chunk(seq, text=text, token_ids=[token_id]))
        return True

    def _chunk(self, seq: Sequence, **fields: Any) -> GenerationChunk:
        return GenerationChunk(
            request_id=seq.request.request_id,
            num_prompt_tokens=seq.prompt_len,
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
    ) -> None:
        seq.done = True
        seq.emit(self._chunk(seq, text=text, token_ids=token_ids or [], finish_reason=reason, error=error))
