"""Router: the FastAPI ingress (OpenAI routes, SSE) and the handle API for Ray jobs.

Each route parses the body, calls one ``OpenAIService`` method, and returns a response, an
error response or a stream. Handle callers (``llmaas.client``) reach the same service
through ``call`` / ``stream``, with plain dicts crossing the handle.
"""

import asyncio
import json
import logging
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ValidationError
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException

from llmaas.catalog_edit import patch_model, put_model, remove_model
from llmaas.config.catalog import Catalog
from llmaas.deploy import apply_catalog, deployed_catalog
from llmaas.deployments.handles import HandleModel, HandleTokenizer
from llmaas.gateway.client import GatewayClient
from llmaas.gateway.keys import KeyRequest
from llmaas.metrics import FanOut, current_request_id, default_request_recorder, set_request_id
from llmaas.openai.errors import OpenAIError, bad_request, from_validation_error, internal, json_type
from llmaas.openai.protocol import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    EmbeddingRequest,
    EmbeddingResponse,
    ModelCard,
    ModelList,
    openapi_body,
    openapi_responses,
)
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
#: a JSON escape of a UTF-16 surrogate (\ud800-\udfff): a body holding one is checked for a lone one
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


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


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not a JSON number")


async def _read_json(request: Request) -> Any:
    """The body as JSON, refusing what no strict JSON parser (OpenAI's) accepts with a 400."""
    chunks: list[bytes] = []
    size = 0
    # NOTE: past the limit the rest is read and dropped, not kept: the client, still sending,
    # gets its 413 rather than a reset connection, and memory stays bounded.
    async for chunk in request.stream():
        size += len(chunk)
        if size <= MAX_BODY_BYTES:
            chunks.append(chunk)
    if size > MAX_BODY_BYTES:
        raise OpenAIError(
            413,
            f"the request body is {size} bytes; the limit is {MAX_BODY_BYTES} bytes (8 MiB)",
            code="too_large",
        )
    body = b"".join(chunks)
    if not body.strip():
        raise bad_request("the request body is empty: send a JSON object", code="invalid_json")
    try:
        text = body.decode("utf-8")  # strict: no UTF-16, no encoded surrogates
        data = json.loads(text, parse_constant=_not_json)
        if _SURROGATE_ESCAPE.search(text):
            json.dumps(data, ensure_ascii=False).encode("utf-8")  # raises on a lone surrogate
    except RecursionError as exc:
        raise bad_request(
            "the request body is not valid JSON: it nests too deeply", code="invalid_json"
        ) from exc
    except UnicodeEncodeError as exc:
        raise bad_request(
            "the request body is not valid JSON: a string holds an unpaired UTF-16 surrogate escape "
            f"(\\u{ord(exc.object[exc.start]):04x}); escape a character outside the BMP as a pair",
            code="invalid_json",
        ) from exc
    except ValueError as exc:  # bad syntax or UTF-8, NaN/Infinity, an integer over 4300 digits
        raise bad_request(f"the request body is not valid JSON: {exc}", code="invalid_json") from exc
    return data


def _parse(model: type[BaseModel], data: Any) -> Any:
    if not isinstance(data, dict):
        raise bad_request(
            f"the request body must be a JSON object, not {json_type(data)}", code="invalid_json"
        )
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise from_validation_error(exc, model) from exc


def _dump(obj: BaseModel) -> dict[str, Any]:
    return obj.model_dump(mode="json")


async def _settled() -> None:
    """What ``_sse`` awaits before its last event when no ledger is on."""


async def _sse(
    chunks: AsyncIterator[BaseModel], settle: Callable[[], Awaitable[None]] = _settled
) -> AsyncIterator[str]:
    try:
        async for chunk in chunks:
            yield f"data: {chunk.model_dump_json()}\n\n"
    except OpenAIError as exc:
        yield f"data: {json.dumps(exc.body())}\n\n"
    except Exception as exc:
        logger.exception("stream failed")
        yield f"data: {json.dumps(internal(f'{type(exc).__name__}: {exc}').body())}\n\n"
    await settle()  # the request's ledger row is committed before the caller sees the end
    yield "data: [DONE]\n\n"


