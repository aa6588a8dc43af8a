"""Many small models on few replicas: a multiplexed pool (``pools:``) with Serve's LRU per replica.

A Serve application ``mux`` (at ``/mux``) runs three small models in one pool of one replica
that holds at most two of them: each answers, the replica loads on demand and evicts the least
recently used one, and a pooled model's answer equals the same model served on its own.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from llmaas.config.catalog import Catalog

APP = "mux"
MUX_CATALOG = """
app_name: mux
cache_dir: {cache}
router: {{num_cpus: 0.05}}
tokenizer: {{num_cpus: 0.05}}
pools:
  small:
    max_models_per_replica: 2
    replicas: {{num_replicas: 1}}
    resources: {{num_cpus: 0.1, torch_threads: 1}}
models:
  - {{id: gpt2-a, source: {{demo: tiny-gpt2}}, pool: small, sampling: {{temperature: 0.0, max_tokens: 6}}}}
  - {{id: gpt2-b, source: {{demo: tiny-gpt2}}, pool: small, sampling: {{temperature: 0.0, max_tokens: 5}}}}
  - id: llama-c
    source: {{demo: tiny-llama-chat}}
    pool: small
    sampling: {{temperature: 0.0, max_tokens: 4}}
"""


@pytest.fixture(scope="module")
def mux_url(base_url: str, model_cache: Path, gpt2_model_path: Path, chat_model_path: Path) -> Iterator[str]:
    from ray import serve

    from llmaas.deployments import build_from_catalog
    from llmaas.launch import wait_running

    catalog = Catalog.from_yaml(MUX_CATALOG.format(cache=model_cache))
    serve.run(build_from_catalog(catalog), name=APP, route_prefix="/mux", blocking=False)
    wait_running(APP, timeout_s=300)
    yield f"{base_url}/mux"
    serve.delete(APP, _blocking=False)


def held() -> list[str]:
    """The models the pool's replica holds now, least recently used first."""
    from ray import serve

    health = serve.get_deployment_handle("pool-small", APP).health.remote().result(timeout_s=60)
    listed = health.detail.removeprefix("models loaded: ")
    return [] if listed == "none" else listed.split(", ")


def test_a_pool_loads_models_on_demand_and_evicts_the_least_recently_used(
    mux_url: str, http: httpx.Client
) -> None:
    assert held() == []
    tokens = {}
    for model in ("gpt2-a", "gpt2-b", "gpt2-a", "llama-c"):
        response = httpx.post(
            f"{mux_url}/v1/completions", json={"model": model, "prompt": "Hello"}, timeout=300
        )
        assert response.status_code == 200, response.text
        tokens[model] = response.json()["usage"]["completion_tokens"]
        assert len(held()) <= 2
    assert tokens == {"gpt2-a": 6, "gpt2-b": 5, "llama-c": 4}  # each model's own defaults
    assert sorted(held()) == ["gpt2-a", "llama-c"], "gpt2-b was the least recently used"
    # a pooled model answers as the same weights served on their own (the session's tiny-gpt2)
    body = {"prompt": "The platform", "max_tokens": 8, "temperature": 0.0}
    pooled = httpx.post(f"{mux_url}/v1/completions", json={**body, "model": "gpt2-b"}, timeout=300).json()
    alone = http.post("/v1/completions", json={**body, "model": "tiny-gpt2"}).json()
    assert pooled["choices"][0]["text"] == alone["choices"][0]["text"]
    assert sorted(held()) == ["gpt2-b", "llama-c"], "gpt2-a was the least recently used"
    listed = httpx.get(f"{mux_url}/v1/models", timeout=60).json()
    assert sorted(m["id"] for m in listed["data"]) == ["gpt2-a", "gpt2-b", "llama-c"]
