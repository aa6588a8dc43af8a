"""Tokenizer deployment: encoding and chat templates for every catalog model."""

from __future__ import annotations

import asyncio
from pathlib import Path

from llmaas.config.catalog import Catalog
from llmaas.models import resolve_model_path
from llmaas.tokenization import TokenizerPool


class Tokenizer:
    """CPU-only and stateless, so it scales on its own, apart from the model replicas."""

    async def __init__(self, catalog: Catalog) -> None:  # type: ignore[misc]  # Serve awaits async constructors
        paths: dict[str, Path] = {}
        for spec in catalog.models:
            paths[spec.id] = await asyncio.to_thread(resolve_model_path, spec.source, catalog.cache_path)
        self.pool = TokenizerPool(paths)
        for model_id in paths:  # load now, not on the first request
            await asyncio.to_thread(self.pool.get, model_id)

    def encode(self, model_id: str, texts: list[str], add_special_tokens: bool = True) -> list[list[int]]:
        return self.pool.encode(model_id, texts, add_special_tokens)

    def chat_template(
        self, model_id: str, messages: list[dict[str, str]], add_generation_prompt: bool = True
    ) -> list[int]:
        return self.pool.chat_template(model_id, messages, add_generation_prompt)
