"""Prometheus metrics: scrape the node's metrics endpoint before and after traffic, check they moved."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from llmaas import LLMClient
from llmaas.metrics import (
    E2E_LATENCY,
    GENERATION_TOKENS,
    KV_CACHE_USAGE,
    PROMPT_TOKENS,
    REQUESTS,
    REQUESTS_RUNNING,
    REQUESTS_WAITING,
    TIME_PER_OUTPUT_TOKEN,
    TIME_TO_FIRST_TOKEN,
    UNKNOWN_MODEL,
)

MODEL = "tiny-llama"
Sample = tuple[str, dict[str, str], float]


def _scrape(url: str) -> list[Sample]:
    text = httpx.get(url, timeout=30).text
    return [
        (s.name, dict(s.labels), float(s.value))
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]


def _total(samples: list[Sample], name: str, **labels: str) -> float:
    """Sum of ``name`` over every series (replicas, nodes) whose labels include ``labels``."""
    return sum(
        value
        for sample, have, value in samples
        if sample == name and all(have.get(k) == v for k, v in labels.items())
    )


def _stream_usage(http: httpx.Client, body: dict[str, Any]) -> dict[str, int]:
    usage: dict[str, int] = {}
    with http.stream("POST", "/v1/completions", json=body) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: {"):
                chunk = json.loads(line[len("data: ") :])
                assert "error" not in chunk, chunk
                usage = chunk.get("usage") or usage
    assert usage, "include_usage gave no usage chunk"
    return usage


def _wait_until_moved(
    url: str,
    before: list[Sample],
    wanted: dict[str, tuple[str, dict[str, str], float]],
    timeout_s: float = 90,
) -> list[Sample]:
    """Scrape until every ``wanted`` series grew by at least its amount over ``before`` (Ray exports
    on an interval of seconds); fail naming the ones that did not."""
    deadline = time.monotonic() + timeout_s
    while True:
        after = _scrape(url)
        short = {}
        for what, (name, labels, least) in wanted.items():
            moved = _total(after, name, **labels) - _total(before, name, **labels)
            if moved < least:
                short[what] = (moved, least)
        if not short:
            return after
        if time.monotonic() > deadline:
            pytest.fail(f"metrics did not move enough in {timeout_s:.0f}s (moved, wanted): {short}")
        time.sleep(2)


def test_request_metrics_move_with_traffic(ray_cluster: dict[str, str], http: httpx.Client) -> None:
    url = ray_cluster["metrics"]
    before = _scrape(url)

    usages: list[dict[str, int]] = []
    body = {"model": MODEL, "prompt": "Hello there, llmaas", "max_tokens": 8, "ignore_eos": True}
    for _ in range(3):
        reply = http.post("/v1/completions", json=body)
        assert reply.status_code == 200, reply.text
        usages.append(reply.json()["usage"])
    for _ in range(2):
        usages.append(
            _stream_usage(http, {**body, "stream": True, "stream_options": {"include_usage": True}})
        )
    chat = http.post(
        "/v1/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 6},
    )
    assert chat.status_code == 200, chat.text
    usages.append(chat.json()["usage"])
    handle_reply = LLMClient("llmaas").complete(MODEL, "One, two,", max_tokens=4, ignore_eos=True)
    assert handle_reply.usage is not None
    usages.append(handle_reply.usage.model_dump())
    too_long = http.post("/v1/completions", json={**body, "max_tokens": 1000})
    assert too_long.status_code == 400, too_long.text
    unknown = http.post("/v1/completions", json={**body, "model": "no-such-model"})
    assert unknown.status_code == 404, unknown.text
    # refused by the router before the service sees it: counted all the same
    unknown_field = http.post("/v1/completions", json={**body, "best_of": 2})
    assert unknown_field.status_code == 400, unknown_field.text

    completions = {"model": MODEL, "route": "/v1/completions"}
    wanted: dict[str, tuple[str, dict[str, str], float]] = {
        "completions 200 (HTTP + handle)": (REQUESTS.prometheus_name, {**completions, "status": "200"}, 6),
        "chat 200": (
            REQUESTS.prometheus_name,
            {"model": MODEL, "route": "/v1/chat/completions", "status": "200"},
            1,
        ),
        "completions 400 (context, unknown field)": (
            REQUESTS.prometheus_name,
            {**completions, "status": "400"},
            2,
        ),
        "unknown model 404": (REQUESTS.prometheus_name, {"model": UNKNOWN_MODEL, "status": "404"}, 1),
        "prompt tokens": (
            PROMPT_TOKENS.prometheus_name,
            {"model": MODEL},
            sum(u["prompt_tokens"] for u in usages),
        ),
        "generated tokens": (
            GENERATION_TOKENS.prometheus_name,
            {"model": MODEL},
            sum(u["completion_tokens"] for u in usages),
        ),
        "ttft count (streams)": (f"{TIME_TO_FIRST_TOKEN.prometheus_name}_count", {"model": MODEL}, 2),
        "tpot count (streams)": (f"{TIME_PER_OUTPUT_TOKEN.prometheus_name}_count", {"model": MODEL}, 2),
        "e2e count (successes)": (f"{E2E_LATENCY.prometheus_name}_count", {"model": MODEL}, 7),
    }
    assert sum(u["completion_tokens"] for u in usages) >= 5 * 8 + 4
    after = _wait_until_moved(url, before, wanted)

    # Serve's tags come with ours, and the histograms are consistent.
    tagged = [
        labels
        for name, labels, _ in after
        if name == REQUESTS.prometheus_name and labels.get("model") == MODEL
    ]
    assert tagged
    assert all(labels.get("application") == "llmaas" and labels.get("replica") for labels in tagged)
    count = _total(after, f"{E2E_LATENCY.prometheus_name}_count", model=MODEL)
    assert _total(after, f"{E2E_LATENCY.prometheus_name}_bucket", model=MODEL, le="+Inf") == count
    assert _total(after, f"{E2E_LATENCY.prometheus_name}_sum", model=MODEL) > 0


def test_replica_gauges_and_replica_count_are_exported(ray_cluster: dict[str, str], base_url: str) -> None:
    url = ray_cluster["metrics"]

    def present(samples: list[Sample], name: str, **labels: str) -> list[float]:
        return [v for n, have, v in samples if n == name and all(have.get(k) == x for k, x in labels.items())]

    checks: dict[str, Callable[[list[Sample]], bool]] = {
        "running": lambda s: bool(present(s, REQUESTS_RUNNING.prometheus_name, model=MODEL)),
        "waiting": lambda s: bool(present(s, REQUESTS_WAITING.prometheus_name, model=MODEL)),
        "kv usage": lambda s: bool(present(s, KV_CACHE_USAGE.prometheus_name, model=MODEL)),
        "healthy replicas": lambda s: (
            _total(s, "ray_serve_deployment_replica_healthy", deployment=f"model-{MODEL}") >= 1
        ),
    }
    deadline = time.monotonic() + 60
    while True:
        samples = _scrape(url)
        missing = [what for what, ok in checks.items() if not ok(samples)]
        if not missing:
            break
        if time.monotonic() > deadline:
            pytest.fail(f"not exported in 60s: {missing}")
        time.sleep(2)
    assert all(0.0 <= v <= 1.0 for v in present(samples, KV_CACHE_USAGE.prometheus_name, model=MODEL))
    assert all(v >= 0 for v in present(samples, REQUESTS_RUNNING.prometheus_name, model=MODEL))
