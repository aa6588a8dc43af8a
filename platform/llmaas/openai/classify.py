"""``POST /v1/classify``: vLLM's classification route over ``task: classify`` models."""

from __future__ import annotations

from llmaas.config.catalog import Task
from llmaas.metrics import RequestTrace
from llmaas.openai.core import ROUTE_CLASSIFY, ServiceCore
from llmaas.openai.errors import internal
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
        encoded = await self._input_tokens(
            spec, info, request.items(), add_special_tokens=request.add_special_tokens, refuse_empty=True
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
