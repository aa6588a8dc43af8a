"""Sequence classification: a local ``AutoModelForSequenceClassification`` directory, served.

Calls from many requests share forward passes. A classify request usually carries one short
text, so the embedding engine's one-call-at-a-time loop would run batches of one; here each
call queues its inputs, and one task takes what has queued within ``batching.batch_wait_ms``
(up to ``max_batch_size`` rows), runs it in a worker thread and answers every caller. Within a
pass rows are sorted by length, so padding stays small, and a pass holds at most
``max_batch_tokens`` padded tokens.

Probabilities are what vLLM's classify pooler reports: a softmax over the classes, or a
sigmoid per class for multi-label models (``problem_type: multi_label_classification``) and
single-output ones (cross-encoder scores). Labels come from the model's ``config.id2label``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from llmaas.config.catalog import ModelSpec
from llmaas.engine.errors import EngineError, EngineNotReady
from llmaas.engine.protocol import Engine
from llmaas.engine.runner import TORCH_DTYPES
from llmaas.engine.types import EngineHealth, ModelInfo
from llmaas.errors import PlatformError

Activation = Literal["softmax", "sigmoid"]

#: Config fields that hold a model's position limit, by architecture family.
_POSITION_LIMITS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length")


class InvalidInput(PlatformError):
    """An input the model cannot classify (empty, too long, ids outside the vocabulary): a 400.

    ``param`` names it as ``input[i]``, the index in the call's list, so that a caller of a
    long batch knows which one to fix.
    """


def labels_of(config: Any) -> list[str]:
    """Class names by index, from ``config.id2label`` (transformers' ``LABEL_i`` where it has none)."""
    id2label = {int(k): str(v) for k, v in (getattr(config, "id2label", None) or {}).items()}
    return [id2label.get(i, f"LABEL_{i}") for i in range(int(config.num_labels))]


def activation_of(config: Any) -> Activation:
    """Sigmoid for multi-label and single-output heads (independent scores), softmax otherwise."""
    if getattr(config, "problem_type", None) == "multi_label_classification" or config.num_labels == 1:
        return "sigmoid"
    return "softmax"


def probabilities(logits: torch.Tensor, activation: Activation) -> torch.Tensor:
    """Logits ([rows, classes]) as probabilities, in float32."""
    logits = logits.float()
    return torch.sigmoid(logits) if activation == "sigmoid" else torch.softmax(logits, dim=-1)


def plan_batches(lengths: list[int], max_rows: int, max_tokens: int) -> list[list[int]]:
    """Row indices per forward pass, shortest rows first: at most ``max_rows`` rows and
    ``max_tokens`` padded tokens a pass (a row longer than that alone goes in a pass of its own)."""
    passes: list[list[int]] = []
    current: list[int] = []
    for row in sorted(range(len(lengths)), key=lengths.__getitem__):
        # NOTE: rows come shortest first, so this row sets the pass's padded width.
        if current and (len(current) >= max_rows or (len(current) + 1) * lengths[row] > max_tokens):
            passes.append(current)
            current = []
        current.append(row)
    if current:
        passes.append(current)
    return passes


def check_inputs(inputs: list[list[int]], max_length: int, vocab_size: int) -> None:
    """Raise ``InvalidInput`` naming the first input the model cannot take, and why."""
    for i, ids in enumerate(inputs):
        where = f"input[{i}]"
        if not ids:
            raise InvalidInput(f"{where} is empty: give at least one token", param=where)
        if len(ids) > max_length:
            raise InvalidInput(
                f"This model's maximum context length is {max_length} tokens. However, {where} is "
                f"{len(ids)} tokens. Shorten it or split it.",
                param=where,
                code="context_length_exceeded",
            )
        if min(ids) < 0 or max(ids) >= vocab_size:
            raise InvalidInput(
                f"{where} holds token ids outside the vocabulary (0..{vocab_size - 1})", param=where
            )


def context_limit(config: Any, tokenizer_max: int | None) -> int:
    """The longest input the model takes: its position table, and its tokenizer's limit if lower."""
    limits = [int(v) for name in _POSITION_LIMITS if isinstance(v := getattr(config, name, None), int)]
    if tokenizer_max and tokenizer_max < 1 << 30:  # NOTE: tokenizers without a limit say 1e30
        limits.append(int(tokenizer_max))
    if not limits:
        raise EngineError("the model names no position limit (max_position_embeddings) in config.json")
    return min(limits)


@dataclass
class _Call:
    inputs: list[list[int]]
    future: asyncio.Future[list[list[float]]]


class ClassificationEngine(Engine):
    """A sequence classifier; calls share forward passes, run in a worker thread one at a time."""

    def __init__(self, spec: ModelSpec, model_path: Path, **_: Any) -> None:
        super().__init__(spec, model_path)
        self.model: Any = None
        self.activation: Activation = "softmax"
        self._pad_id = 0
        self._queue: collections.deque[_Call] = collections.deque()
        self._worker: asyncio.Task[None] | None = None
        self._running = 0  # rows in the pass now running
        self._steps = 0
        self._peak = 0

    async def start(self) -> None:
        await asyncio.to_thread(self._load)

    def _load(self) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        torch.set_num_threads(self.spec.resources.threads)
        device = "cuda" if self.spec.resources.uses_gpu else "cpu"
        model, loading = AutoModelForSequenceClassification.from_pretrained(
            self.model_path, dtype=TORCH_DTYPES[self.spec.torch_dtype_name], output_loading_info=True
        )
        _refuse_untrained_head(self.spec.id, model, loading.get("missing_keys", ()))
        tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        config = model.config
        candidates = (config.pad_token_id, tokenizer.pad_token_id, tokenizer.eos_token_id)
        pad = next((p for p in candidates if p is not None), 0)
        # NOTE: decoder classifiers (Llama, Qwen) read the row's last token as the one before its
        # first pad_token_id: the config must name the id the rows are padded with.
        config.pad_token_id = self._pad_id = int(pad)
        self.activation = activation_of(config)
        limit = context_limit(config, tokenizer.model_max_length)
        model.to(device).eval()
        self.model = model
        self._info = ModelInfo(
            model_id=self.spec.id,
            task=self.spec.task.value,
            max_context_length=min(self.spec.max_context_length or limit, limit),
            vocab_size=int(config.vocab_size),
            labels=labels_of(config),
            architecture=str(getattr(config, "model_type", "")),
        )

    async def classify(self, inputs: list[list[int]]) -> list[list[float]]:
        if self.model is None:
            raise EngineNotReady(f"model {self.spec.id!r} is still loading")
        check_inputs(inputs, self.info.max_context_length, self.info.vocab_size)
        if not inputs:
            return []
        loop = asyncio.get_running_loop()
        call = _Call(inputs, loop.create_future())
        self._queue.append(call)
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._serve())
        return await call.future

    async def _serve(self) -> None:
        """Run queued calls in passes until none is left (``classify`` starts it again)."""
        batching = self.spec.batching
        while self._queue:
            if batching.batch_wait_ms and self._queued_rows() < batching.max_batch_size:
                await asyncio.sleep(batching.batch_wait_ms / 1000)  # company for a lone call
            calls = self._take(batching.max_batch_size)
            if not calls:
                continue
            rows = [ids for call in calls for ids in call.inputs]
            self._running = len(rows)
            self._peak = max(self._peak, len(rows))
            try:
                probs = await asyncio.to_thread(self._forward, rows)
            except Exception as exc:
                for call in calls:
                    if not call.future.done():
                        call.future.set_exception(exc)
                continue
            finally:
                self._running = 0
            start = 0
            for call in calls:
                if not call.future.done():  # NOTE: a caller that left has a cancelled future
                    call.future.set_result(probs[start : start + len(call.inputs)])
                start += len(call.inputs)

    def _queued_rows(self) -> int:
        return sum(len(call.inputs) for call in self._queue)

    def _take(self, max_rows: int) -> list[_Call]:
        """Queued calls up to ``max_rows`` rows (at least one call, whatever its size)."""
        calls: list[_Call] = []
        rows = 0
        while self._queue and (not calls or rows + len(self._queue[0].inputs) <= max_rows):
            call = self._queue.popleft()
            if call.future.done():
                continue
            calls.append(call)
            rows += len(call.inputs)
        return calls

    @torch.inference_mode()
    def _forward(self, inputs: list[list[int]]) -> list[list[float]]:
        out: list[list[float]] = [[] for _ in inputs]
        device = next(self.model.parameters()).device
        batching = self.spec.batching
        lengths = [len(ids) for ids in inputs]
        for rows in plan_batches(lengths, batching.max_batch_size, batching.max_batch_tokens):
            width = max(len(inputs[r]) for r in rows)
            ids = torch.full((len(rows), width), self._pad_id, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for i, row in enumerate(rows):
                ids[i, : len(inputs[row])] = torch.tensor(inputs[row], dtype=torch.long)
                mask[i, : len(inputs[row])] = 1
            logits = self.model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            for row, p in zip(rows, probabilities(logits, self.activation).cpu().tolist(), strict=True):
                out[row] = p
            self._steps += 1
        return out

    def health(self) -> EngineHealth:
        if self.model is None:
            return EngineHealth(healthy=False, detail="loading")
        return EngineHealth(
            healthy=True,
            running=self._running,
            waiting=self._queued_rows(),
            steps=self._steps,
            peak_batch=self._peak,
        )

    async def shutdown(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        while self._queue:
            call = self._queue.popleft()
            if not call.future.done():
                call.future.set_exception(EngineNotReady(f"model {self.spec.id!r} is shutting down"))


def _refuse_untrained_head(model_id: str, model: Any, missing: Any) -> None:
    """Refuse a directory without a trained head: transformers would add one at random, silently.

    A base encoder (all-MiniLM-L6-v2, say) loads as a sequence classifier with a fresh head whose
    answers mean nothing; the operator meant to point at a fine-tuned one.
    """
    prefix = f"{getattr(model, 'base_model_prefix', '')}."
    head = sorted(key for key in missing if not key.startswith(prefix))
    if head:
        raise EngineError(
            f"model {model_id!r}: its directory has no trained classification head ({', '.join(head)} "
            "would be random): point source at a fine-tuned sequence-classification model"
        )
