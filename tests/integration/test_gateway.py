"""The gateway end to end: API keys, limits shared by two router replicas, the usage ledger.

A second Serve application (``gw`` at ``/gw``) runs next to the session's, with a gateway whose
SQLite database lives in a temporary directory; keys are made the operator's way (the CLI's
store) and through the admin routes.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from llmaas.config.catalog import Catalog
from llmaas.gateway.keys import KeyRequest, make_key
from llmaas.gateway.store import open_store

APP = "gw"
GATEWAY_CATALOG = """
app_name: {app}
cache_dir: {cache}
router: {{num_cpus: 0.1, num_replicas: 2}}
tokenizer: {{num_cpus: 0.05}}
gateway: {{database: "sqlite:///{db}", key_refresh_s: 0.5}}
models:
  - id: gw-llama
    source: {{demo: tiny-llama-chat}}
    max_context_length: 128
    batching: {{max_batch_size: 8, batch_wait_ms: 2}}
    sampling: {{temperature: 0.0, max_tokens: 8}}
    resources: {{num_cpus: 0.25, torch_threads: 1}}
  - id: gw-gpt2
    source: {{demo: tiny-gpt2}}
    sampling: {{max_tokens: 8}}
    resources: {{num_cpus: 0.1, torch_threads: 1}}
