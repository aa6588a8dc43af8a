"""The OpenAI-compatible service: every route over one core (``llmaas.openai.core``).

One instance per router replica (and per handle client); see ``ServiceCore`` for what the
routes share and each route's module for what it does.
"""

from __future__ import annotations

from llmaas.openai.chat import ChatRoutes
from llmaas.openai.classify import ClassifyRoutes
from llmaas.openai.completions import CompletionRoutes
from llmaas.openai.core import (
    ROUTE_CHAT,
    ROUTE_COMPLETIONS,
    ROUTE_DETOKENIZE,
    ROUTE_EMBEDDINGS,
    ROUTE_TOKENIZE,
    ModelClient,
)
from llmaas.openai.embeddings import EmbeddingRoutes
from llmaas.openai.tokens import TokenRoutes
from llmaas.tokenization import TokenizerClient


class OpenAIService(CompletionRoutes, ChatRoutes, EmbeddingRoutes, ClassifyRoutes, TokenRoutes):
    """Completions, chat, embeddings, classify, tokenize and detokenize, models and readiness."""


__all__ = [
    "ROUTE_CHAT",
    "ROUTE_COMPLETIONS",
    "ROUTE_DETOKENIZE",
    "ROUTE_EMBEDDINGS",
    "ROUTE_TOKENIZE",
    "ModelClient",
    "OpenAIService",
    "TokenizerClient",
]
