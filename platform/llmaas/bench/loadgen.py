"""A load generator for the platform's OpenAI routes (streaming completions, timed per token).

Closed loop: ``concurrency`` workers each send their next request as soon as the last one
ends. Fixed rate: requests start on a Poisson schedule of ``rate`` per second, however many
are in flight. Each request streams (SSE) with ``ignore_eos`` so that its output length is
exactly the ``max_tokens`` drawn for it, and reports TTFT, TPOT and end-to-end latency.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from typing import Any, Literal

import httpx
from pydantic import BaseModel, Field

from llmaas.config.base import BaseConfig

WORDS = [
    "the",
    "model",
    "serves",
    "many",
    "requests",
    "on",
    "ray",
    "with",
    "deepspeed",
    "and",
    "a",
    "router",
    "that",
    "streams",
    "tokens",
    "to",
    "every",
    "client",
    "while",
    "replicas",
    "scale",
    "up",
    "and",
    "down",
    "as",
    "load",
    "rises",
    "and",
    "falls",
    "across",
    "the",
    "cluster",
]


class BenchConfig(BaseConfig):
    url: str = Field(default="http://127.0.0.1:8000", description="Base URL of the platform.")
    model: str = Field(description="Catalog model id to load.")
    concurrency: list[int] = Field(
        default_factory=lambda: [1, 4, 16, 32, 64], description="Closed-loop levels."
    )
    rate: list[float] = Field(default_factory=list, description="Fixed-rate levels (requests/s).")
    requests_per_level: int = Field(default=64, ge=1)
    prompt_words: tuple[int, int] = Field(default=(16, 64), description="Prompt length range, in words.")
    output_tokens: tuple[int, int] = Field(default=(32, 128), description="max_tokens range (ignore_eos).")
    seed: int = 0
    timeout_s: float = Field(default=600.0, gt=0)
    api_key: str | None = Field(default=None, description="Sent as 'Authorization: Bearer' (a gateway).")

    def target(self) -> Target:
        return Target(name="llmaas", url=self.url, model=self.model)


class Target(BaseConfig):
    """Where and how requests go: the platform, or one of the baselines it is measured against."""

    name: str
    url: str
    model: str = Field(description="What the request's 'model' field holds.")
    path: str = "/v1/completions"
    stream: bool = Field(default=True, description="SSE streaming (TTFT measured) or one JSON response.")
    chat: bool = Field(default=False, description="Send 'messages' (chat completions) instead of 'prompt'.")
    extra_body: dict[str, Any] = Field(default_factory=dict, description="Fields added to every request.")
    style: Literal["openai", "hf-serve"] = Field(
        default="openai", description="'hf-serve': transformers serve's body (no ignore_eos)."
    )


class Work(BaseModel):
    """One request of the workload, whatever the target's wire format."""

    prompt: str
    max_tokens: int


def make_workload(config: BenchConfig, count: int, rng: random.Random) -> list[Work]:
    work = []
    for _ in range(count):
        words = rng.randint(*config.prompt_words)
        work.append(
            Work(
                prompt=" ".join(rng.choice(WORDS) for _ in range(words)),
                max_tokens=rng.randint(*config.output_tokens),
            )
        )
    return work


def body_for(target: Target, work: Work) -> dict[str, Any]:
    if target.style == "hf-serve":
        from llmaas.bench.hf_serve import hf_serve_body

        return hf_serve_body(target.model, work.prompt, work.max_tokens, stream=target.stream)
    body: dict[str, Any] = {"model": target.model, "max_tokens": work.max_tokens, "temperature": 0}
    if target.chat:
        body["messages"] = [{"role": "user", "content": work.prompt}]
    else:
        body["prompt"] = work.prompt
        body["ignore_eos"] = True
    if target.stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    else:
        body["stream"] = False
    return {**body, **target.extra_body}


def make_requests(config: BenchConfig, count: int, rng: random.Random) -> list[dict[str, Any]]:
    """The platform's request bodies for ``count`` seeded draws of the workload."""
    target = config.target()
    return [body_for(target, work) for work in make_workload(config, count, rng)]


class RequestResult(BaseModel):
    ok: bool
    status: int
    ttft_s: float | None = None
    e2e_s: float
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None


class LevelReport(BaseModel):
    mode: str  # "concurrency" or "rate"
    level: float
    requests: int
    errors: int
    duration_s: float
    output_tok_s: float
    req_s: float
    ttft_p50_ms: float | None
    ttft_p99_ms: float | None
    tpot_p50_ms: float | None
    tpot_p99_ms: float | None
    e2e_p50_ms: float | None
    e2e_p99_ms: float | None


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 3)


