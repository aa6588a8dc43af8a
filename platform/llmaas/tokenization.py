"""Tokenizers for every catalog model: encoding, chat templates, token strings and decoding
(transformers does the work).

A conversation a model cannot render raises ``TokenizationError`` (the API answers it with a 400).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Protocol

from llmaas.config.catalog import Catalog
from llmaas.errors import TokenizationError


class TokenizerPool:
    """Loads each model's tokenizer once, on first use."""

    def __init__(self, paths: dict[str, Path]) -> None:
        self._paths = dict(paths)
        self._loaded: dict[Path, Any] = {}  # NOTE: by directory: a base's adapters share its tokenizer
        self._lock = threading.Lock()

    def has(self, model_id: str) -> bool:
        return model_id in self._paths

    def get(self, model_id: str) -> Any:
        path = self._paths[model_id]
        tokenizer = self._loaded.get(path)
        if tokenizer is None:
            from transformers import AutoTokenizer

            with self._lock:
                tokenizer = self._loaded.get(path)
                if tokenizer is None:
                    tokenizer = AutoTokenizer.from_pretrained(path)
                    self._loaded[path] = tokenizer
        return tokenizer

    def encode(self, model_id: str, texts: list[str], add_special_tokens: bool = True) -> list[list[int]]:
        tokenizer = self.get(model_id)
        # NOTE: no truncation: the router refuses over-long inputs with both lengths instead.
        encoded = tokenizer(texts, add_special_tokens=add_special_tokens, truncation=False, verbose=False)
        return [list(ids) for ids in encoded["input_ids"]]

    def supports_tools(self, model_id: str) -> bool:
        """Whether the model's chat template renders ``tools`` itself (it mentions them)."""
        template = getattr(self.get(model_id), "chat_template", None)
        if isinstance(template, dict):  # NOTE: named templates; HF picks "tool_use" when tools are given
            return "tool_use" in template or any("tools" in str(t) for t in template.values())
        return isinstance(template, str) and "tools" in template

    def parses_responses(self, model_id: str) -> bool:
        """Whether the tokenizer ships a response template (transformers' ``parse_response``)."""
        return getattr(self.get(model_id), "response_template", None) is not None

    def parse_response(
        self, model_id: str, prompt_ids: list[int], text: str, tools: list[dict[str, Any]] | None
    ) -> dict[str, Any]:
        """A reply as a message (``content``, ``tool_calls``) by the tokenizer's response template;
        the reply as content when it does not parse (nothing the model wrote is lost)."""
        tokenizer = self.get(model_id)
        prefix = tokenizer.decode(prompt_ids, skip_special_tokens=False)
        try:
            parsed = tokenizer.parse_response(text, prefix=prefix, tools=tools)
        except Exception:  # a reply the template's parser cannot read
            return {"role": "assistant", "content": text}
        return dict(parsed) if isinstance(parsed, dict) else {"role": "assistant", "content": text}

    def chat_template(
        self,
        model_id: str,
        messages: list[dict[str, Any]],
        add_generation_prompt: bool = True,
        tools: list[dict[str, Any]] | None = None,
    ) -> list[int]:
        tokenizer = self.get(model_id)
        if not getattr(tokenizer, "chat_template", None):
            raise TokenizationError(
                f"model '{model_id}' has no chat template: use /v1/completions with it, or add a "
                "chat_template to its tokenizer_config.json",
                param="model",
                code="no_chat_template",
            )
        try:
            text = tokenizer.apply_chat_template(
                messages, tools=tools, tokenize=False, add_generation_prompt=add_generation_prompt
            )
        except Exception as exc:  # jinja raises for conversations the template refuses
            raise TokenizationError(
                f"the model's chat template refused these messages: {exc}", param="messages"
            ) from exc
        # NOTE: the template already writes any BOS it wants; adding special tokens would double it.
        return list(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])

    def decode(self, model_id: str, ids: list[int], skip_special_tokens: bool = True) -> str:
        try:
            return str(self.get(model_id).decode(ids, skip_special_tokens=skip_special_tokens))
        except OverflowError as exc:  # an id past what the tokenizer's integers hold
            raise TokenizationError(
                f"token ids must be in model '{model_id}''s vocabulary: {exc}", param="tokens"
            ) from exc

    def token_strings(self, model_id: str, ids: list[int]) -> list[str]:
        """Each token's text on its own, special tokens included: what logprobs and /tokenize show.

        NOTE: each id is decoded alone (as vLLM does): a byte-level token holding part of a
        multi-byte character reads as U+FFFD; an id outside the tokenizer's vocabulary as "".
        """
        if not ids:
            return []
        tokenizer = self.get(model_id)
        return [str(text) for text in tokenizer.batch_decode([[i] for i in ids], skip_special_tokens=False)]


