"""The router's response cache over HTTP: the header, hits as misses were, streamed hits."""

from __future__ import annotations

import json

import httpx

BODY = {"model": "tiny-llama", "prompt": "The capital of France is", "max_tokens": 6, "temperature": 0}


def _events(response: httpx.Response) -> list[dict[str, object]]:
    return [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: {")]


def test_a_repeated_deterministic_request_is_answered_from_the_cache(http: httpx.Client) -> None:
    body = {**BODY, "prompt": "The capital of France is (cache test)", "cache": True}
    first = http.post("/v1/completions", json=body)
    second = http.post("/v1/completions", json=body)
    assert first.status_code == second.status_code == 200, second.text
    assert (first.headers["x-llmaas-cache"], second.headers["x-llmaas-cache"]) == ("miss", "hit")
    assert second.json()["choices"] == first.json()["choices"]
    assert second.json()["usage"] == first.json()["usage"] and second.json()["id"] != first.json()["id"]
    sampled = http.post("/v1/completions", json={**body, "temperature": 0.8})
    assert sampled.headers["x-llmaas-cache"] == "bypass"
    assert "x-llmaas-cache" not in http.post("/v1/completions", json={**BODY, "model": "tiny-gpt2"}).headers


def test_a_streamed_hit_streams_like_the_miss(http: httpx.Client) -> None:
    body = {**BODY, "prompt": "One, two, three,", "cache": True, "stream": True}
    miss, hit = http.post("/v1/completions", json=body), http.post("/v1/completions", json=body)
    assert (miss.headers["x-llmaas-cache"], hit.headers["x-llmaas-cache"]) == ("miss", "hit")
    assert hit.text.rstrip().endswith("data: [DONE]")
    text = ["".join(e["choices"][0]["text"] for e in _events(r) if e["choices"]) for r in (miss, hit)]  # type: ignore[index]
    assert text[0] == text[1] and text[0]
