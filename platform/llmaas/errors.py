"""The platform's domain errors: what library code raises when a caller's request cannot be met.

Library code (tokenization, catalog editing, the gateway's key checks) says *what* went wrong in
these terms; the API layer says how a client sees it: ``llmaas.openai.errors.to_openai_error``
is the one place that maps them (and the engine's errors) to OpenAI-shaped HTTP errors.

NOTE: these errors cross Serve handles (the tokenizer and catalog-admin deployments raise them
to the router), so they pickle: each rebuilds from its constructor's arguments (``__reduce__``).
"""

from __future__ import annotations

from typing import Any


class PlatformError(Exception):
    """A request the platform refuses; ``param`` names the field at fault, ``code`` the reason."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.__class__, (self.message, self.param, self.code))


# ---- tokenization ------------------------------------------------------------------------------
class TokenizationError(PlatformError):
    """The input cannot be tokenized for this model: it has no chat template, or its template
    refuses the conversation."""


# ---- catalog editing ---------------------------------------------------------------------------
class CatalogEditError(PlatformError):
    """A change to one model's catalog entry that would leave an invalid or undeployable catalog."""


class CatalogModelNotFound(CatalogEditError):
    """The change names a model the catalog does not hold."""

    def __init__(self, message: str, param: str | None = None, code: str | None = "model_not_found") -> None:
        super().__init__(message, param, code)


class CatalogNotDeclarative(CatalogEditError):
    """The application was not deployed declaratively (``llmaas serve`` / ``llmaas deploy``), so
    there is no deployed catalog to change live."""

    def __init__(self, app_name: str) -> None:
        super().__init__(
            f"the application {app_name!r} was not deployed by `llmaas serve` or `llmaas deploy`, so its "
            "catalog cannot change live; deploy it with `llmaas deploy`",
            code="not_declarative",
        )
        self.app_name = app_name

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.__class__, (self.app_name,))


# ---- the gateway: keys and limits --------------------------------------------------------------
class AuthError(PlatformError):
    """The caller's API key is missing, malformed, unknown, expired or revoked."""

    def __init__(self, message: str, code: str = "invalid_api_key") -> None:
        super().__init__(message, code=code)

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.__class__, (self.message, self.code))


class Forbidden(PlatformError):
    """The key is valid but may not do this (a model it may not use, an admin route)."""

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message, code=code)

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.__class__, (self.message, self.code))


class RateLimited(PlatformError):
    """The key is over one of its per-minute limits; it may retry after ``retry_after_s``."""

    def __init__(self, message: str, code: str | None = None, retry_after_s: int | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after_s = retry_after_s

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.__class__, (self.message, self.code, self.retry_after_s))


# ---- resources: files, fine-tuning jobs ---------------------------------------------------------
class NotFound(PlatformError):
    """The caller has no such resource (it does not exist, or belongs to another key): a 404."""

    def __init__(self, message: str, param: str | None = None, code: str | None = "not_found") -> None:
        super().__init__(message, param, code)


class PayloadTooLarge(PlatformError):
    """An upload beyond the platform's limit: a 413."""

    def __init__(self, message: str, param: str | None = None, code: str | None = "too_large") -> None:
        super().__init__(message, param, code)


class Conflict(PlatformError):
    """The resource is in a state that does not allow this (cancel a finished job): a 409."""