@serve.ingress(app)
class Router:
    """Routes by ``model`` to that model's deployment; tokenizes short inputs itself, long ones remotely."""

    async def __init__(  # type: ignore[misc]  # Serve awaits async constructors
        self,
        catalog: Catalog | None,
        tokenizer: DeploymentHandle,
        models: dict[str, DeploymentHandle],
        gateway: DeploymentHandle | None = None,
    ) -> None:
        """Without ``catalog`` (``llmaas deploy``), the router starts from its first ``user_config``."""
        self._tokenizer_handle = tokenizer
        self._gateway_handle = gateway
        self._model_apps: dict[str, str] = {}
        self._catalog_lock = asyncio.Lock()
        self.catalog: Catalog | None = None
        if catalog is not None:
            await self._load(catalog, models)

    async def reconfigure(self, config: dict[str, Any]) -> None:
        """Serve hands a live replica the catalog of a new deploy (``user_config``): route to it.

        ``config["model_apps"]`` names the Serve application of each model that runs in another
        one (``llmaas deploy`` runs each model as its own). Requests in flight keep the service
        they started with; new ones get the new catalog.
        """
        catalog = Catalog.model_validate(config["catalog"])
        model_apps: dict[str, str] = dict(config.get("model_apps") or {})
        if catalog == self.catalog and model_apps == self._model_apps:
            return
        own = serve.get_replica_context().app_name
        # NOTE: an added model's application may not exist yet (Serve builds it after handing out
        # this config); its handle waits for replicas like a handle to a model scaled to zero.
        models = {
            m.id: serve.get_deployment_handle(
                catalog.deployment_of(m), model_apps.get(m.id, own), _check_exists=False
            )
            for m in catalog.models
        }
        self._model_apps = model_apps
        await self._load(catalog, models)
        logger.info("router: serving %s", ", ".join(m.id for m in catalog.models))

    async def _load(self, catalog: Catalog, models: dict[str, DeploymentHandle]) -> None:
        tokenizer = LocalFirstTokenizer(
            await asyncio.to_thread(load_pool, catalog),
            HandleTokenizer(self._tokenizer_handle),
            inline_max_chars=catalog.tokenizer.inline_max_chars,
        )
        gateway = (
            GatewayClient(self._gateway_handle, auth=catalog.gateway.auth, ledger=catalog.gateway.ledger)
            if self._gateway_handle is not None and catalog.gateway is not None
            else None
        )
        service = OpenAIService(
            catalog,
            tokenizer,
            {
                spec.id: HandleModel(
                    # NOTE: a pooled model's calls name it, so that Serve routes to a replica holding it
                    models[spec.id].options(multiplexed_model_id=spec.id) if spec.pool else models[spec.id],
                    spec.id,
                    spec.replicas.queue_timeout_s,
                )
                for spec in catalog.models
            },
            metrics=FanOut(default_request_recorder(), gateway) if gateway else None,
        )
        # NOTE: swapped together, after everything loaded: a request sees one catalog or the other.
        self.catalog, self.tokenizer, self.gateway, self.service = catalog, tokenizer, gateway, service

    async def _settle(self, request_id: str | None = None) -> None:
        if self.gateway is not None:
            await self.gateway.settle(request_id or current_request_id())

    def _settler(self) -> Callable[[], Awaitable[None]]:
        """The current request's ``_settle``, for a stream that ends in another task."""
        request_id = current_request_id()
        return lambda: self._settle(request_id)

    def _stream(self, chunks: AsyncIterator[BaseModel]) -> StreamingResponse:
        return StreamingResponse(_sse(chunks, self._settler()), media_type="text/event-stream")

    async def _authorize(self, request: Request, model: object, *, admin: bool = False) -> str | None:
        if self.gateway is None:
            if admin:
                raise OpenAIError(
                    404,
                    "Admin routes need the gateway: add a gateway section to the catalog.",
                    type="not_found_error",
                    code="no_gateway",
                )
            return None
        return await self.gateway.authorize(
            request.headers.get("authorization"), model if isinstance(model, str) else None, admin=admin
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
        request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
        set_request_id(request_id)
        try:
            try:
                data, unreadable = await _read_json(request), None
            except OpenAIError as exc:
                data, unreadable = None, exc
            # NOTE: the key is checked before the body: a caller without a valid key learns nothing.
            model_id = data.get("model") if isinstance(data, dict) else None
            set_request_id(request_id, await self._authorize(request, model_id))
            if unreadable is not None:
                raise unreadable
        except OpenAIError as exc:
            self.service.record_refused(route, None, exc)
            raise
        return self._checked(route, model, data)

    async def _respond(self, work: Callable[[], Awaitable[Response]]) -> Response:
        try:
            response = await work()
        except OpenAIError as exc:
            response = error_response(exc)
        except Exception as exc:
            logger.exception("request failed")
            response = error_response(internal(f"{type(exc).__name__}: {exc}"))
        if not isinstance(response, StreamingResponse):
            await self._settle()  # the request's ledger row is committed before the caller has the answer
        return response

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

    @app.get("/v1/models", responses=openapi_responses(ModelList))
    async def list_models(self, request: Request) -> Response:
        async def work() -> Response:
            await self._authorize(request, None)
            return JSONResponse(_dump(await self.service.list_models()))

        return await self._respond(work)

    @app.get("/v1/models/{model_id:path}", responses=openapi_responses(ModelCard))
    async def get_model(self, model_id: str, request: Request) -> Response:
        async def work() -> Response:
            await self._authorize(request, None)
            for card in (await self.service.list_models()).data:
                if card.id == model_id:
                    return JSONResponse(_dump(card))
            from llmaas.openai.errors import model_not_found

            raise model_not_found(model_id, [m.id for m in self.service.catalog.models])

        return await self._respond(work)

    # NOTE: routes read the raw body (errors in OpenAI's shape); openapi_* only document it.
    @app.post(
        "/v1/completions",
        openapi_extra=openapi_body(CompletionRequest),
        responses=openapi_responses(CompletionResponse, stream=True),
    )
    async def completions(self, request: Request) -> Response:
        async def work() -> Response:
            body = await self._read(ROUTE_COMPLETIONS, CompletionRequest, request)
            if body.stream:
                return self._stream(await self.service.completion_stream(body))
            return JSONResponse(_dump(await self.service.completion(body)))

        return await self._respond(work)

    @app.post(
        "/v1/chat/completions",
        openapi_extra=openapi_body(ChatCompletionRequest),
        responses=openapi_responses(ChatCompletionResponse, stream=True),
    )
    async def chat_completions(self, request: Request) -> Response:
        async def work() -> Response:
            body = await self._read(ROUTE_CHAT, ChatCompletionRequest, request)
            if body.stream:
                return self._stream(await self.service.chat_stream(body))
            return JSONResponse(_dump(await self.service.chat(body)))

        return await self._respond(work)

    @app.post(
        "/v1/embeddings",
        openapi_extra=openapi_body(EmbeddingRequest),
        responses=openapi_responses(EmbeddingResponse),
    )
    async def embeddings(self, request: Request) -> Response:
        async def work() -> Response:
            body = await self._read(ROUTE_EMBEDDINGS, EmbeddingRequest, request)
            return JSONResponse(_dump(await self.service.embeddings(body)))

        return await self._respond(work)

    # ---- admin (API keys, usage); needs an admin key --------------------------------------------
    async def _admin(self, request: Request) -> GatewayClient:
        await self._authorize(request, None, admin=True)
        assert self.gateway is not None  # _authorize refuses admin calls without one
        return self.gateway

    @app.post("/admin/keys")
    async def create_key(self, request: Request) -> Response:
        async def work() -> Response:
            gateway = await self._admin(request)
            spec = _parse(KeyRequest, await _read_json(request))
            made = await gateway.handle.create_key.remote(spec)
            return JSONResponse(status_code=201, content={**made.key.public(), "secret": made.secret})

        return await self._respond(work)

    @app.get("/admin/keys")
    async def list_keys(self, request: Request) -> Response:
        async def work() -> Response:
            gateway = await self._admin(request)
            keys = await gateway.handle.list_keys.remote()
            return JSONResponse({"object": "list", "data": [k.public() for k in keys]})

        return await self._respond(work)

    @app.delete("/admin/keys/{key_id}")
    async def revoke_key(self, key_id: str, request: Request) -> Response:
        async def work() -> Response:
            gateway = await self._admin(request)
            if not await gateway.handle.revoke_key.remote(key_id):
                raise OpenAIError(
                    404, f"No active key has the id {key_id!r}.", type="not_found_error", code="key_not_found"
                )
            return JSONResponse({"id": key_id, "revoked": True})

        return await self._respond(work)

    @app.get("/admin/usage")
    async def usage(self, request: Request, since: float = 0.0) -> Response:
        async def work() -> Response:
            gateway = await self._admin(request)
            rows = await gateway.handle.usage.remote(since)
            return JSONResponse({"object": "list", "data": [r.model_dump() for r in rows]})

        return await self._respond(work)

    # ---- admin: the catalog, one model at a time (what `llmaas deploy` does with a file) --------
    @app.get("/admin/catalog")
    async def get_catalog(self, request: Request) -> Response:
        async def work() -> Response:
            await self._admin(request)
            return JSONResponse(self.service.catalog.model_dump(mode="json"))

        return await self._respond(work)

    @app.put("/admin/models/{model_id:path}")
    async def admin_put_model(self, model_id: str, request: Request) -> Response:
        return await self._change_catalog(request, lambda catalog, body: put_model(catalog, model_id, body))

    @app.patch("/admin/models/{model_id:path}")
    async def admin_patch_model(self, model_id: str, request: Request) -> Response:
        return await self._change_catalog(request, lambda catalog, body: patch_model(catalog, model_id, body))

    @app.delete("/admin/models/{model_id:path}")
    async def admin_remove_model(self, model_id: str, request: Request) -> Response:
        return await self._change_catalog(
            request, lambda catalog, _: remove_model(catalog, model_id), body=False
        )

    async def _change_catalog(
        self, request: Request, edit: Callable[[Catalog, dict[str, Any]], Catalog], body: bool = True
    ) -> Response:
        """Apply one model's change to the deployed catalog; 202 with what changes (the roll goes on)."""

        async def work() -> Response:
            await self._admin(request)
            data = await _read_json(request) if body else {}
            if not isinstance(data, dict):
                raise bad_request(f"the body must be a JSON object, not {json_type(data)}")
            app_name = serve.get_replica_context().app_name
            # NOTE: one change at a time per router; the deployed catalog, not this replica's copy,
            # is the base, so that a change another router made is kept
            async with self._catalog_lock:
                current = await asyncio.to_thread(deployed_catalog, app_name)
                if current is None:
                    raise OpenAIError(
                        409,
                        f"the application {app_name!r} was not deployed by `llmaas serve` or "
                        "`llmaas deploy`, so its catalog cannot change live; deploy it with `llmaas deploy`",
                        type="invalid_request_error",
                        code="not_declarative",
                    )
                change = await asyncio.to_thread(apply_catalog, edit(current, data))
            return JSONResponse(status_code=202, content=change.model_dump())

        return await self._respond(work)

    # ---- handle API (llmaas.client) ---------------------------------------------------------
    async def call(self, route: Route, body: dict[str, Any]) -> dict[str, Any]:
        """Unary call for Python callers: returns the response body, or ``{"error": ..., "status": N}``.

        NOTE: handle callers run inside the Ray cluster, so they need no API key; the ledger
        records their requests with no key id.
        """
        set_request_id(uuid.uuid4().hex)
        try:
            return await self._call(route, body)
        finally:
            await self._settle()

    async def _call(self, route: Route, body: dict[str, Any]) -> dict[str, Any]:
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
        set_request_id(uuid.uuid4().hex)
        settle = self._settler()
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
        await settle()
