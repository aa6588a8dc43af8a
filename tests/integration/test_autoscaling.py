"""Autoscaling from the catalog: scale from zero (bounded wait), and one rise and one fall per load step.

A Serve application ``auto`` (at ``/auto``) runs next to the session's with three models:
``cold`` and ``cold-short`` scaled to zero, and ``elastic`` between 1 and 3 replicas on the
engine's sequence count (``llmaas.autoscaling``) with short delays so that the test is quick.
The models run the fake engine (``llmaas.engine.fake``): what is tested is Serve's and the
policy's behaviour, and a fake step of a fixed length makes the load step the same on every run.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from llmaas.config.catalog import Catalog

APP = "auto"
AUTO_CATALOG = """
app_name: auto
cache_dir: {cache}
router: {{num_cpus: 0.05}}
tokenizer: {{num_cpus: 0.05}}
models:
  - id: cold
    source: {{demo: tiny-gpt2}}
    engine: {{cls: "llmaas.engine.fake:FakeEngine", args: {{load_delay_s: 1.0}}}}
    sampling: {{max_tokens: 4}}
    replicas:
      autoscaling: {{min_replicas: 0, max_replicas: 1, downscale_delay_s: 600}}
      queue_timeout_s: 240
    resources: {{num_cpus: 0.1, torch_threads: 1}}
  - id: cold-short
    source: {{demo: tiny-gpt2}}
    engine: {{cls: "llmaas.engine.fake:FakeEngine"}}
    replicas:
      autoscaling: {{min_replicas: 0, max_replicas: 1, downscale_delay_s: 600}}
      queue_timeout_s: 2
    resources: {{num_cpus: 0.1, torch_threads: 1}}
  - id: elastic
    source: {{demo: tiny-gpt2}}
    engine: {{cls: "llmaas.engine.fake:FakeEngine", args: {{step_delay_s: 0.02}}}}
    sampling: {{max_tokens: 48}}
    replicas:
      autoscaling:
        min_replicas: 1
        max_replicas: 3
        target_ongoing_requests: 2
        upscale_delay_s: 1
        downscale_delay_s: 6
        metrics_interval_s: 0.5
        look_back_period_s: 2
    resources: {{num_cpus: 0.1, torch_threads: 1}}
"""


def running(deployment: str) -> int:
    from ray import serve

    app = serve.status().applications.get(APP)
    if app is None or deployment not in app.deployments:
        return 0
    states = app.deployments[deployment].replica_states
    return int(next((n for s, n in states.items() if str(s).endswith("RUNNING")), 0))


@pytest.fixture(scope="module")
def auto_url(base_url: str, model_cache: Path, gpt2_model_path: Path) -> Iterator[str]:
    from ray import serve

    from llmaas.deployments import build_from_catalog
    from llmaas.launch import wait_running

    catalog = Catalog.from_yaml(AUTO_CATALOG.format(cache=model_cache))
    serve.run(build_from_catalog(catalog), name=APP, route_prefix="/auto", blocking=False)
    wait_running(APP, timeout_s=300)
    yield f"{base_url}/auto"
    serve.delete(APP, _blocking=False)


def test_a_model_scaled_to_zero_is_listed_without_waking_and_starts_for_a_request(auto_url: str) -> None:
    assert running("model-cold") == 0
    listed = httpx.get(f"{auto_url}/v1/models", timeout=30).json()
    assert {"cold", "cold-short", "elastic"} <= {m["id"] for m in listed["data"]}
    ready = httpx.get(f"{auto_url}/ready", timeout=30)
    assert ready.status_code == 200, ready.text
    time.sleep(2)
    assert running("model-cold") == 0, "listing models and /ready must not start a replica"
    started = time.monotonic()
    response = httpx.post(f"{auto_url}/v1/completions", json={"model": "cold", "prompt": "Hi"}, timeout=300)
    waited = time.monotonic() - started
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] == 4
    assert running("model-cold") == 1
    assert waited > 1.0, "the request waited for a replica to start"


def test_a_request_to_a_cold_model_gives_up_after_its_queue_timeout(auto_url: str) -> None:
    started = time.monotonic()
    response = httpx.post(
        f"{auto_url}/v1/completions",
        json={"model": "cold-short", "prompt": "Hi", "stream": True},
        timeout=120,
    )
    waited = time.monotonic() - started
    assert response.status_code == 503, response.text
    error = response.json()["error"]
    assert error["code"] == "model_not_ready" and "'cold-short'" in error["message"]
    assert "within 2s" in error["message"]
    assert response.headers["retry-after"] == "5"
    assert 2.0 <= waited < 10.0, waited


def test_a_load_step_makes_replicas_rise_once_and_fall_once(auto_url: str) -> None:
    samples: list[tuple[float, int]] = []
    failures: list[str] = []
    stop_load = threading.Event()
    stop_sampling = threading.Event()

    def sample() -> None:
        while not stop_sampling.is_set():
            samples.append((time.monotonic(), running("model-elastic")))
            time.sleep(0.5)

    def client() -> None:
        with httpx.Client(base_url=auto_url, timeout=120) as http:
            while not stop_load.is_set():
                response = http.post("/v1/completions", json={"model": "elastic", "prompt": "Load"})
                if response.status_code != 200:
                    failures.append(f"{response.status_code} {response.text[:200]}")

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    time.sleep(2)
    clients = [threading.Thread(target=client, daemon=True) for _ in range(8)]
    for thread in clients:
        thread.start()
    deadline = time.monotonic() + 120
    while running("model-elastic") < 3 and time.monotonic() < deadline:
        time.sleep(0.5)
    time.sleep(4)  # the step holds at its peak
    stop_load.set()
    for thread in clients:
        thread.join(timeout=120)
    deadline = time.monotonic() + 120
    while running("model-elastic") > 1 and time.monotonic() < deadline:
        time.sleep(0.5)
    time.sleep(8)  # longer than downscale_delay_s: nothing moves at rest
    stop_sampling.set()
    sampler.join()

    assert failures == []
    counts = [n for _, n in samples]
    changes = [b for a, b in itertools.pairwise(counts) if a != b]
    peak = max(counts)
    assert peak == 3, counts
    assert counts[0] == 1 and counts[-1] == 1, counts
    # one rise and one fall: non-decreasing up to the peak, non-increasing after it
    top = counts.index(peak)
    assert counts[: top + 1] == sorted(counts[: top + 1]), counts
    assert counts[top:] == sorted(counts[top:], reverse=True), counts
    assert len(changes) <= 4, counts  # 1 -> (2 ->) 3 and 3 -> (2 ->) 1 as replicas start and stop
