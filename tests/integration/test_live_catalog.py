"""Live catalog changes under load: ``llmaas deploy``'s path (``llmaas.deploy.apply_catalog``).

A platform named ``live`` (at ``/live``) is deployed declaratively next to the session's app:
its router and tokenizer in one Serve application, each model in its own. While clients keep
both models busy, one model's entry changes (its replicas roll), a model is added and another
resized (nothing restarts), and a model is removed. No request fails, on any model. The models
run the fake engine (``llmaas.engine.fake``): what is tested is how Serve rolls, resizes and
routes, and no weights need loading for that.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from llmaas.config.catalog import Catalog

APP = "live"
FAKE = {"cls": "llmaas.engine.fake:FakeEngine", "args": {"step_delay_s": 0.005}}
PREFIX = "/live"
DB_PATH = Path(tempfile.mkdtemp(prefix="llmaas-live-")) / "gateway.db"
LIVE_CATALOG = """
app_name: live
cache_dir: {cache}
router: {{num_cpus: 0.05}}
tokenizer: {{num_cpus: 0.05}}
gateway: {{database: "sqlite:///{db}", key_refresh_s: 0.5, num_cpus: 0.05}}
models:
  - id: roll
    source: {{demo: tiny-gpt2}}
    engine: {{cls: "llmaas.engine.fake:FakeEngine", args: {{step_delay_s: 0.005}}}}
    sampling: {{max_tokens: {roll_max_tokens}}}
    replicas: {{num_replicas: 2}}
    resources: {{num_cpus: 0.1, torch_threads: 1}}
  - id: steady
    source: {{demo: tiny-gpt2}}
    engine: {{cls: "llmaas.engine.fake:FakeEngine", args: {{step_delay_s: 0.005}}}}
    sampling: {{max_tokens: 6}}
    replicas: {{num_replicas: {steady_replicas}}}
    resources: {{num_cpus: 0.1, torch_threads: 1}}
{extra}"""
EXTRA = """  - id: extra
    source: {demo: tiny-gpt2}
    engine: {cls: "llmaas.engine.fake:FakeEngine", args: {step_delay_s: 0.005}}
    sampling: {max_tokens: 4}
    resources: {num_cpus: 0.1, torch_threads: 1}