"""


@pytest.fixture(scope="module")
def gateway_db(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('gateway') / 'gateway.db'}"


@pytest.fixture(scope="module")
def gw_url(base_url: str, model_cache: Path, gateway_db: str) -> Iterator[str]:
    from ray import serve

    from llmaas.deployments import build_from_catalog

    catalog = Catalog.from_yaml(
        GATEWAY_CATALOG.format(app=APP, cache=model_cache, db=gateway_db.removeprefix("sqlite:///"))
    )
    serve.run(build_from_catalog(catalog), name=APP, route_prefix="/gw", blocking=False)
    url = f"{base_url}/gw"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        status = serve.status().applications.get(APP)
        if status is not None and str(status.status).endswith("RUNNING"):
            break
        if status is not None and str(status.status).endswith("DEPLOY_FAILED"):
            pytest.fail(f"the gateway app failed to deploy: {status.message}")
        time.sleep(1)
    else:
        pytest.fail("the gateway app was not running after 300s")
    yield url
    serve.delete(APP)


def _key(db: str, **request: Any) -> tuple[str, str]:
    """A key made the way ``llmaas keys create`` makes it: (id, secret)."""
    made = make_key(KeyRequest(**request))
    store = open_store(db)
    store.create_key(made.key)
    store.close()
    return made.key.id, made.secret


def _chat(url: str, secret: str | None, model: str = "gw-llama", **extra: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {secret}"} if secret else {}
    headers.update(extra.pop("headers", {}))
    body = {"model": model, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4, **extra}
    return httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=60)


def _error(response: httpx.Response) -> dict[str, Any]:
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    return dict(error)


def test_requests_need_a_valid_key(gw_url: str, gateway_db: str) -> None:
    missing = _chat(gw_url, None)
    assert missing.status_code == 401 and _error(missing)["code"] == "missing_api_key"
    assert missing.headers["www-authenticate"].startswith("Bearer")
    wrong = _chat(gw_url, "llmaas-" + "x" * 43)
    assert wrong.status_code == 401 and _error(wrong)["code"] == "invalid_api_key"
    assert httpx.get(f"{gw_url}/v1/models", timeout=30).status_code == 401
    # the key is checked before the body: no key and a bad body is still a 401
    assert httpx.post(f"{gw_url}/v1/chat/completions", content=b"{", timeout=30).status_code == 401

    _, secret = _key(gateway_db, name="app", models=["gw-llama"])
    client = openai.OpenAI(base_url=f"{gw_url}/v1", api_key=secret, max_retries=0, timeout=60)
    reply = client.chat.completions.create(
        model="gw-llama", messages=[{"role": "user", "content": "Hello"}], max_tokens=4
    )
    assert reply.choices[0].message.content and reply.usage and reply.usage.completion_tokens > 0
    with pytest.raises(openai.PermissionDeniedError) as denied:
        client.completions.create(model="gw-gpt2", prompt="Hello", max_tokens=2)
    assert "gw-gpt2" in str(denied.value) and "gw-llama" in str(denied.value)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{gw_url}/v1", api_key="nope", max_retries=0).models.list()


def test_admin_routes_make_list_and_revoke_keys(gw_url: str, gateway_db: str) -> None:
    _, admin = _key(gateway_db, name="ops", admin=True)
    _, user = _key(gateway_db, name="user")
    as_admin = {"Authorization": f"Bearer {admin}"}
    refused = httpx.get(f"{gw_url}/admin/keys", headers={"Authorization": f"Bearer {user}"}, timeout=30)
    assert refused.status_code == 403 and _error(refused)["code"] == "not_admin"
    assert httpx.get(f"{gw_url}/admin/keys", timeout=30).status_code == 401

    created = httpx.post(
        f"{gw_url}/admin/keys", json={"name": "team-a", "models": ["gw-gpt2"], "rpm": 100}, headers=as_admin
    )
    assert created.status_code == 201, created.text
    made = created.json()
    assert made["secret"].startswith("llmaas-") and "key_hash" not in made
    bad = httpx.post(f"{gw_url}/admin/keys", json={"name": "x", "rpm": 0}, headers=as_admin, timeout=30)
    assert bad.status_code == 400 and _error(bad)["param"] == "rpm"

    listed = httpx.get(f"{gw_url}/admin/keys", headers=as_admin, timeout=30).json()["data"]
    assert made["id"] in {k["id"] for k in listed}
    assert not any("key_hash" in k or "secret" in k for k in listed)
    assert _chat(gw_url, made["secret"], model="gw-gpt2").status_code == 200
    usage = httpx.get(f"{gw_url}/admin/usage", params={"since": time.time() - 600}, headers=as_admin)
    assert usage.status_code == 200, usage.text
    [mine] = [row for row in usage.json()["data"] if row["key_id"] == made["id"]]
    assert (mine["model"], mine["requests"], mine["errors"]) == ("gw-gpt2", 1, 0)
    assert mine["completion_tokens"] > 0

    revoked = httpx.delete(f"{gw_url}/admin/keys/{made['id']}", headers=as_admin, timeout=30)
    assert revoked.status_code == 200
    after = _chat(gw_url, made["secret"], model="gw-gpt2")
    assert after.status_code == 401 and _error(after)["code"] == "key_revoked"
    again = httpx.delete(f"{gw_url}/admin/keys/{made['id']}", headers=as_admin, timeout=30)
    assert again.status_code == 404
    # this app was deployed with serve.run, not llmaas deploy: its catalog cannot change live
    fixed = httpx.patch(
        f"{gw_url}/admin/models/gw-gpt2", json={"replicas": {"num_replicas": 2}}, headers=as_admin, timeout=60
    )
    assert fixed.status_code == 409 and _error(fixed)["code"] == "not_declarative", fixed.text
    assert "llmaas deploy" in _error(fixed)["message"]


def test_requests_per_minute_hold_across_router_replicas(gw_url: str, gateway_db: str) -> None:
    from ray import serve
    from ray.serve._private.common import ReplicaState

    routers = serve.status().applications[APP].deployments["router"].replica_states
    assert routers.get(ReplicaState.RUNNING) == 2, routers  # two routers share the key's window
    _, secret = _key(gateway_db, name="limited", rpm=6)

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=60) as client:
            body = {"model": "gw-llama", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
            headers = {"Authorization": f"Bearer {secret}"}
            return await asyncio.gather(
                *(client.post(f"{gw_url}/v1/chat/completions", json=body, headers=headers) for _ in range(14))
            )

    responses = asyncio.run(burst())
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] * 6 + [429] * 8, statuses
    limited = next(r for r in responses if r.status_code == 429)
    assert _error(limited)["type"] == "rate_limit_error"
    assert 1 <= int(limited.headers["retry-after"]) <= 60
    assert "6 requests per minute" in _error(limited)["message"]


def test_every_answered_request_has_its_ledger_row(gw_url: str, gateway_db: str) -> None:
    key_id, secret = _key(gateway_db, name="metered")
    ids = [f"ledger-{uuid.uuid4().hex}" for _ in range(4)]
    usages = []
    for i, rid in enumerate(ids[:3]):
        response = _chat(gw_url, secret, headers={"X-Request-Id": rid}, max_tokens=3 + i)
        assert response.status_code == 200
        usages.append(response.json()["usage"])
    bad = _chat(gw_url, secret, headers={"X-Request-Id": ids[3]}, temperature=9)
    assert bad.status_code == 400
    # no waiting: a row is committed before its response is sent
    store = open_store(gateway_db)
    rows = {r.request_id: r for r in store.usage_rows() if r.request_id in ids}
    summary = [s for s in store.usage() if s.key_id == key_id]
    store.close()
    assert set(rows) == set(ids)
    for rid, usage in zip(ids, usages, strict=False):
        row = rows[rid]
        assert (row.key_id, row.model, row.status) == (key_id, "gw-llama", 200)
        assert (row.prompt_tokens, row.completion_tokens) == (
            usage["prompt_tokens"],
            usage["completion_tokens"],
        )
        assert row.latency_ms > 0
    assert rows[ids[3]].status == 400
    assert len(summary) == 1 and summary[0].requests == 4 and summary[0].errors == 1
    assert summary[0].completion_tokens == sum(u["completion_tokens"] for u in usages)


def test_usage_command_reports_per_key_and_model(gw_url: str, gateway_db: str) -> None:
    import subprocess
    import sys

    key_id, secret = _key(gateway_db, name="reporter")
    assert _chat(gw_url, secret).status_code == 200
    done = subprocess.run(
        [sys.executable, "-m", "llmaas.cli", "usage", "--database", gateway_db, "--since", "1h"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    line = next(line for line in done.stdout.splitlines() if line.startswith(key_id))
    assert "reporter" in line and "gw-llama" in line


def test_no_acknowledged_row_is_lost_when_a_router_is_killed(gw_url: str, gateway_db: str) -> None:
    """SIGKILL a router replica while requests run: every request whose caller saw it end
    (a 200 with its body, or a stream to its [DONE]) has its row in the ledger."""
    import ray
    from ray.util.state import list_actors

    key_id, secret = _key(gateway_db, name="crash")
    headers = {"Authorization": f"Bearer {secret}"}
    acknowledged: list[str] = []
    failed = 0

    async def one(client: httpx.AsyncClient, i: int) -> None:
        nonlocal failed
        rid = f"crash-{i}-{uuid.uuid4().hex}"
        body = {
            "model": "gw-llama",
            "messages": [{"role": "user", "content": "Tell me a joke."}],
            "max_tokens": 12,
            "stream": i % 2 == 0,
        }
        try:
            response = await client.post(
                f"{gw_url}/v1/chat/completions", json=body, headers={**headers, "X-Request-Id": rid}
            )
            text = response.text
        except httpx.HTTPError:
            failed += 1
            return
        if response.status_code == 200 and (not body["stream"] or text.rstrip().endswith("data: [DONE]")):
            acknowledged.append(rid)
        else:
            failed += 1

    async def load() -> None:
        async with httpx.AsyncClient(timeout=60) as client:
            for w in range(6):
                wave = asyncio.gather(*(one(client, w * 8 + i) for i in range(8)))
                if w == 2:  # while this wave runs
                    await asyncio.sleep(0.2)
                    victim = next(
                        a
                        for a in list_actors(filters=[("state", "=", "ALIVE")], detail=True)
                        if f"{APP}#router#" in (a.name or "")
                    )
                    assert victim.pid is not None
                    os.kill(int(victim.pid), signal.SIGKILL)
                await wave

    asyncio.run(load())
    assert ray.is_initialized()
    assert len(acknowledged) >= 16, f"only {len(acknowledged)} requests ended ({failed} failed)"
    store = open_store(gateway_db)
    recorded = {r.request_id for r in store.usage_rows() if r.key_id == key_id}
    store.close()
    lost = [rid for rid in acknowledged if rid not in recorded]
    print(f"FIGURES router SIGKILL: {len(acknowledged)} answered, {failed} failed, {len(lost)} rows lost")
    assert lost == [], f"{len(lost)} of {len(acknowledged)} acknowledged requests have no ledger row"
