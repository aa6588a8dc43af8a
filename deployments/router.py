"""Router: the FastAPI ingress (OpenAI routes, SSE) and the handle API for Ray jobs.

Each route parses the body, calls one ``OpenAIService`` method, and returns a response, an
error response or a stream. Handle callers (``llmaas.client``) reach the same service
through ``call`` / ``stream``, with plain dicts crossing the handle.
"""

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ValidationError
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException

from llmaas.config.catalog import Catalog
from llmaas.deployments.handles import HandleModel, HandleTokenizer
from llmaas.metrics import set_request_id
from llmaas.openai.errors import OpenAIError, bad_request, from_validation_error, internal
from llmaas.openai.protocol import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from llmaas.openai.service import ROUTE_CHAT, ROUTE_COMPLETIONS, ROUTE_EMBEDDINGS, OpenAIService
from llmaas.playground import playground_html
from llmaas.tokenization import LocalFirstTokenizer, load_pool

logger = logging.getLogger("ray.serve")

app = FastAPI(
    title="llmaas",
    description="OpenAI-compatible API over many models on Ray Serve and DeepSpeed-inference.",
    version="0.1.0",
)

Route = Literal["completions", "chat.completions", "embeddings", "models"]
MAX_BODY_BYTES = 8 * 1024 * 1024


def error_response(exc: OpenAIError) -> JSONResponse:
    return JSONResponse(status_code=exc.status, content=exc.body(), headers=exc.headers)


@app.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
    message = (
        f"Unknown route {request.method} {request.url.path}. Routes: GET /v1/models, POST /v1/completions, "
        "POST /v1/chat/completions, POST /v1/embeddings, GET /health, GET /ready, GET /playground."
        if exc.status_code == 404
        else str(exc.detail)
    )
    return error_response(OpenAIError(exc.status_code, message, type=kind, code=str(exc.status_code)))


@app.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0] if exc.errors() else {}
    param = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
    return error_response(bad_request(f"Invalid request: {first.get('msg', 'invalid input')}", param=param))


async def _read_json(request: Request) -> Any:
    body = await request.body()
    if len(body) > MAX_BODY_BYTES:
        raise OpenAIError(
            413, f"request body is {len(body)} bytes; the limit is {MAX_BODY_BYTES}", code="too_large"
        )
    if not body:
        raise bad_request("the request body is empty: send a JSON object", code="invalid_json")
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise bad_request(f"the request body is not valid JSON: {exc}", code="invalid_json") from exc


def _parse(model: type[BaseModel], data: Any) -> Any:
    if not isinstance(data, dict):
        raise bad_request(
            f"the request body must be a JSON object, not {type(data).__name__}", code="invalid_json"
        )
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise from_validation_error(exc, model) from exc


def _dump(obj: BaseModel) -> dict[str, Any]:
    return obj.model_dump(mode="json")


async def _sse(chunks: AsyncIterator[BaseModel]) -> AsyncIterator[str]:
    try:
        async for chunk in chunks:
            yield f"data: {chunk.model_dump_json()}\n\n"
    except OpenAIError as exc:
        yield f"data: {json.dumps(exc.body())}\n\n"
    except Exception as exc:
        logger.exception("stream failed")
        yield f"data: {json.dumps(internal(f'{type(exc).__name__}: {exc}').body())}\n\n"
    yield "data: [DONE]\n\n"


