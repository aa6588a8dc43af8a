"""Router: the FastAPI ingress (OpenAI and admin routes) and the typed handle API for Ray jobs.

Routes are thin: each is one call into a serving class of the library, whose answer becomes a
response here (a JSON body, server-sent events, or an error in OpenAI's shape):
``llmaas.openai.frontend.OpenAIFrontend`` for the OpenAI routes and the handle API,
``llmaas.admin.AdminService`` for the admin routes. Catalog changes go to the catalog-admin
deployment (``admin``); the router itself never redeploys anything.

Handle callers (``llmaas.client``) call ``models``, ``completion``, ``chat``, ``embeddings``,
``classify``, ``tokenize``, ``detokenize``, ``completion_stream`` and ``chat_stream`` with pydantic requests
and get pydantic responses, or an ``ErrorResult`` (the status and OpenAI's error body) in place
of a raise.
"""

# NOTE: no ``from __future__ import annotations``: Serve's ``@serve.ingress`` rewrites each
# endpoint's signature, and in the replica a string annotation no longer resolves for FastAPI.

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response, StreamingResponse
from pydantic import BaseModel
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException

from llmaas.admin import AdminService
from llmaas.config.catalog import Catalog
from llmaas.deployments.handles import (
    HandleCatalogAdmin,
    HandleFineTuning,
    HandleModel,
    HandleTokenizer,
    adapter_ref,
)
from llmaas.finetune.frontend import FineTuningFrontend, page_query
from llmaas.gateway.client import GatewayClient
from llmaas.metrics import FanOut, default_request_recorder
from llmaas.openai.errors import OpenAIError, bad_request
from llmaas.openai.frontend import Caller, OpenAIFrontend, failure
from llmaas.openai.openapi import openapi_body, openapi_responses
from llmaas.openai.protocol import (
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ClassificationRequest,
    ClassificationResponse,
    CompletionRequest,
    CompletionResponse,
    DetokenizeRequest,
    DetokenizeResponse,
    EmbeddingRequest,
    EmbeddingResponse,
    ErrorResult,
    ModelCard,
    ModelList,
    TokenizeChatRequest,
    TokenizeCompletionRequest,
    TokenizeRequest,
    TokenizeResponse,
)
from llmaas.openai.protocol.fine_tuning import (
    FileDeleted,
    FileList,
    FileObject,
    FineTuningCheckpointList,
    FineTuningEventList,
    FineTuningJob,
    FineTuningJobList,
    ModelDeleted,
)
from llmaas.openai.response_cache import CACHE_HEADER, ResponseCache, cache_status, reset_cache_status
from llmaas.openai.service import OpenAIService
from llmaas.openai.sse import MEDIA_TYPE, sse
from llmaas.playground import playground_html
from llmaas.tokenization import LocalFirstTokenizer, load_pool

logger = logging.getLogger("ray.serve")

app = FastAPI(
    title="llmaas",
    description="OpenAI-compatible API over many models on Ray Serve and DeepSpeed-inference.",
    version="0.1.0",
)

#: What a serving class answers: a body (a model or a JSON object) or a stream of chunks.
Reply = BaseModel | dict[str, Any] | AsyncIterator[BaseModel]


def error_response(exc: OpenAIError) -> JSONResponse:
    return JSONResponse(status_code=exc.status, content=exc.body(), headers=exc.headers)


@app.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
    message = (
        f"Unknown route {request.method} {request.url.path}. Routes: GET /v1/models, POST /v1/completions, "
        "POST /v1/chat/completions, POST /v1/embeddings, POST /v1/classify, POST /tokenize, "
        "POST /detokenize, GET /health, GET /ready, GET /playground."
        if exc.status_code == 404
        else str(exc.detail)
    )
    return error_response(OpenAIError(exc.status_code, message, type=kind, code=str(exc.status_code)))


@app.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0] if exc.errors() else {}
    param = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
    return error_response(bad_request(f"Invalid request: {first.get('msg', 'invalid input')}", param=param))


def _caller(request: Request) -> Caller:
    return Caller(request.headers.get("authorization"), request.headers.get("x-request-id"))


@dataclass(frozen=True)
class _Serving:
    """What one catalog serves with; swapped whole, so a request sees one catalog or the other."""

    catalog: Catalog
    front: OpenAIFrontend
    admin: AdminService
    fine_tuning: FineTuningFrontend


