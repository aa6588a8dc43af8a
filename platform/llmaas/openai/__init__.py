"""The OpenAI-compatible API: protocol models, errors and the service behind the routes."""

from llmaas.openai.errors import OpenAIError, from_validation_error
from llmaas.openai.protocol import (
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    DetokenizeRequest,
    DetokenizeResponse,
    EmbeddingRequest,
    EmbeddingResponse,
    ErrorResponse,
    ModelList,
    TokenizeChatRequest,
    TokenizeCompletionRequest,
    TokenizeResponse,
)
from llmaas.openai.service import ModelClient, OpenAIService, TokenizerClient

__all__ = [
    "ChatCompletionChunk",
    "ChatCompletionRequest",
    "ChatCompletionResponse",
    "CompletionRequest",
    "CompletionResponse",
    "DetokenizeRequest",
    "DetokenizeResponse",
    "EmbeddingRequest",
    "EmbeddingResponse",
    "ErrorResponse",
    "ModelClient",
    "ModelList",
    "OpenAIError",
    "OpenAIService",
    "TokenizeChatRequest",
    "TokenizeCompletionRequest",
    "TokenizeResponse",
    "TokenizerClient",
    "from_validation_error",
]
