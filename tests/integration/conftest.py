"""One Ray instance and one platform (the test catalog, deployed as `llmaas serve` does) for the session."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from llmaas.config.catalog import Catalog

TEST_CATALOG = """
app_name: llmaas
cache_dir: {cache}
router: {{num_cpus: 0.1}}
tokenizer: {{num_cpus: 0.1}}
models:
  - id: tiny-llama
    source: {{demo: tiny-llama-chat}}
    max_context_length: 128
    batching: {{max_batch_size: 8, batch_wait_ms: 5}}
    sampling: {{temperature: 0.0, max_tokens: 16}}
    response_cache: {{enabled: true}}
    resources: {{num_cpus: 0.5, torch_threads: 1}}
  - id: tiny-llama-tp2
    source: {{demo: tiny-llama-chat}}
    tensor_parallel_size: 2
    max_context_length: 128
    sampling: {{temperature: 0.0, max_tokens: 16}}
    resources: {{num_cpus: 0.5, torch_threads: 1}}
  - id: tiny-gpt2
    source: {{demo: tiny-gpt2}}
    batching: {{max_batch_size: 2, max_queued_requests: 4}}
    sampling: {{max_tokens: 16}}
    resources: {{num_cpus: 0.25, torch_threads: 1}}
  - id: minilm
    task: embed
    source: {{demo: all-minilm-l6-v2}}
    resources: {{num_cpus: 0.25, torch_threads: 1}}
  - id: tiny-gguf
    source: {{gguf: {gguf}}}
    max_context_length: 128
    sampling: {{temperature: 0.0, max_tokens: 16}}
    resources: {{num_cpus: 0.25, torch_threads: 1}}
  - id: smollm2
    source: {{demo: smollm2-135m-instruct}}
    max_context_length: 512
    batching: {{max_batch_size: 4}}
    sampling: {{temperature: 0.0, max_tokens: 24}}
    resources: {{num_cpus: 0.5, torch_threads: 1}}
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def catalog(model_cache: Path, tiny_gguf_file: Path) -> Catalog:
    return Catalog.from_yaml(TEST_CATALOG.format(cache=model_cache, gguf=tiny_gguf_file))


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[dict[str, str]]:
    import ray

    dashboard_port = _free_port()
    metrics_port = _free_port()
    context: Any = ray.init(
        num_cpus=8,
        include_dashboard=True,
        dashboard_port=dashboard_port,
        log_to_driver=False,
        _metrics_export_port=metrics_port,  # the node's Prometheus endpoint, scraped by test_metrics
    )
    yield {
        "dashboard": f"http://127.0.0.1:{dashboard_port}",
        "address": context.address_info["address"],
        "metrics": f"http://{context.address_info['node_ip_address']}:{metrics_port}/metrics",
    }
    from ray import serve

    serve.shutdown()
    ray.shutdown()


@pytest.fixture(scope="session")
def base_url(
    ray_cluster: dict[str, str],
    catalog: Catalog,
    chat_model_path: Path,
    gpt2_model_path: Path,
    smollm2_model_path: Path,
) -> str:
    from ray import serve

    from llmaas.deploy import apply_catalog
    from llmaas.plan import plan_catalog

    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    # NOTE: the shape `llmaas serve` runs: a front application and one application per model.
    apply_catalog(catalog)
    url = f"http://127.0.0.1:{port}"
    apps = set(plan_catalog(catalog).app_names())
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/ready", timeout=10).status_code == 200:
                return url
        except httpx.HTTPError:
            pass
        for name, status in serve.status().applications.items():
            if name in apps and str(status.status).endswith("DEPLOY_FAILED"):
                pytest.fail(f"deploy of {name} failed: {status.message}")
        time.sleep(1)
    pytest.fail("the test app did not become ready in 600s")


@pytest.fixture
def http(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=120) as client:
        yield client
