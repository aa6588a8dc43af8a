"""``POST /v1/classify``: vLLM's classification route over ``task: classify`` models."""

from __future__ import annotations

from llmaas.config.catalog import Task
from llmaas.metrics import RequestTrace
from llmaas.openai.core import ROUTE_CLASSIFY, ServiceCore
from llmaas.openai.errors import bad_request, internal
from llmaas.openai.protocol import (
    ClassificationData,
    ClassificationRequest,
    ClassificationResponse,
    Usage,
)


class ClassifyRoutes(ServiceCore):
    """``POST /v1/classify``."""

    # ---- classify --------------------------------------------------------------------------------
    async def classify(self, request: ClassificationRequest) -> ClassificationResponse:
        with self._trace(request.model, ROUTE_CLASSIFY) as trace:
            return await self._classify(request, trace)

    async def _classify(self, request: ClassificationRequest, trace: RequestTrace) -> ClassificationResponse:
        spec = self._spec(request.model, Task.CLASSIFY, "classification")
        info = await self.model_info(spec.id)
        items = request.items()
        texts = [(i, t) for i, t in enumerate(items) if isinstance(t, str)]
        encoded: list[list[int]] = [t if isinstance(t, list) else [] for t in items]
        if texts:
            ids = await self._call(
                self.tokenizer.encode(spec.id, [t for _, t in texts], request.add_special_tokens)
            )
            for (i, _), tokens in zip(texts, ids, strict=True):
                encoded[i] = tokens
        for i, tokens in enumerate(encoded):
            where = "input" if len(items) == 1 else f"input[{i}]"
            if not tokens:
                raise bad_request(f"{where} has no tokens: give some text", param=where)
            if len(tokens) > info.max_context_length:
                raise bad_request(
                    f"This model's maximum context length is {info.max_context_length} tokens. However, "
                    f"{where} is {len(tokens)} tokens. Shorten it or split it.",
                    param=where,
                    code="context_length_exceeded",
                )
            if any(t < 0 or t >= info.vocab_size for t in tokens):
                raise bad_request(
                    f"{where} holds token ids outside the vocabulary (0..{info.vocab_size - 1})", param=where
                )
        probs = await self._with_timeout(self._call(self.models[spec.id].classify(encoded)))
        used = trace.prompt_tokens = sum(len(t) for t in encoded)
        labels = info.labels
        data = []
        for i, row in enumerate(probs):
            if labels and len(row) != len(labels):
                raise internal(
                    f"model '{spec.id}' answered {len(row)} probabilities for its {len(labels)} labels"
                )
            best = max(range(len(row)), key=row.__getitem__) if row else None
            label = None if best is None else labels[best] if labels else f"LABEL_{best}"
            data.append(ClassificationData(index=i, label=label, probs=row, num_classes=len(row)))
        return ClassificationResponse(
            model=spec.id, data=data, usage=Usage(prompt_tokens=used, total_tokens=used)
        )
