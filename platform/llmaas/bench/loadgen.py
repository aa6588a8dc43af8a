"""A load generator for the platform's OpenAI routes (streaming, timed per message).

Closed loop: ``concurrency`` workers each send their next request (or conversation) as soon as the
last one ends. Fixed rate: requests (or conversations) start on a Poisson schedule of ``rate`` per
second, however many are in flight. The long-prompt-interference workload runs its own rounds
instead. Each request streams (SSE) with ``ignore_eos`` so that its output length is exactly the
``max_tokens`` drawn for it; what it measured is a ``RequestResult``, and ``llmaas.bench.metrics``
adds a level's up. The workloads are ``llmaas.bench.workloads``.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
from collections.abc import Callable, Coroutine
from typing import Any, Literal

import httpx
from pydantic import Field

from llmaas.bench.metrics import (
    LevelReport,
    RequestResult,
    Slo,
    interference_stats,
    summarize,
)
from llmaas.bench.workloads import (
    WORDS,
    Conversation,
    HttpCodec,
    TextSource,
    Work,
    WorkloadConfig,
    conversations,
    interference_work,
    make_workload,
    shared_prefix_work,
)
from llmaas.config.base import BaseConfig

__all__ = [
    "WORDS",
    "BenchConfig",
    "LevelReport",
    "RequestResult",
    "Target",
    "Work",
    "body_for",
    "level_sizes",
    "make_requests",
    "make_workload",
    "one_request",
    "run_bench",
    "run_targets",
    "summarize",
]

# NOTE: the interference workload's long prompt is sent once every running decode has streamed this
# many messages (or ended), so that the gaps before it show the decodes' undisturbed pace.
WARM_MESSAGES = 4


class BenchConfig(WorkloadConfig):
    url: str = Field(default="http://127.0.0.1:8000", description="Base URL of the platform.")
    model: str = Field(description="Catalog model id to load.")
    concurrency: list[int] = Field(
        default_factory=lambda: [1, 4, 16, 32, 64], description="Closed-loop levels."
    )
    rate: list[float] = Field(default_factory=list, description="Fixed-rate levels (requests/s).")
    requests_per_level: int = Field(default=64, ge=1)
    seed: int = 0
    timeout_s: float = Field(default=600.0, gt=0)
    api_key: str | None = Field(default=None, description="Sent as 'Authorization: Bearer' (a gateway).")
    goodput: Slo | None = Field(default=None, description="SLOs for goodput; None: no goodput.")

    def target(self, name: str = "llmaas", url: str | None = None) -> Target:
        """The platform (or another server at ``url``) as this workload sends to it."""
        path = "/v1/chat/completions" if self.chat else "/v1/completions"
        return Target(name=name, url=url or self.url, model=self.model, path=path, chat=self.chat)

    def headers(self) -> dict[str, str] | None:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else None


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


def body_for(target: Target, work: Work) -> dict[str, Any]:
    if target.style == "hf-serve":
        from llmaas.bench.hf_serve import hf_serve_body

        return hf_serve_body(target.model, work.prompt, work.max_tokens, stream=target.stream)
    body: dict[str, Any] = {"model": target.model, "max_tokens": work.max_tokens, "temperature": 0}
    if target.chat:
        body["messages"] = work.messages()
    elif work.system is not None or work.history:
        raise ValueError(f"{target.name}: a request with a system message or history needs a chat target")
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
    """The platform's request bodies for ``count`` seeded draws of the random workload."""
    target = config.target()
    return [body_for(target, work) for work in make_workload(config, count, rng)]


def _text_of(event: dict[str, Any]) -> str:
    parts = []
    for choice in event.get("choices", []):
        parts.append(choice.get("text") or (choice.get("delta") or {}).get("content") or "")
    return "".join(parts)


def _cached_tokens(usage: dict[str, Any]) -> int | None:
    details = usage.get("prompt_tokens_details") or {}
    cached = details.get("cached_tokens")
    return None if cached is None else int(cached)


