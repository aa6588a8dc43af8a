"""Sentence embeddings: a Hugging Face encoder with sentence-transformers-style pooling."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from typing import Any

import torch

from llmaas.config.catalog import ModelSpec
from llmaas.engine.errors import EngineNotReady
from llmaas.engine.protocol import Engine
from llmaas.engine.runner import TORCH_DTYPES
from llmaas.engine.types import EngineHealth, ModelInfo


def pooling_mode(model_path: Path) -> str:
    """Read sentence-transformers' pooling config (``1_Pooling/config.json``); default to mean."""
    config = Path(model_path) / "1_Pooling" / "config.json"
    if config.exists():
        data = json.loads(config.read_text())
        for mode in ("cls_token", "max_tokens", "mean_tokens", "lasttoken"):
            if data.get(f"pooling_mode_{mode}"):
                return mode
    return "mean_tokens"


def pool(hidden: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    """Pool token states ([batch, seq, dim]) into one vector per row, then L2-normalise."""
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    if mode == "cls_token":
        vectors = hidden[:, 0]
    elif mode == "max_tokens":
        vectors = hidden.masked_fill(weights == 0, float("-inf")).max(dim=1).values
    elif mode == "lasttoken":
        last = mask.sum(dim=1) - 1
        vectors = hidden[torch.arange(hidden.shape[0]), last]
    else:
        vectors = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
    return torch.nn.functional.normalize(vectors.float(), p=2, dim=-1)


class EmbeddingEngine(Engine):
    """Encoder forward passes in a worker thread, one batch at a time."""

    def __init__(self, spec: ModelSpec, model_path: Path, **_: Any) -> None:
        super().__init__(spec, model_path)
        self.model: Any = None
        self._mode = pooling_mode(model_path)
        self._lock = threading.Lock()
        self._pad_id = 0

    async def start(self) -> None:
        await asyncio.to_thread(self._load)

    def _load(self) -> None:
        from transformers import AutoModel, AutoTokenizer

        torch.set_num_threads(self.spec.resources.threads)
        device = "cuda" if self.spec.resources.uses_gpu else "cpu"
        self.model = AutoModel.from_pretrained(
            self.model_path, dtype=TORCH_DTYPES[self.spec.torch_dtype_name]
        )
        self.model.to(device).eval()
        tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        self._pad_id = int(tokenizer.pad_token_id or 0)
        config = self.model.config
        limit = min(int(config.max_position_embeddings), int(tokenizer.model_max_length or 1 << 30))
        self._info = ModelInfo(
            model_id=self.spec.id,
            task=self.spec.task.value,
            max_context_length=min(self.spec.max_context_length or limit, limit),
            vocab_size=int(config.vocab_size),
            embedding_dim=int(config.hidden_size),
            architecture=str(getattr(config, "model_type", "")),
        )

    async def embed(self, inputs: list[list[int]]) -> list[list[float]]:
        if self.model is None:
            raise EngineNotReady(f"model {self.spec.id!r} is still loading")
        return await asyncio.to_thread(self._embed, inputs)

    @torch.inference_mode()
    def _embed(self, inputs: list[list[int]]) -> list[list[float]]:
        out: list[list[float]] = []
        size = self.spec.batching.max_batch_size
        device = next(self.model.parameters()).device
        with self._lock:
            for start in range(0, len(inputs), size):
                chunk = inputs[start : start + size]
                width = max(len(ids) for ids in chunk)
                ids = torch.full((len(chunk), width), self._pad_id, dtype=torch.long)
                mask = torch.zeros((len(chunk), width), dtype=torch.long)
                for row, tokens in enumerate(chunk):
                    ids[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
                    mask[row, : len(tokens)] = 1
                hidden = self.model(
                    input_ids=ids.to(device), attention_mask=mask.to(device)
                ).last_hidden_state
                out.extend(pool(hidden, mask.to(device), self._mode).cpu().tolist())
        return out

    def health(self) -> EngineHealth:
        if self.model is None:
            return EngineHealth(healthy=False, detail="loading")
        return EngineHealth(healthy=True)
