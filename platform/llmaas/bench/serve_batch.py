"""Baseline "serve-batch": Ray Serve with ``@serve.batch`` static batching around ``model.generate``.

The pattern Ray Serve's documentation teaches for LLMs: one replica holding a transformers model,
a FastAPI ingress whose ``POST /v1/completions`` awaits a ``@serve.batch`` method; Serve gathers up
to ``max_batch_size`` requests (or what arrived within ``batch_wait_timeout_s``) and the method
runs them as one left-padded ``model.generate`` call. Static batching: the whole batch decodes
``max(max_tokens)`` tokens together (``min_new_tokens`` equal to it, greedy), so each request waits
for the longest one in its batch, and requests arriving meanwhile wait for the next batch. Each
request then gets its own ``max_tokens`` sliced from its row. ``min_new_tokens`` suppresses EOS, so
every request behaves as if it sent ``ignore_eos: true`` (what the benchmark sends anyway), and
``temperature`` is ignored: every batch is greedy.

``generate`` runs in a worker thread (``asyncio.to_thread``) so that the replica keeps accepting
requests, which queue for the next batch, while a batch decodes.

Deploy into a running Ray and Serve with::

    serve.run(build_serve_batch_app(model_dir), name="baseline-serve-batch",
              route_prefix="/baseline-serve-batch")

and send load to ``http://127.0.0.1:8000/baseline-serve-batch/v1/completions`` (Serve strips the
route prefix before FastAPI routes the request).
"""

# NOTE: no ``from __future__ import annotations`` here (as in deployments/router.py): Serve's
# ``@serve.ingress`` rewrites each endpoint's signature, and in the replica a string annotation no
# longer resolves, so FastAPI took the ``CompletionRequest`` body for a required query parameter
# (every POST answered 422 "missing query.request").

import asyncio
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, HTTPException
from ray import serve

from llmaas.bench.servers import CompletionRequest, completion_response, load_model

APP_NAME = "baseline-serve-batch"
ROUTE_PREFIX = "/baseline-serve-batch"

app = FastAPI(title="Ray Serve @serve.batch baseline")


@dataclass(frozen=True)
class RowResult:
    """One request's share of a batch: its text and its token counts."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str


def generate_batch(tokenizer: Any, model: Any, requests: list[CompletionRequest]) -> list[RowResult]:
    """One ``model.generate`` over the whole batch, greedy, ``max(max_tokens)`` new tokens per row."""
    import torch

    encoded = tokenizer([r.prompt for r in requests], return_tensors="pt", padding=True)
    new_tokens = max(r.max_tokens for r in requests)
    with torch.inference_mode():
        output = model.generate(
            input_ids=encoded["input_ids"],
            attention_mask=encoded["attention_mask"],
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
    prompt_width = encoded["input_ids"].shape[1]
    prompt_lengths = encoded["attention_mask"].sum(dim=1).tolist()
    results = []
    for index, request in enumerate(requests):
        tokens = output[index, prompt_width:].tolist()[: request.max_tokens]
        text = tokenizer.decode(tokens, skip_special_tokens=True)
        results.append(RowResult(text, int(prompt_lengths[index]), len(tokens), "length"))
    return results


def configure_batching(batch_method: Any, max_batch_size: int, batch_wait_timeout_s: float) -> None:
    """Set a ``@serve.batch`` method's limits at runtime (the decorator's are only defaults)."""
    batch_method.set_max_batch_size(max_batch_size)
    batch_method.set_batch_wait_timeout_s(batch_wait_timeout_s)


@serve.ingress(app)
class ServeBatchBaseline:
    """One replica: the model, and a ``@serve.batch`` method that runs each batch as one generate."""

    def __init__(
        self, model_dir: str, max_batch_size: int, batch_wait_timeout_s: float, torch_threads: int
    ) -> None:
        import torch

        torch.set_num_threads(torch_threads)
        self.model_dir = model_dir
        self.tokenizer, self.model = load_model(model_dir)
        configure_batching(self.generate, max_batch_size, batch_wait_timeout_s)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.01)
    async def generate(self, requests: list[CompletionRequest]) -> list[RowResult]:
        return await asyncio.to_thread(generate_batch, self.tokenizer, self.model, requests)

    @app.get("/health")
    def health(self) -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/completions")
    async def completions(self, request: CompletionRequest) -> dict[str, Any]:
        if request.stream:
            raise HTTPException(status_code=400, detail="the serve-batch baseline does not stream")
        result: RowResult = await self.generate(request)
        return completion_response(
            request.model or self.model_dir,
            result.text,
            result.prompt_tokens,
            result.completion_tokens,
            result.finish_reason,
        )


def build_serve_batch_app(
    model_dir: str,
    max_batch_size: int = 32,
    batch_wait_timeout_s: float = 0.01,
    num_cpus: float = 1.0,
    torch_threads: int = 2,
) -> serve.Application:
    """The baseline as a Serve application (one replica), ready for ``serve.run``."""
    deployment: Any = serve.deployment(
        ServeBatchBaseline,
        name="ServeBatchBaseline",
        num_replicas=1,
        max_ongoing_requests=4 * max_batch_size,
        ray_actor_options={"num_cpus": num_cpus},
    )
    return deployment.bind(str(model_dir), max_batch_size, batch_wait_timeout_s, torch_threads)
