"""Domain errors and the one mapping to what clients see: status, type, code, param, headers."""

from __future__ import annotations

import pickle

import pytest

from llmaas.engine.errors import EngineError, EngineNotReady, EngineOverloaded, UnsupportedTask
from llmaas.errors import (
    AuthError,
    CatalogEditError,
    CatalogModelNotFound,
    CatalogNotDeclarative,
    Forbidden,
    PlatformError,
    RateLimited,
    TokenizationError,
)
from llmaas.openai.errors import OpenAIError, bad_request, known_error, to_openai_error
from llmaas.openai.protocol import ErrorResult

DOMAIN_ERRORS: list[PlatformError] = [
    TokenizationError("model 'm' has no chat template", "model", "no_chat_template"),
    CatalogEditError("the change leaves an invalid catalog: x", "id"),
    CatalogModelNotFound("the catalog holds no model 'zz' (it holds a, b)"),
    CatalogNotDeclarative("ops"),
    AuthError("You didn't provide an API key.", "missing_api_key"),
    Forbidden("The API key sk-ab... is not an admin key.", "not_admin"),
    RateLimited("Rate limit reached: 3 requests per minute. Try again in 7s.", "rate_limit_exceeded", 7),
]


@pytest.mark.parametrize(
    ("exc", "status", "type_", "param", "code", "headers"),
    [
        (DOMAIN_ERRORS[0], 400, "invalid_request_error", "model", "no_chat_template", {}),
        (DOMAIN_ERRORS[1], 400, "invalid_request_error", "id", None, {}),
        (DOMAIN_ERRORS[2], 404, "not_found_error", None, "model_not_found", {}),
        (DOMAIN_ERRORS[3], 409, "invalid_request_error", None, "not_declarative", {}),
        (
            DOMAIN_ERRORS[4],
            401,
            "invalid_request_error",
            None,
            "missing_api_key",
            {"WWW-Authenticate": 'Bearer realm="llmaas"'},
        ),
        (DOMAIN_ERRORS[5], 403, "permission_error", None, "not_admin", {}),
        (DOMAIN_ERRORS[6], 429, "rate_limit_error", None, "rate_limit_exceeded", {"Retry-After": "7"}),
        (EngineOverloaded("queue full"), 503, "server_error", None, "overloaded", {"Retry-After": "1"}),
        (EngineNotReady("loading"), 503, "server_error", None, "model_not_ready", {"Retry-After": "5"}),
        (UnsupportedTask("no embeddings"), 400, "invalid_request_error", "model", "wrong_task", {}),
        (EngineError("boom"), 500, "server_error", None, "internal_error", {}),
    ],
)
def test_every_domain_and_engine_error_maps_to_its_status(exc, status, type_, param, code, headers):
    seen = to_openai_error(exc)
    assert (seen.status, seen.type, seen.param, seen.code, seen.headers) == (
        status,
        type_,
        param,
        code,
        headers,
    )
    assert seen.message == str(exc)
    assert known_error(exc) is not None


def test_messages_stay_word_for_word():
    assert to_openai_error(CatalogNotDeclarative("ops")).message == (
        "the application 'ops' was not deployed by `llmaas serve` or `llmaas deploy`, so its catalog "
        "cannot change live; deploy it with `llmaas deploy`"
    )
    assert to_openai_error(RateLimited("slow down", "rate_limit_exceeded", None)).headers == {}


def test_an_openai_error_is_itself_and_anything_else_is_a_500_naming_it():
    err = bad_request("nope", param="n")
    assert to_openai_error(err) is err and known_error(err) is err
    assert known_error(KeyError("x")) is None
    seen = to_openai_error(KeyError("x"))
    assert (seen.status, seen.code, seen.message) == (500, "internal_error", "KeyError: 'x'")


@pytest.mark.parametrize("exc", DOMAIN_ERRORS, ids=lambda e: type(e).__name__)
def test_domain_errors_pickle_across_a_handle(exc: PlatformError):
    back = pickle.loads(pickle.dumps(exc))
    assert type(back) is type(exc) and back.__dict__ == exc.__dict__ and str(back) == str(exc)
    assert to_openai_error(back).body() == to_openai_error(exc).body()


def test_openai_errors_pickle_and_become_handle_results():
    err = OpenAIError(503, "busy", type="server_error", code="overloaded", headers={"Retry-After": "2"})
    back = pickle.loads(pickle.dumps(err))
    assert (back.status, back.message, back.type, back.code, back.headers) == (
        503,
        "busy",
        "server_error",
        "overloaded",
        {"Retry-After": "2"},
    )
    result = err.result()
    assert isinstance(result, ErrorResult) and result.status == 503 and result.headers == {"Retry-After": "2"}
    assert {"error": result.error.model_dump()} == err.body()
    assert ErrorResult.model_validate(result.model_dump()) == result
