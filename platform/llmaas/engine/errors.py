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


class InvalidStructuredOutput(EngineError):
    """A structured-output constraint the engine cannot compile, or not within its bounds (400).

    ``param`` names the request field it came from (``response_format``, ``tools``...).
    """

    def __init__(self, message: str, param: str = "response_format") -> None:
        super().__init__(message)
        self.message = message
        self.param = param

    def __reduce__(self) -> tuple[object, ...]:
        return (self.__class__, (self.message, self.param))