def load_pool(catalog: Catalog) -> TokenizerPool:
    """Every catalog model's tokenizer, loaded now rather than on the first request (blocking)."""
    from llmaas.models import resolve_model_path

    # NOTE: an adapter speaks its base's tokens
    paths = {
        spec.id: resolve_model_path(catalog.base_of(spec).source, catalog.cache_path)
        for spec in catalog.models
    }
    pool = TokenizerPool(paths)
    for spec in catalog.models:
        pool.get(spec.id)
    return pool


class TokenizerClient(Protocol):
    """A tokenizer as the API layer uses it: ``LocalFirstTokenizer``, or the tokenizer deployment as
    the router sees it (``llmaas.deployments.handles.HandleTokenizer``)."""

    async def encode(self, model_id: str, texts: list[str], add_special_tokens: bool) -> list[list[int]]: ...

    async def chat_template(
        self,
        model_id: str,
        messages: list[dict[str, Any]],
        add_generation_prompt: bool,
        tools: list[dict[str, Any]] | None = None,
    ) -> list[int]: ...

    async def supports_tools(self, model_id: str) -> bool:
        """Whether the model's chat template renders tools itself."""
        ...

    async def parses_responses(self, model_id: str) -> bool:
        """Whether the model's tokenizer ships a response template (transformers' parse_response)."""
        ...

    async def parse_response(
        self, model_id: str, prompt_ids: list[int], text: str, tools: list[dict[str, Any]] | None
    ) -> dict[str, Any]:
        """A reply as a message by the tokenizer's response template (content when it does not parse)."""
        ...

    async def token_strings(self, model_id: str, ids: list[int]) -> list[str]:
        """Each token's own text (special tokens included), as logprobs and /tokenize show it."""
        ...

    async def decode(self, model_id: str, ids: list[int], skip_special_tokens: bool) -> str: ...


class LocalFirstTokenizer:
    """Tokenizes short inputs in the caller's process and sends long ones to the tokenizer deployment.

    NOTE: a hop to another deployment costs milliseconds on every request (measured ~4 ms
    here), while a fast tokenizer encodes a short prompt in tens of microseconds; offloading
    pays only for inputs big enough to block the router's event loop. TGI and vLLM tokenize in
    their API process for the same reason. Token ids going the other way (token strings,
    decoding) count one character each against the same limit.
    """

    def __init__(self, pool: TokenizerPool, remote: TokenizerClient, *, inline_max_chars: int) -> None:
        self.pool = pool
        self.remote = remote
        self.inline_max_chars = inline_max_chars
        self.inline_calls = 0
        self.remote_calls = 0

    def _inline(self, model_id: str, chars: int) -> bool:
        local = chars <= self.inline_max_chars and self.pool.has(model_id)
        if local:
            self.inline_calls += 1
        else:
            self.remote_calls += 1
        return local

    async def encode(self, model_id: str, texts: list[str], add_special_tokens: bool) -> list[list[int]]:
        if self._inline(model_id, sum(len(t) for t in texts)):
            return self.pool.encode(model_id, texts, add_special_tokens)
        return await self.remote.encode(model_id, texts, add_special_tokens)

    async def chat_template(
        self,
        model_id: str,
        messages: list[dict[str, Any]],
        add_generation_prompt: bool,
        tools: list[dict[str, Any]] | None = None,
    ) -> list[int]:
        chars = sum(len(str(v)) for message in messages for v in message.values())
        chars += len(str(tools)) if tools else 0
        if self._inline(model_id, chars):
            return self.pool.chat_template(model_id, messages, add_generation_prompt, tools)
        return await self.remote.chat_template(model_id, messages, add_generation_prompt, tools)

    async def supports_tools(self, model_id: str) -> bool:
        if self.pool.has(model_id):
            return self.pool.supports_tools(model_id)
        return await self.remote.supports_tools(model_id)

    async def parses_responses(self, model_id: str) -> bool:
        if self.pool.has(model_id):
            return self.pool.parses_responses(model_id)
        return await self.remote.parses_responses(model_id)

    async def parse_response(
        self, model_id: str, prompt_ids: list[int], text: str, tools: list[dict[str, Any]] | None
    ) -> dict[str, Any]:
        if self._inline(model_id, len(text) + len(prompt_ids)):
            return self.pool.parse_response(model_id, prompt_ids, text, tools)
        return await self.remote.parse_response(model_id, prompt_ids, text, tools)

    async def token_strings(self, model_id: str, ids: list[int]) -> list[str]:
        if self._inline(model_id, len(ids)):
            return self.pool.token_strings(model_id, ids)
        return await self.remote.token_strings(model_id, ids)

    async def decode(self, model_id: str, ids: list[int], skip_special_tokens: bool) -> str:
        if self._inline(model_id, len(ids)):
            return self.pool.decode(model_id, ids, skip_special_tokens)
        return await self.remote.decode(model_id, ids, skip_special_tokens)
