"""``POST /v1/embeddings``: float or base64 vectors."""

from __future__ import annotations

import base64
import struct

from llmaas.config.catalog import Task
from llmaas.metrics import RequestTrace
from llmaas.openai.core import ROUTE_EMBEDDINGS, ServiceCore
from llmaas.openai.errors import bad_request
from llmaas.openai.protocol import (
    EmbeddingData,
    EmbeddingRequest,
    EmbeddingResponse,
    EmbeddingUsage,
)


class EmbeddingRoutes(ServiceCore):
    """``POST /v1/embeddings``."""

    # ---- embeddings ------------------------------------------------------------------------------
    async def embeddings(self, request: EmbeddingRequest) -> EmbeddingResponse:
        with self._trace(request.model, ROUTE_EMBEDDINGS) as trace:
            return await self._embeddings(request, trace)

    async def _embeddings(self, request: EmbeddingRequest, trace: RequestTrace) -> EmbeddingResponse:
        spec = self._spec(request.model, Task.EMBED, "embeddings")
        info = await self.model_info(spec.id)
        items = request.items()
        texts = [(i, t) for i, t in enumerate(items) if isinstance(t, str)]
        encoded: list[list[int]] = [t if isinstance(t, list) else [] for t in items]
        if texts:
            ids = await self._call(self.tokenizer.encode(spec.id, [t for _, t in texts], True))
            for (i, _), tokens in zip(texts, ids, strict=True):
                encoded[i] = tokens
        for i, tokens in enumerate(encoded):
            if len(tokens) > info.max_context_length:
                where = "input" if len(items) == 1 else f"input[{i}]"
                raise bad_request(
                    f"This model's maximum context length is {info.max_context_length} tokens. However, "
                    f"{where} is {len(tokens)} tokens. Shorten it or split it.",
                    param=where,
                    code="context_length_exceeded",
                )
            if any(t < 0 or t >= info.vocab_size for t in tokens):
                raise bad_request(f"input[{i}] holds token ids outside the vocabulary", param="input")
        if request.dimensions is not None and request.dimensions != info.embedding_dim:
            raise bad_request(
                f"model '{spec.id}' makes {info.embedding_dim}-dimensional embeddings; "
                f"dimensions={request.dimensions} is not supported (leave it unset)",
                param="dimensions",
            )
        vectors = await self._with_timeout(self._call(self.models[spec.id].embed(encoded)))
        used = trace.prompt_tokens = sum(len(t) for t in encoded)
        data = [
            EmbeddingData(index=i, embedding=_b64(v) if request.encoding_format == "base64" else v)
            for i, v in enumerate(vectors)
        ]
        return EmbeddingResponse(
            data=data, model=spec.id, usage=EmbeddingUsage(prompt_tokens=used, total_tokens=used)
        )


def _b64(vector: list[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