"""


def live_catalog(
    cache: Path, *, roll_max_tokens: int = 8, steady_replicas: int = 1, extra: bool = False
) -> str:
    return LIVE_CATALOG.format(
        cache=cache,
        db=DB_PATH,
        roll_max_tokens=roll_max_tokens,
        steady_replicas=steady_replicas,
        extra=EXTRA if extra else "",
    )


def replica_ids() -> dict[str, set[str]]:
    """Running replicas of every deployment of the platform, by deployment name."""
    from llmaas.deploy import _details, is_model_app

    out: dict[str, set[str]] = {}
    for name, app in _details()["applications"].items():
        if name == APP or is_model_app(APP, name):
            for deployment, info in app["deployments"].items():
                out[deployment] = {r["replica_id"] for r in info["replicas"] if r["state"] == "RUNNING"}
    return out


@dataclass
class Load:
    """Clients that keep calling models until stopped, recording every outcome."""

    url: str
    models: list[str]
    headers: dict[str, str]
    results: list[tuple[str, float, str]] = field(default_factory=list)  # (model, time, "ok" or error)
    tokens: list[tuple[str, float, int]] = field(default_factory=list)  # (model, time, completion tokens)
    stop: threading.Event = field(default_factory=threading.Event)

    def _one(self, client: httpx.Client, model: str, stream: bool) -> None:
        body = {"model": model, "prompt": "The platform", "stream": stream}
        if stream:
            with client.stream("POST", "/v1/completions", json=body) as response:
                lines = [line for line in response.iter_lines() if line.startswith("data: ")]
                if response.status_code != 200:
                    raise AssertionError(f"{response.status_code}")
                if lines[-1] != "data: [DONE]" or any('"error"' in line for line in lines):
                    raise AssertionError(f"stream ended badly: {lines[-2:]}")
                return
        response = client.post("/v1/completions", json=body)
        if response.status_code != 200:
            raise AssertionError(f"{response.status_code} {response.text[:200]}")
        self.tokens.append((model, time.monotonic(), response.json()["usage"]["completion_tokens"]))

    def _client(self, model: str, stream: bool) -> None:
        with httpx.Client(base_url=self.url, timeout=120, headers=self.headers) as client:
            while not self.stop.is_set():
                try:
                    self._one(client, model, stream)
                    self.results.append((model, time.monotonic(), "ok"))
                except Exception as exc:
                    self.results.append((model, time.monotonic(), f"{type(exc).__name__}: {exc}"))

    def __enter__(self) -> Load:
        self.threads = [
            threading.Thread(target=self._client, args=(model, stream), daemon=True)
            for model in self.models
            for stream in (False, True)
        ]
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=150)

    def failures(self) -> list[tuple[str, float, str]]:
        return [r for r in self.results if r[2] != "ok"]

    def answered(self, model: str, since: float, until: float) -> int:
        return sum(
            1 for m, t, outcome in self.results if m == model and since <= t <= until and outcome == "ok"
        )


@pytest.fixture(scope="module")
def keys() -> dict[str, dict[str, str]]:
    """Headers of a user key and an admin key, made the way `llmaas keys create` makes them."""
    from llmaas.gateway.keys import KeyRequest, make_key
    from llmaas.gateway.store import open_store

    store = open_store(f"sqlite:///{DB_PATH}")
    out = {}
    for name, admin in (("user", False), ("admin", True)):
        made = make_key(KeyRequest(name=name, admin=admin))
        store.create_key(made.key)
        out[name] = {"Authorization": f"Bearer {made.secret}"}
    store.close()
    return out


@pytest.fixture(scope="module")
def live_url(
    base_url: str, model_cache: Path, gpt2_model_path: Path, keys: dict[str, dict[str, str]]
) -> Iterator[str]:
    from ray import serve

    from llmaas.deploy import apply_catalog, is_model_app
    from llmaas.launch import wait_catalog

    catalog = Catalog.from_yaml(live_catalog(model_cache))
    change = apply_catalog(catalog, route_prefix=PREFIX)
    assert change.added == ["roll", "steady"]
    time.sleep(1)
    wait_catalog(catalog, 300)
    yield f"{base_url}{PREFIX}"
    for name in list(serve.status().applications):
        if name == APP or is_model_app(APP, name):
            serve.delete(name, _blocking=False)


def test_rolling_update_under_load_fails_no_request(
    live_url: str, model_cache: Path, keys: dict[str, dict[str, str]]
) -> None:
    from llmaas.deploy import apply_catalog
    from llmaas.launch import wait_catalog

    before = replica_ids()
    assert len(before["model-roll"]) == 2 and len(before["model-steady"]) == 1
    updated = Catalog.from_yaml(live_catalog(model_cache, roll_max_tokens=5))
    with Load(live_url, ["roll", "steady"], keys["user"]) as load:
        time.sleep(2)
        started = time.monotonic()
        change = apply_catalog(updated, route_prefix=PREFIX)
        time.sleep(1)
        wait_catalog(updated, 300)
        while replica_ids()["model-roll"] & before["model-roll"]:
            time.sleep(0.5)  # the last old replica drains
        finished = time.monotonic()
        time.sleep(2)
    assert change.updated == ["roll"] and not (change.added or change.removed or change.resized)
    assert load.failures() == [], load.failures()[:5]
    # both models answered while the update rolled, and through all of it
    assert load.answered("roll", started, finished) >= 10
    assert load.answered("steady", started, finished) >= 10
    after = replica_ids()
    assert not after["model-roll"] & before["model-roll"], "every replica of the updated model is new"
    assert after["model-steady"] == before["model-steady"], "the other model was not restarted"
    assert after["router"] == before["router"] and after["tokenizer"] == before["tokenizer"]
    # the new entry is in force: requests without max_tokens now stop at 5 tokens
    late = [n for model, t, n in load.tokens if model == "roll" and t > finished]
    assert late and max(late) == 5


def test_add_resize_and_remove_models_live(
    live_url: str,
    model_cache: Path,
    ray_cluster: dict[str, str],
    tmp_path: Path,
    keys: dict[str, dict[str, str]],
) -> None:
    user = keys["user"]
    from llmaas.deploy import apply_catalog
    from llmaas.launch import wait_catalog

    before = replica_ids()
    grown = Catalog.from_yaml(live_catalog(model_cache, roll_max_tokens=5, steady_replicas=2, extra=True))
    assert (
        httpx.post(
            f"{live_url}/v1/completions", json={"model": "extra", "prompt": "x"}, headers=user
        ).status_code
        == 404
    )
    # the operator's way: `llmaas deploy FILE` against the running cluster
    path = tmp_path / "live-grown.yaml"
    path.write_text(grown.model_dump_json())
    dry = subprocess.run(
        [
            sys.executable,
            "-m",
            "llmaas.cli",
            "deploy",
            str(path),
            "--address",
            ray_cluster["address"],
            "--dry-run",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert dry.returncode == 0, dry.stderr
    assert "added extra" in dry.stdout and "resized steady" in dry.stdout
    # NOTE: the test app lives at /live, which the CLI (route "/") would move; deploy it the same way here
    with Load(live_url, ["roll", "steady"], user) as load:
        change = apply_catalog(grown, route_prefix=PREFIX)
        time.sleep(1)
        wait_catalog(grown, 300)
        extra = httpx.post(
            f"{live_url}/v1/completions", json={"model": "extra", "prompt": "x"}, headers=user, timeout=120
        )
        assert extra.status_code == 200, extra.text
        assert extra.json()["usage"]["completion_tokens"] <= 4
        shrunk = Catalog.from_yaml(live_catalog(model_cache, roll_max_tokens=5, steady_replicas=2))
        removed = apply_catalog(shrunk, route_prefix=PREFIX)
        time.sleep(1)
        wait_catalog(shrunk, 300)
    assert change.added == ["extra"] and change.resized == ["steady"] and not change.updated
    assert removed.removed == ["extra"] and not (removed.added or removed.updated or removed.resized)
    assert load.failures() == [], load.failures()[:5]
    after = replica_ids()
    assert before["model-steady"] < after["model-steady"] and len(after["model-steady"]) == 2
    assert after["model-roll"] == before["model-roll"] and after["router"] == before["router"]
    assert "model-extra" not in after
    gone = httpx.post(
        f"{live_url}/v1/completions", json={"model": "extra", "prompt": "x"}, headers=user, timeout=60
    )
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "model_not_found"
    listed = httpx.get(f"{live_url}/v1/models", headers=user, timeout=60).json()
    assert sorted(m["id"] for m in listed["data"]) == ["roll", "steady"]
    assert json.loads(path.read_text())["app_name"] == APP


def test_the_admin_api_changes_one_model_at_a_time(
    live_url: str, model_cache: Path, keys: dict[str, dict[str, str]]
) -> None:
    from llmaas.deploy import deployed_catalog
    from llmaas.launch import wait_catalog

    admin, user = keys["admin"], keys["user"]

    def call(method: str, path: str, body: object = None, headers: dict[str, str] = admin) -> httpx.Response:
        return httpx.request(method, f"{live_url}{path}", json=body, headers=headers, timeout=120)

    def settled() -> None:
        catalog = deployed_catalog(APP)
        assert catalog is not None
        time.sleep(1)
        wait_catalog(catalog, 300)

    assert call("GET", "/admin/catalog", headers=user).status_code == 403
    served = call("GET", "/admin/catalog").json()
    assert [m["id"] for m in served["models"]] == ["roll", "steady"]
    before = replica_ids()

    resized = call("PATCH", "/admin/models/steady", {"replicas": {"num_replicas": 1}})
    assert resized.status_code == 202, resized.text
    assert resized.json()["resized"] == ["steady"] and not resized.json()["updated"]
    added = call(
        "PUT",
        "/admin/models/admin-extra",
        {"source": {"demo": "tiny-gpt2"}, "engine": FAKE, "sampling": {"max_tokens": 3}},
    )
    assert added.status_code == 202 and added.json()["added"] == ["admin-extra"], added.text
    settled()
    answer = call("POST", "/v1/completions", {"model": "admin-extra", "prompt": "x"}, headers=user)
    assert answer.status_code == 200 and answer.json()["usage"]["completion_tokens"] == 3, answer.text
    after = replica_ids()
    assert len(after["model-steady"]) == 1 and after["model-steady"] < before["model-steady"]
    assert after["model-roll"] == before["model-roll"] and after["router"] == before["router"]

    bad = call("PATCH", "/admin/models/roll", {"tensor_parallel_size": 3})
    assert bad.status_code == 400 and "tensor_parallel_size" in bad.json()["error"]["message"]
    missing = call("DELETE", "/admin/models/nope")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
    assert call("GET", "/admin/catalog").json() == deployed_catalog(APP).model_dump(mode="json")  # type: ignore[union-attr]

    removed = call("DELETE", "/admin/models/admin-extra")
    assert removed.status_code == 202 and removed.json()["removed"] == ["admin-extra"]
    settled()
    gone = call("POST", "/v1/completions", {"model": "admin-extra", "prompt": "x"}, headers=user)
    assert gone.status_code == 404
    # `llmaas status` sees the models in their own applications, with their load
    from llmaas.status import collect

    status = collect(APP)
    assert status is not None and status.status == "RUNNING", status
    rows = {row.name: row for row in status.deployments}
    assert set(rows) == {"router", "tokenizer", "gateway", "catalog-admin", "model-roll", "model-steady"}
    assert rows["model-roll"].app == "live-model-roll" and rows["model-roll"].running_replicas == 2
    assert rows["model-roll"].models == ["roll"]  # labelled from the deployed catalog's plan
    assert rows["model-roll"].health is not None and rows["model-roll"].health.healthy