async def one_request(
    client: httpx.AsyncClient, target: Target, work: Work, on_text: Callable[[], None] | None = None
) -> RequestResult:
    """Send ``work``; ``on_text`` is called at each streamed message that carries text."""
    sent_at = time.perf_counter()
    chunks: list[float] = []
    text: list[str] = []
    usage: dict[str, Any] = {}

    def failed(status: int, error: str) -> RequestResult:
        return RequestResult(
            ok=False, status=status, e2e_s=time.perf_counter() - sent_at, error=error[:300], sent_at=sent_at
        )

    try:
        async with client.stream("POST", target.url + target.path, json=body_for(target, work)) as response:
            if response.status_code != 200:
                return failed(response.status_code, (await response.aread()).decode(errors="replace"))
            if not target.stream:
                data = json.loads(await response.aread())
                usage = data.get("usage") or {}
                text.append("".join(c.get("text") or (c.get("message") or {}).get("content") or ""
                                    for c in data.get("choices", [])))  # fmt: skip
            else:
                async for line in response.aiter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    event = json.loads(line[6:])
                    if "error" in event:
                        return failed(200, str(event["error"]))
                    piece = _text_of(event)
                    if piece:
                        chunks.append(time.perf_counter() - sent_at)
                        text.append(piece)
                        if on_text is not None:
                            on_text()
                    if event.get("usage"):
                        usage = event["usage"]
    except httpx.HTTPError as exc:
        return failed(0, f"{type(exc).__name__}: {exc}")
    return RequestResult(
        ok=True,
        status=200,
        ttft_s=chunks[0] if chunks else None,
        e2e_s=time.perf_counter() - sent_at,
        prompt_tokens=int(usage.get("prompt_tokens", 0)),
        completion_tokens=int(usage.get("completion_tokens", 0)),
        cached_tokens=_cached_tokens(usage),
        sent_at=sent_at,
        chunk_s=chunks,
        text="".join(text),
    )


async def run_conversation(
    client: httpx.AsyncClient, target: Target, conversation: Conversation
) -> list[RequestResult]:
    """Each turn sends the conversation so far, the earlier answers included; a failed turn ends it."""
    history: list[dict[str, str]] = []
    results = []
    for turn, (user, max_tokens) in enumerate(
        zip(conversation.user_turns, conversation.max_tokens, strict=True), start=1
    ):
        result = await one_request(client, target, Work(prompt=user, max_tokens=max_tokens, history=history))
        result.turn = turn
        results.append(result)
        if not result.ok:
            break
        history = [*history, {"role": "user", "content": user}, {"role": "assistant", "content": result.text}]
    return results


Job = Callable[[], Coroutine[Any, Any, list[RequestResult]]]


def _jobs(client: httpx.AsyncClient, target: Target, items: list[Work] | list[Conversation]) -> list[Job]:
    def job(item: Work | Conversation) -> Job:
        async def run() -> list[RequestResult]:
            if isinstance(item, Conversation):
                return await run_conversation(client, target, item)
            return [await one_request(client, target, item)]

        return run

    return [job(item) for item in items]


async def closed_loop(jobs: list[Job], concurrency: int) -> list[RequestResult]:
    queue = list(reversed(jobs))
    results: list[RequestResult] = []

    async def worker() -> None:
        while queue:
            results.extend(await queue.pop()())

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return results


async def fixed_rate(jobs: list[Job], rate: float, rng: random.Random) -> list[RequestResult]:
    tasks: list[asyncio.Task[list[RequestResult]]] = []
    for job in jobs:
        tasks.append(asyncio.create_task(job()))
        await asyncio.sleep(rng.expovariate(rate))
    return [result for done in await asyncio.gather(*tasks) for result in done]


async def interference_round(
    client: httpx.AsyncClient, target: Target, decodes: list[Work], long: Work
) -> tuple[list[RequestResult], RequestResult]:
    """Start the decodes; once each has streamed WARM_MESSAGES messages, send the long prompt."""
    if not target.stream:
        raise ValueError(f"{target.name}: the interference workload needs a streaming target")
    ready = asyncio.Event()
    seen = [0] * len(decodes)
    ended: set[int] = set()

    def check() -> None:
        if all(count >= WARM_MESSAGES or i in ended for i, count in enumerate(seen)):
            ready.set()

    async def decode(i: int, work: Work) -> RequestResult:
        def on_text() -> None:
            seen[i] += 1
            check()

        try:
            return await one_request(client, target, work, on_text)
        finally:
            ended.add(i)
            check()

    tasks = [asyncio.create_task(decode(i, work)) for i, work in enumerate(decodes)]
    await ready.wait()
    long_result = await one_request(client, target, long)
    return list(await asyncio.gather(*tasks)), long_result


def level_sizes(config: BenchConfig, level: int) -> int:
    """Requests sent at one closed-loop level: enough for every stream to send two."""
    return max(config.requests_per_level, 2 * level)


def _conversation_count(config: BenchConfig, level: int | None) -> int:
    """Conversations of a level: ``requests_per_level`` turns in all, and one per stream at least."""
    return max(math.ceil(config.requests_per_level / config.turns), level or 1)


def _level_work(
    config: BenchConfig, source: TextSource | None, level: int | None, rng: random.Random
) -> list[Work] | list[Conversation]:
    """One level's requests (``level``: its streams; None: a fixed-rate level)."""
    count = level_sizes(config, level) if level is not None else config.requests_per_level
    if config.workload == "random":
        return make_workload(config, count, rng)
    assert source is not None
    if config.workload == "shared-prefix":
        return shared_prefix_work(config, source, count, rng, config.seed)
    if config.workload == "multi-turn":
        return conversations(config, source, _conversation_count(config, level), rng)
    raise ValueError(f"the {config.workload} workload has no closed-loop or fixed-rate levels")


