"""Tokenizer deployment: encoding, chat templates, token strings and decoding for every catalog model.

A conversation a model cannot render raises ``llmaas.errors.TokenizationError``; it pickles, so the
router's handle (``llmaas.deployments.handles.HandleTokenizer``) re-raises it as itself.
"""

from __future__ import annotations

import asyncio
from typing import Any

from llmaas.config.catalog import Catalog
from llmaas.tokenization import TokenizerPool, load_pool


class Tokenizer:
    """CPU-only and stateless, so it scales on its own, apart from the model replicas."""

    async def __init__(self, catalog: Catalog | None) -> None:  # type: ignore[misc]  # Serve awaits it
        """Without ``catalog``, the tokenizers load from the first ``user_config``."""
        self.catalog = catalog
        self.pool = await asyncio.to_thread(load_pool, catalog) if catalog is not None else TokenizerPool({})

    async def reconfigure(self, config: dict[str, Any]) -> None:
        """A new deploy's catalog (Serve's ``user_config``): load the tokenizers of added models."""
        catalog = Catalog.model_validate(config["catalog"])
        if catalog != self.catalog:
            self.pool = await asyncio.to_thread(load_pool, catalog)
            self.catalog = catalog

    def encode(self, model_id: str, texts: list[str], add_special_tokens: bool = True) -> list[list[int]]:
        return self.pool.encode(model_id, texts, add_special_tokens)

    def chat_template(
        self,
        model_id: str,
        messages: list[dict[str, Any]],
        add_generation_prompt: bool = True,
        tools: list[dict[str, Any]] | None = None,
    ) -> list[int]:
        return self.pool.chat_template(model_id, messages, add_generation_prompt, tools)

    def supports_tools(self, model_id: str) -> bool:
        return self.pool.supports_tools(model_id)

    def parses_responses(self, model_id: str) -> bool:
        return self.pool.parses_responses(model_id)

    def parse_response(
        self, model_id: str, prompt_ids: list[int], text: str, tools: list[dict[str, Any]] | None
    ) -> dict[str, Any]:
        return self.pool.parse_response(model_id, prompt_ids, text, tools)

    def token_strings(self, model_id: str, ids: list[int]) -> list[str]:
        return self.pool.token_strings(model_id, ids)

    def decode(self, model_id: str, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self.pool.decode(model_id, ids, skip_special_tokens)
