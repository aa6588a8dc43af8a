"""``POST /v1/embeddings``: float or base64 vectors."""

from __future__ import annotations

import base64
import struct

from llmaas.config.catalog import Task
from llmaas.metrics import RequestTrace
from llmaas.openai.core import ROUTE_EMBEDDINGS, ServiceCore
from llmaas.openai.errors import OpenAIError, bad_request
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
        encoded = await self._input_tokens(spec, info, request.items(), out_of_vocab=_out_of_vocab)
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


def _out_of_vocab(i: int, where: str) -> OpenAIError:
    # NOTE: /v1/embeddings' own wording (no range; the param is always ``input``), kept as it was.
    return bad_request(f"input[{i}] holds token ids outside the vocabulary", param="input")


def _b64(vector: list[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
