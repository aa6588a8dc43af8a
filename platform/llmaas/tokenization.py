"""Tokenizers for every catalog model: encoding and chat templates (transformers does the work)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from llmaas.openai.errors import bad_request


class TokenizerPool:
    """Loads each model's tokenizer once, on first use."""

    def __init__(self, paths: dict[str, Path]) -> None:
        self._paths = dict(paths)
        self._loaded: dict[str, Any] = {}
        self._lock = threading.Lock()

    def get(self, model_id: str) -> Any:
        tokenizer = self._loaded.get(model_id)
        if tokenizer is None:
            from transformers import AutoTokenizer

            with self._lock:
                tokenizer = self._loaded.get(model_id)
                if tokenizer is None:
                    tokenizer = AutoTokenizer.from_pretrained(self._paths[model_id])
                    self._loaded[model_id] = tokenizer
        return tokenizer

    def encode(self, model_id: str, texts: list[str], add_special_tokens: bool = True) -> list[list[int]]:
        tokenizer = self.get(model_id)
        # NOTE: no truncation: the router refuses over-long inputs with both lengths instead.
        encoded = tokenizer(texts, add_special_tokens=add_special_tokens, truncation=False, verbose=False)
        return [list(ids) for ids in encoded["input_ids"]]

    def chat_template(
        self, model_id: str, messages: list[dict[str, str]], add_generation_prompt: bool = True
    ) -> list[int]:
        tokenizer = self.get(model_id)
        if not getattr(tokenizer, "chat_template", None):
            raise bad_request(
                f"model '{model_id}' has no chat template: use /v1/completions with it, or add a "
                "chat_template to its tokenizer_config.json",
                param="model",
                code="no_chat_template",
            )
        try:
            text = tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=add_generation_prompt
            )
        except Exception as exc:  # jinja raises for conversations the template refuses
            raise bad_request(
                f"the model's chat template refused these messages: {exc}", param="messages"
            ) from exc
        # NOTE: the template already writes any BOS it wants; adding special tokens would double it.
        return list(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])

    def decode(self, model_id: str, ids: list[int]) -> str:
        return str(self.get(model_id).decode(ids, skip_special_tokens=True))