@serve.ingress(app)
class Router:
    """Routes by ``model`` to that model's deployment; tokenizes short inputs itself, long ones remotely."""

    async def __init__(  # type: ignore[misc]  # Serve awaits async constructors
        self,
        catalog: Catalog | None,
        tokenizer: DeploymentHandle,
        models: dict[str, DeploymentHandle],
        gateway: DeploymentHandle | None = None,
        *,
        admin: DeploymentHandle | None = None,
        fine_tuning: DeploymentHandle | None = None,
    ) -> None:
        """Without ``catalog`` (``llmaas deploy``), the router starts from its first ``user_config``.

        ``admin`` is the catalog-admin deployment; without it (an application not deployed
        declaratively) the admin API's catalog changes are refused with 409 ``not_declarative``.
        """
        self._tokenizer_handle = tokenizer
        self._gateway_handle = gateway
        self._admin = HandleCatalogAdmin(admin) if admin is not None else None
        self._fine_tuning = HandleFineTuning(fine_tuning) if fine_tuning is not None else None
        self._model_apps: dict[str, str] = {}
        # NOTE: one response cache across catalog changes: its keys hold each model's revision
        self._responses = ResponseCache()
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
                    # NOTE: a pooled model's (or an adapter's) calls name it, so that Serve routes
                    # them to a replica holding it
                    models[spec.id].options(multiplexed_model_id=spec.id)
                    if spec.pool or spec.adapter_of
                    else models[spec.id],
                    spec.id,
                    catalog.base_of(spec).replicas.queue_timeout_s,
                    adapter=adapter_ref(spec),
                )
                for spec in catalog.models
            },
            metrics=FanOut(default_request_recorder(), gateway) if gateway else None,
        )
        admin = AdminService(
            catalog,
            gateway,
            change=self._admin.change if self._admin is not None else None,
            app_name=serve.get_replica_context().app_name,
        )
        # NOTE: swapped together, after everything loaded: a request sees one catalog or the other.
        self.catalog = catalog
        self._responses.forget(catalog.models)
        tuning = FineTuningFrontend(
            self._fine_tuning if catalog.fine_tuning is not None else None,
            gateway,
            catalog.fine_tuning.max_file_bytes if catalog.fine_tuning is not None else 0,
        )
        self.serving = _Serving(catalog, OpenAIFrontend(service, gateway, self._responses), admin, tuning)

    async def _respond(
        self, work: Callable[[_Serving], Awaitable[Reply]], status_code: int = 200
    ) -> Response:
        """``work``'s answer as a response; its ledger row is committed before the caller has it."""
        serving = self.serving
        reset_cache_status()
        try:
            reply = await work(serving)
        except Exception as exc:
            response: Response = error_response(failure(exc))
        else:
            cache = cache_status()
            headers = {CACHE_HEADER: cache} if cache is not None else None
            if isinstance(reply, BaseModel):
                response = JSONResponse(
                    reply.model_dump(mode="json"), status_code=status_code, headers=headers
                )
            elif isinstance(reply, dict):
                response = JSONResponse(reply, status_code=status_code)
            else:  # a stream settles before its last event
                stream = sse(reply, serving.front.settler())
                return StreamingResponse(stream, media_type=MEDIA_TYPE, headers=headers)
        await serving.front.settle()
        return response

    # ---- HTTP ------------------------------------------------------------------------------
    @app.get("/health")
    async def health(self) -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready")
    async def ready(self) -> JSONResponse:
        models = await self.serving.front.service.ready()
        ok = all(state == "ready" for state in models.values())
        return JSONResponse(status_code=200 if ok else 503, content={"ready": ok, "models": models})

    @app.get("/playground")
    async def playground(self) -> HTMLResponse:
        return HTMLResponse(playground_html())

    @app.get("/v1/models", responses=openapi_responses(ModelList))
    async def list_models(self, request: Request) -> Response:
        return await self._respond(lambda s: s.front.list_models(_caller(request)))

    @app.get("/v1/models/{model_id:path}", responses=openapi_responses(ModelCard))
    async def get_model(self, model_id: str, request: Request) -> Response:
        return await self._respond(lambda s: s.front.get_model(_caller(request), model_id))

    # NOTE: routes read the raw body (errors in OpenAI's shape); openapi_* only document it.
    @app.post(
        "/v1/completions",
        openapi_extra=openapi_body(CompletionRequest),
        responses=openapi_responses(CompletionResponse, stream=True),
    )
    async def create_completion(self, request: Request) -> Response:
        return await self._respond(lambda s: s.front.create_completion(_caller(request), request.stream()))

    @app.post(
        "/v1/chat/completions",
        openapi_extra=openapi_body(ChatCompletionRequest),
        responses=openapi_responses(ChatCompletionResponse, stream=True),
    )
    async def create_chat_completion(self, request: Request) -> Response:
        return await self._respond(
            lambda s: s.front.create_chat_completion(_caller(request), request.stream())
        )

    @app.post(
        "/v1/embeddings",
        openapi_extra=openapi_body(EmbeddingRequest),
        responses=openapi_responses(EmbeddingResponse),
    )
    async def create_embedding(self, request: Request) -> Response:
        return await self._respond(lambda s: s.front.create_embedding(_caller(request), request.stream()))

    # NOTE: vLLM's classification route (OpenAI has none)
    @app.post(
        "/v1/classify",
        openapi_extra=openapi_body(ClassificationRequest),
        responses=openapi_responses(ClassificationResponse),
    )
    async def create_classify(self, request: Request) -> Response:
        return await self._respond(lambda s: s.front.create_classify(_caller(request), request.stream()))

    # NOTE: vLLM's tokenizer routes, outside /v1 as in vLLM
    @app.post(
        "/tokenize",
        openapi_extra=openapi_body(TokenizeCompletionRequest, TokenizeChatRequest),
        responses=openapi_responses(TokenizeResponse),
    )
    async def create_tokenize(self, request: Request) -> Response:
        return await self._respond(lambda s: s.front.create_tokenize(_caller(request), request.stream()))

    @app.post(
        "/detokenize",
        openapi_extra=openapi_body(DetokenizeRequest),
        responses=openapi_responses(DetokenizeResponse),
    )
    async def create_detokenize(self, request: Request) -> Response:
        return await self._respond(lambda s: s.front.create_detokenize(_caller(request), request.stream()))

    # ---- files and fine-tuning (OpenAI's API); a key sees its own -------------------------------------
    @app.post("/v1/files", responses=openapi_responses(FileObject))
    async def create_file(self, request: Request) -> Response:
        caller, kind = _caller(request), request.headers.get("content-type")
        return await self._respond(lambda s: s.fine_tuning.create_file(caller, kind, request.stream()))

    @app.get("/v1/files", responses=openapi_responses(FileList))
    async def list_files(
        self,
        request: Request,
        purpose: str | None = None,
        after: str | None = None,
        limit: int | None = None,
        order: str = "desc",
    ) -> Response:
        query = page_query(after, limit, purpose=purpose, order=order)
        return await self._respond(lambda s: s.fine_tuning.list_files(_caller(request), query))

    @app.get("/v1/files/{file_id}", responses=openapi_responses(FileObject))
    async def get_file(self, file_id: str, request: Request) -> Response:
        return await self._respond(lambda s: s.fine_tuning.get_file(_caller(request), file_id))

    @app.get("/v1/files/{file_id}/content")
    async def file_content(self, file_id: str, request: Request) -> Response:
        try:
            path = await self.serving.fine_tuning.file_path(_caller(request), file_id)
        except Exception as exc:
            return error_response(failure(exc))
        return FileResponse(path, media_type="application/jsonl")

    @app.delete("/v1/files/{file_id}", responses=openapi_responses(FileDeleted))
    async def delete_file(self, file_id: str, request: Request) -> Response:
        return await self._respond(lambda s: s.fine_tuning.delete_file(_caller(request), file_id))

    @app.post("/v1/fine_tuning/jobs", responses=openapi_responses(FineTuningJob))
    async def create_job(self, request: Request) -> Response:
        return await self._respond(lambda s: s.fine_tuning.create_job(_caller(request), request.stream()))

    @app.get("/v1/fine_tuning/jobs", responses=openapi_responses(FineTuningJobList))
    async def list_jobs(
        self, request: Request, after: str | None = None, limit: int | None = None
    ) -> Response:
        query = page_query(after, limit)
        return await self._respond(lambda s: s.fine_tuning.list_jobs(_caller(request), query))

    @app.get("/v1/fine_tuning/jobs/{job_id}", responses=openapi_responses(FineTuningJob))
    async def get_job(self, job_id: str, request: Request) -> Response:
        return await self._respond(lambda s: s.fine_tuning.get_job(_caller(request), job_id))

    @app.post("/v1/fine_tuning/jobs/{job_id}/cancel", responses=openapi_responses(FineTuningJob))
    async def cancel_job(self, job_id: str, request: Request) -> Response:
        return await self._respond(lambda s: s.fine_tuning.cancel_job(_caller(request), job_id))

    @app.get("/v1/fine_tuning/jobs/{job_id}/events", responses=openapi_responses(FineTuningEventList))
    async def job_events(
        self, job_id: str, request: Request, after: str | None = None, limit: int | None = None
    ) -> Response:
        query = page_query(after, limit)
        return await self._respond(lambda s: s.fine_tuning.job_events(_caller(request), job_id, query))

    @app.get(
        "/v1/fine_tuning/jobs/{job_id}/checkpoints", responses=openapi_responses(FineTuningCheckpointList)
    )
    async def job_checkpoints(
        self, job_id: str, request: Request, after: str | None = None, limit: int | None = None
    ) -> Response:
        query = page_query(after, limit)
        return await self._respond(lambda s: s.fine_tuning.job_checkpoints(_caller(request), job_id, query))

    @app.delete("/v1/models/{model_id:path}", responses=openapi_responses(ModelDeleted))
    async def delete_model(self, model_id: str, request: Request) -> Response:
        return await self._respond(lambda s: s.fine_tuning.delete_model(_caller(request), model_id))

    # ---- admin (API keys, usage, the catalog); needs an admin key ----------------------------------
    @app.post("/admin/keys")
    async def create_key(self, request: Request) -> Response:
        return await self._respond(lambda s: s.admin.create_key(_caller(request), request.stream()), 201)

    @app.get("/admin/keys")
    async def list_keys(self, request: Request) -> Response:
        return await self._respond(lambda s: s.admin.list_keys(_caller(request)))

    @app.delete("/admin/keys/{key_id}")
    async def revoke_key(self, key_id: str, request: Request) -> Response:
        return await self._respond(lambda s: s.admin.revoke_key(_caller(request), key_id))

    @app.get("/admin/usage")
    async def usage(self, request: Request, since: float = 0.0) -> Response:
        return await self._respond(lambda s: s.admin.usage(_caller(request), since))

    @app.get("/admin/catalog")
    async def get_catalog(self, request: Request) -> Response:
        return await self._respond(lambda s: s.admin.get_catalog(_caller(request)))

    # NOTE: 202: the catalog-admin deployment took the change; the roll goes on after the answer.
    @app.put("/admin/models/{model_id:path}")
    async def admin_put_model(self, model_id: str, request: Request) -> Response:
        return await self._respond(
            lambda s: s.admin.change_model(_caller(request), "put", model_id, request.stream()), 202
        )

    @app.patch("/admin/models/{model_id:path}")
    async def admin_patch_model(self, model_id: str, request: Request) -> Response:
        return await self._respond(
            lambda s: s.admin.change_model(_caller(request), "patch", model_id, request.stream()), 202
        )

    @app.delete("/admin/models/{model_id:path}")
    async def admin_remove_model(self, model_id: str, request: Request) -> Response:
        return await self._respond(lambda s: s.admin.change_model(_caller(request), "delete", model_id), 202)

    # ---- handle API (llmaas.client): typed requests in, typed responses or ErrorResult out ------------
    async def models(self) -> ModelList | ErrorResult:
        return await self.serving.front.models()

    async def completion(self, request: CompletionRequest) -> CompletionResponse | ErrorResult:
        return await self.serving.front.completion(request)

    async def chat(self, request: ChatCompletionRequest) -> ChatCompletionResponse | ErrorResult:
        return await self.serving.front.chat(request)

    async def embeddings(self, request: EmbeddingRequest) -> EmbeddingResponse | ErrorResult:
        return await self.serving.front.embeddings(request)

    async def classify(self, request: ClassificationRequest) -> ClassificationResponse | ErrorResult:
        return await self.serving.front.classify(request)

    async def tokenize(self, request: TokenizeRequest) -> TokenizeResponse | ErrorResult:
        return await self.serving.front.tokenize(request)

    async def detokenize(self, request: DetokenizeRequest) -> DetokenizeResponse | ErrorResult:
        return await self.serving.front.detokenize(request)

    async def completion_stream(
        self, request: CompletionRequest
    ) -> AsyncIterator[CompletionResponse | ErrorResult]:
        async for item in self.serving.front.completion_stream(request):
            yield item

    async def chat_stream(
        self, request: ChatCompletionRequest
    ) -> AsyncIterator[ChatCompletionChunk | ErrorResult]:
        async for item in self.serving.front.chat_stream(request):
            yield item
