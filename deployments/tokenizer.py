"""Tokenizer deployment: encoding and chat templates for every catalog model."""

from __future__ import annotations

import asyncio

from llmaas.config.catalog import Catalog
from llmaas.tokenization import load_pool


class Tokenizer:
    """CPU-only and stateless, so it scales on its own, apart from the model replicas."""

    async def __init__(self, catalog: Catalog) -> None:  # type: ignore[misc]  # Serve awaits async constructors
        self.pool = await asyncio.to_thread(load_pool, catalog)

    def encode(self, model_id: str, texts: list[str], add_special_tokens: bool = True) -> list[list[int]]:
        return self.pool.encode(model_id, texts, add_special_tokens)

    def chat_template(
        self, model_id: str, messages: list[dict[str, str]], add_generation_prompt: bool = True
    ) -> list[int]:
        return self.pool.chat_template(model_id, messages, add_generation_prompt)