def _warm_up_work(config: BenchConfig, source: TextSource | None) -> list[Work]:
    """Requests sent to each target before any level: not measured."""
    rng = random.Random(-1)
    if config.workload == "random" or source is None:
        return make_workload(config, 1, rng)
    if config.workload == "shared-prefix":
        return shared_prefix_work(config, source, 1, rng, config.seed)
    if config.workload == "multi-turn":
        first = conversations(config, source, 1, rng)[0]
        return [Work(prompt=first.user_turns[0], max_tokens=first.max_tokens[0])]
    decodes, long = interference_work(config, source, rng)
    # NOTE: a long prefill before the measured rounds, so that they do not pay for its first one
    return [decodes[0], long.model_copy(update={"max_tokens": 1})]


def _text_source(config: BenchConfig, codec: HttpCodec) -> TextSource:
    source = TextSource(codec)
    if codec.max_model_len is not None:
        config.check_context(codec.max_model_len)
    return source


async def _interference(
    client: httpx.AsyncClient,
    target: Target,
    config: BenchConfig,
    rounds: list[tuple[list[Work], Work]],
) -> LevelReport:
    measured = []
    started = time.perf_counter()
    for decodes, long in rounds:
        measured.append(await interference_round(client, target, decodes, long))
    duration = time.perf_counter() - started
    results = [r for decodes, long in measured for r in (*decodes, long)]
    report = summarize("interference", config.decodes, results, duration, config.goodput)
    report.interference = interference_stats(measured)
    return report


async def run_targets(config: BenchConfig, targets: list[Target]) -> dict[str, list[LevelReport]]:
    """The workload's levels on every target, level by level: each level runs on one target, then the
    next, back to back (so a slow drift of the machine hits them alike), with the same requests."""
    if len({t.name for t in targets}) != len(targets):
        raise ValueError("targets need distinct names")
    if config.workload == "random":
        return await _run_levels(config, targets, None)
    # NOTE: the prompts are cut with the platform's tokenizer, whichever targets they then go to
    codec = HttpCodec(config.url, config.model, config.headers())
    try:
        return await _run_levels(config, targets, await asyncio.to_thread(_text_source, config, codec))
    finally:
        codec.close()


async def _run_levels(
    config: BenchConfig, targets: list[Target], source: TextSource | None
) -> dict[str, list[LevelReport]]:
    most = max([*config.concurrency, config.decodes + 1, 1])
    limits = httpx.Limits(max_connections=most + 16, max_keepalive_connections=64)
    reports: dict[str, list[LevelReport]] = {t.name: [] for t in targets}

    async def build(level: int | None, rng: random.Random) -> list[Work] | list[Conversation]:
        return await asyncio.to_thread(_level_work, config, source, level, rng)

    async with httpx.AsyncClient(timeout=config.timeout_s, limits=limits, headers=config.headers()) as client:
        warm_up = await asyncio.to_thread(_warm_up_work, config, source)
        for target in targets:
            for work in warm_up:
                await one_request(client, target, work)
        if config.workload == "long-prompt-interference":
            assert source is not None
            rounds = [
                await asyncio.to_thread(
                    interference_work, config, source, random.Random(f"{config.seed}-i{i}")
                )
                for i in range(config.rounds)
            ]
            for target in targets:
                reports[target.name].append(await _interference(client, target, config, rounds))
            return reports
        for level in config.concurrency:
            # NOTE: each level draws from its own seed, so every target gets the same requests there.
            items = await build(level, random.Random(f"{config.seed}-c{level}"))
            for target in targets:
                started = time.perf_counter()
                results = await closed_loop(_jobs(client, target, items), level)
                duration = time.perf_counter() - started
                reports[target.name].append(
                    summarize("concurrency", level, results, duration, config.goodput)
                )
        for rate in config.rate:
            rng = random.Random(f"{config.seed}-r{rate}")
            items = await build(None, rng)
            arrivals = rng.getstate()
            for target in targets:
                rng.setstate(arrivals)  # NOTE: the same arrival times for every target
                started = time.perf_counter()
                results = await fixed_rate(_jobs(client, target, items), rate, rng)
                duration = time.perf_counter() - started
                reports[target.name].append(summarize("rate", rate, results, duration, config.goodput))
    return reports


async def run_bench(config: BenchConfig, target: Target | None = None) -> list[LevelReport]:
    """The sweep against ``target`` (the platform at ``config.url`` by default)."""
    target = target or config.target()
    return (await run_targets(config, [target]))[target.name]