def summarize(mode: str, level: float, results: list[RequestResult], duration_s: float) -> LevelReport:
    ok = [r for r in results if r.ok]
    tokens = sum(r.completion_tokens for r in ok)
    ttft = [r.ttft_s for r in ok if r.ttft_s is not None]
    tpot = [
        (r.e2e_s - r.ttft_s) / (r.completion_tokens - 1)
        for r in ok
        if r.ttft_s is not None and r.completion_tokens > 1
    ]
    e2e = [r.e2e_s for r in ok]
    return LevelReport(
        mode=mode,
        level=level,
        requests=len(results),
        errors=len(results) - len(ok),
        duration_s=round(duration_s, 3),
        output_tok_s=round(tokens / duration_s, 2) if duration_s > 0 else 0.0,
        req_s=round(len(ok) / duration_s, 3) if duration_s > 0 else 0.0,
        ttft_p50_ms=_ms(_percentile(ttft, 50)),
        ttft_p99_ms=_ms(_percentile(ttft, 99)),
        tpot_p50_ms=_ms(_percentile(tpot, 50)),
        tpot_p99_ms=_ms(_percentile(tpot, 99)),
        e2e_p50_ms=_ms(_percentile(e2e, 50)),
        e2e_p99_ms=_ms(_percentile(e2e, 99)),
    )


def _has_text(event: dict[str, Any]) -> bool:
    for choice in event.get("choices", []):
        if choice.get("text") or (choice.get("delta") or {}).get("content"):
            return True
    return False


async def one_request(client: httpx.AsyncClient, target: Target, work: Work) -> RequestResult:
    started = time.perf_counter()
    ttft: float | None = None
    usage: dict[str, Any] = {}

    def failed(status: int, error: str) -> RequestResult:
        return RequestResult(ok=False, status=status, e2e_s=time.perf_counter() - started, error=error[:300])

    try:
        async with client.stream("POST", target.url + target.path, json=body_for(target, work)) as response:
            if response.status_code != 200:
                return failed(response.status_code, (await response.aread()).decode(errors="replace"))
            if not target.stream:
                usage = json.loads(await response.aread()).get("usage") or {}
            else:
                async for line in response.aiter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    event = json.loads(line[6:])
                    if "error" in event:
                        return failed(200, str(event["error"]))
                    if ttft is None and _has_text(event):
                        ttft = time.perf_counter() - started
                    if event.get("usage"):
                        usage = event["usage"]
    except httpx.HTTPError as exc:
        return failed(0, f"{type(exc).__name__}: {exc}")
    return RequestResult(
        ok=True,
        status=200,
        ttft_s=ttft,
        e2e_s=time.perf_counter() - started,
        prompt_tokens=int(usage.get("prompt_tokens", 0)),
        completion_tokens=int(usage.get("completion_tokens", 0)),
    )


async def closed_loop(
    client: httpx.AsyncClient, target: Target, work: list[Work], concurrency: int
) -> list[RequestResult]:
    queue = list(reversed(work))
    results: list[RequestResult] = []

    async def worker() -> None:
        while queue:
            results.append(await one_request(client, target, queue.pop()))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return results


async def fixed_rate(
    client: httpx.AsyncClient, target: Target, work: list[Work], rate: float, rng: random.Random
) -> list[RequestResult]:
    tasks = []
    for item in work:
        tasks.append(asyncio.create_task(one_request(client, target, item)))
        await asyncio.sleep(rng.expovariate(rate))
    return list(await asyncio.gather(*tasks))


def level_sizes(config: BenchConfig, level: int) -> int:
    """Requests sent at one closed-loop level: enough for every stream to send two."""
    return max(config.requests_per_level, 2 * level)


async def run_bench(config: BenchConfig, target: Target | None = None) -> list[LevelReport]:
    """The sweep against ``target`` (the platform at ``config.url`` by default)."""
    target = target or config.target()
    limits = httpx.Limits(max_connections=max([*config.concurrency, 1]) + 16, max_keepalive_connections=64)
    reports: list[LevelReport] = []
    headers = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else None
    async with httpx.AsyncClient(timeout=config.timeout_s, limits=limits, headers=headers) as client:
        await one_request(client, target, make_workload(config, 1, random.Random(-1))[0])  # warm-up
        for level in config.concurrency:
            # NOTE: each level draws from its own seed, so every target gets the same requests there.
            work = make_workload(config, level_sizes(config, level), random.Random(f"{config.seed}-c{level}"))
            started = time.perf_counter()
            results = await closed_loop(client, target, work, level)
            reports.append(summarize("concurrency", level, results, time.perf_counter() - started))
        for rate in config.rate:
            rng = random.Random(f"{config.seed}-r{rate}")
            work = make_workload(config, config.requests_per_level, rng)
            started = time.perf_counter()
            results = await fixed_rate(client, target, work, rate, rng)
            reports.append(summarize("rate", rate, results, time.perf_counter() - started))
    return reports
