"""Engine-side errors, mapped to HTTP statuses by the router."""

from __future__ import annotations


class EngineError(RuntimeError):
    """The engine failed; the request ends with a 500-class error."""


class EngineOverloaded(EngineError):
    """The engine's queue is full; the request is refused (503 with Retry-After)."""


class EngineNotReady(EngineError):
    """The engine has not finished loading (503)."""


class UnsupportedTask(EngineError):
    """The model cannot do what was asked (400): embeddings from a generative model, say."""