@serve.ingress(app)
class Router:
    """Routes by ``model`` to that model's deployment; tokenizes short inputs itself, long ones remotely."""

    async def __init__(  # type: ignore[misc]  # Serve awaits async constructors
        self, catalog: Catalog, tokenizer: DeploymentHandle, models: dict[str, DeploymentHandle]
    ) -> None:
        self.catalog = catalog
        self.tokenizer = LocalFirstTokenizer(
            await asyncio.to_thread(load_pool, catalog),
            HandleTokenizer(tokenizer),
            inline_max_chars=catalog.tokenizer.inline_max_chars,
        )
        self.service = OpenAIService(
            catalog, self.tokenizer, {model_id: HandleModel(h) for model_id, h in models.items()}
        )

    def _checked(self, route: str, model: type[BaseModel], data: Any) -> Any:
        """``_parse``, counting a refused body in the request metrics (the service counts the rest)."""
        try:
            return _parse(model, data)
        except OpenAIError as exc:
            self.service.record_refused(route, data.get("model") if isinstance(data, dict) else None, exc)
            raise

    async def _read(self, route: str, model: type[BaseModel], request: Request) -> Any:
        # NOTE: Serve's proxy takes X-Request-Id from the client (or makes one) and echoes it in the
        # response; the request log and metrics carry the same id.
        # (a function, not the ContextVar: Serve pickles the ingress app, and a ContextVar cannot be)
        set_request_id(request.headers.get("x-request-id"))
        try:
            data = await _read_json(request)
        except OpenAIError as exc:
            self.service.record_refused(route, None, exc)
            raise
        return self._checked(route, model, data)

    async def _respond(self, work: Callable[[], Awaitable[Response]]) -> Response:
        try:
            return await work()
        except OpenAIError as exc:
            return error_response(exc)
        except Exception as exc:
            logger.exception("request failed")
            return error_response(internal(f"{type(exc).__name__}: {exc}"))

    # ---- HTTP ------------------------------------------------------------------------------
    @app.get("/health")
    async def health(self) -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready")
    async def ready(self) -> JSONResponse:
        models = await self.service.ready()
        ok = all(state == "ready" for state in models.values())
        return JSONResponse(status_code=200 if ok else 503, content={"ready": ok, "models": models})

    @app.get("/playground")
    async def playground(self) -> HTMLResponse:
        return HTMLResponse(playground_html())

    @app.get("/v1/models")
    async def list_models(self) -> Response:
        return await self._respond(self._models)

    async def _models(self) -> Response:
        return JSONResponse(_dump(await self.service.list_models()))

    @app.get("/v1/models/{model_id:path}")
    async def get_model(self, model_id: str) -> Response:
        async def work() -> Response:
            for card in (await self.service.list_models()).data:
                if card.id == model_id:
                    return JSONResponse(_dump(card))
            from llmaas.openai.errors import model_not_found

            raise model_not_found(model_id, [m.id for m in self.catalog.models])

        return await self._respond(work)

    @app.post("/v1/completions")
    async def completions(self, request: Request) -> Response:
        async def work() -> Response:
            body = await self._read(ROUTE_COMPLETIONS, CompletionRequest, request)
            if body.stream:
                return StreamingResponse(
                    _sse(await self.service.completion_stream(body)), media_type="text/event-stream"
                )
            return JSONResponse(_dump(await self.service.completion(body)))

        return await self._respond(work)

    @app.post("/v1/chat/completions")
    async def chat_completions(self, request: Request) -> Response:
        async def work() -> Response:
            body = await self._read(ROUTE_CHAT, ChatCompletionRequest, request)
            if body.stream:
                return StreamingResponse(
                    _sse(await self.service.chat_stream(body)), media_type="text/event-stream"
                )
            return JSONResponse(_dump(await self.service.chat(body)))

        return await self._respond(work)

    @app.post("/v1/embeddings")
    async def embeddings(self, request: Request) -> Response:
        async def work() -> Response:
            body = await self._read(ROUTE_EMBEDDINGS, EmbeddingRequest, request)
            return JSONResponse(_dump(await self.service.embeddings(body)))

        return await self._respond(work)

    # ---- handle API (llmaas.client) ---------------------------------------------------------
    async def call(self, route: Route, body: dict[str, Any]) -> dict[str, Any]:
        """Unary call for Python callers: returns the response body, or ``{"error": ..., "status": N}``."""
        try:
            if route == "models":
                return _dump(await self.service.list_models())
            if route == "completions":
                return _dump(
                    await self.service.completion(
                        self._checked(ROUTE_COMPLETIONS, CompletionRequest, {**body, "stream": False})
                    )
                )
            if route == "chat.completions":
                return _dump(
                    await self.service.chat(
                        self._checked(ROUTE_CHAT, ChatCompletionRequest, {**body, "stream": False})
                    )
                )
            if route == "embeddings":
                return _dump(
                    await self.service.embeddings(self._checked(ROUTE_EMBEDDINGS, EmbeddingRequest, body))
                )
            raise bad_request(
                f"unknown route {route!r}: use completions, chat.completions, embeddings or models"
            )
        except OpenAIError as exc:
            return {**exc.body(), "status": exc.status}
        except Exception as exc:
            logger.exception("handle call failed")
            failure = internal(f"{type(exc).__name__}: {exc}")
            return {**failure.body(), "status": failure.status}

    async def stream(self, route: Route, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Streaming call for Python callers: chunk dicts; an error is a last ``{"error": ...}`` item."""
        try:
            chunks: AsyncIterator[BaseModel]
            if route == "completions":
                chunks = await self.service.completion_stream(
                    self._checked(ROUTE_COMPLETIONS, CompletionRequest, {**body, "stream": True})
                )
            elif route == "chat.completions":
                chunks = await self.service.chat_stream(
                    self._checked(ROUTE_CHAT, ChatCompletionRequest, {**body, "stream": True})
                )
            else:
                raise bad_request(f"route {route!r} does not stream: use completions or chat.completions")
            async for chunk in chunks:
                yield _dump(chunk)
        except OpenAIError as exc:
            yield {**exc.body(), "status": exc.status}
        except Exception as exc:
            logger.exception("handle stream failed")
            failure = internal(f"{type(exc).__name__}: {exc}")
            yield {**failure.body(), "status": failure.status}
