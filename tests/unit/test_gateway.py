"""The gateway without Serve: keys, limits, the store (SQLite and PostgreSQL) and the ledger."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from llmaas.config.catalog import Catalog
from llmaas.config.gateway import GatewayConfig
from llmaas.errors import AuthError, Forbidden, RateLimited
from llmaas.gateway.client import GatewayClient, bearer_secret, raise_refusal
from llmaas.gateway.keys import ApiKey, KeyRequest, hash_secret, make_key, well_formed
from llmaas.gateway.limits import WINDOW_S, RateLimiter, SlidingWindow
from llmaas.gateway.service import Admission, Gateway
from llmaas.gateway.store import PostgresStore, Store, UsageRow, open_store
from llmaas.openai.errors import to_openai_error


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _row(i: int, key_id: str | None = "key_a", status: int = 200, model: str = "m") -> UsageRow:
    return UsageRow(
        request_id=f"r{i}",
        key_id=key_id,
        model=model,
        route="/v1/chat/completions",
        status=status,
        prompt_tokens=10,
        completion_tokens=5,
        latency_ms=12.5,
        created_at=1000.0 + i,
    )


# ---- keys -----------------------------------------------------------------------------------------
def test_a_new_key_is_stored_as_a_hash_only():
    made = make_key(KeyRequest(name="alice", models=["m"], rpm=5))
    assert well_formed(made.secret)
    assert made.key.key_hash == hash_secret(made.secret)
    assert made.secret not in made.key.model_dump_json()
    assert "key_hash" not in made.key.public()
    assert made.secret.startswith(made.key.prefix)
    assert make_key(KeyRequest(name="alice")).secret != made.secret


def test_key_usability_and_models():
    made = make_key(KeyRequest(name="bob", models=["a"], expires_in_s=10), now=100.0)
    assert made.key.usable(105.0) is None
    assert made.key.usable(110.0) == "expired"
    assert made.key.model_copy(update={"revoked_at": 101.0}).usable(102.0) == "revoked"
    assert made.key.allows("a") and not made.key.allows("b")
    assert make_key(KeyRequest(name="c")).key.allows("anything")


@pytest.mark.parametrize(
    "body",
    [
        {"name": ""},
        {"name": "x", "models": []},
        {"name": "x", "rpm": 0},
        {"name": "x", "tpm": -1},
        {"rpm": 1},
    ],
)
def test_key_requests_are_validated(body):
    with pytest.raises(ValidationError):
        KeyRequest.model_validate(body)


def test_database_url_must_be_sqlite_or_postgres():
    with pytest.raises(ValidationError, match="sqlite:///PATH"):
        GatewayConfig(database="mysql://x")
    catalog = Catalog.model_validate(
        {"models": [{"id": "m", "source": {"demo": "tiny-gpt2"}}], "gateway": {"database": "sqlite:///x.db"}}
    )
    assert catalog.gateway is not None and catalog.gateway.auth


@pytest.mark.parametrize(
    ("header", "code"),
    [(None, "missing_api_key"), ("", "missing_api_key"), ("Basic abc", "invalid_api_key"),
     ("Bearer ", "invalid_api_key"), ("Bearer sk-not-ours", "invalid_api_key")],
)  # fmt: skip
def test_bearer_header_problems_are_401(header, code):
    with pytest.raises(AuthError) as caught:
        bearer_secret(header)
    seen = to_openai_error(caught.value)
    assert seen.status == 401 and seen.code == code
    assert seen.headers["WWW-Authenticate"].startswith("Bearer")


def test_bearer_header_gives_the_secret():
    secret = make_key(KeyRequest(name="x")).secret
    assert bearer_secret(f"Bearer {secret}") == secret
    assert bearer_secret(f"bearer   {secret} ") == secret


def test_gateway_refusals_are_domain_errors_clients_see_as_before():
    raise_refusal(Admission(key_id="k"))  # admitted: nothing raised
    with pytest.raises(AuthError) as caught:
        raise_refusal(Admission(status=401, message="The API key sk-ab... is revoked.", code="key_revoked"))
    seen = to_openai_error(caught.value)
    assert (seen.status, seen.type, seen.code, seen.headers) == (
        401,
        "invalid_request_error",
        "key_revoked",
        {"WWW-Authenticate": 'Bearer realm="llmaas"'},
    )
    with pytest.raises(Forbidden) as caught_403:
        raise_refusal(Admission(status=403, message="not an admin key", code="not_admin"))
    seen = to_openai_error(caught_403.value)
    assert (seen.status, seen.type, seen.code, seen.headers) == (403, "permission_error", "not_admin", {})
    with pytest.raises(RateLimited) as caught_429:
        raise_refusal(
            Admission(status=429, message="slow down", code="rate_limit_exceeded", retry_after_s=12)
        )
    seen = to_openai_error(caught_429.value)
    assert (seen.status, seen.type, seen.message, seen.headers) == (
        429,
        "rate_limit_error",
        "slow down",
        {"Retry-After": "12"},
    )


def test_admin_calls_with_auth_off_are_forbidden():
    client = GatewayClient(object(), auth=False, ledger=True)
    assert asyncio.run(client.authorize(None, "m")) is None
    with pytest.raises(Forbidden) as caught:
        asyncio.run(client.authorize(None, None, admin=True))
    seen = to_openai_error(caught.value)
    assert (seen.status, seen.type, seen.code) == (403, "permission_error", "auth_disabled")


# ---- limits ---------------------------------------------------------------------------------------
def test_requests_per_minute_and_retry_after():
    limiter, t = RateLimiter(), 0.0
    for i in range(3):
        assert limiter.admit("k", rpm=3, tpm=None, now=t + i) is None
    refused = limiter.admit("k", rpm=3, tpm=None, now=t + 10)
    assert refused is not None and refused.what == "requests" and refused.limit == 3
    assert refused.retry_after_s == 50  # the first request leaves the window at t=60
    assert limiter.admit("k", rpm=3, tpm=None, now=t + WINDOW_S + 0.5) is None
    assert limiter.admit("other", rpm=3, tpm=None, now=t + 10) is None  # per key


def test_tokens_per_minute_counts_what_requests_used():
    limiter = RateLimiter()
    assert limiter.admit("k", rpm=None, tpm=100, now=0) is None
    limiter.spend("k", 60, now=1)
    assert limiter.admit("k", rpm=None, tpm=100, now=2) is None
    limiter.spend("k", 50, now=3)
    refused = limiter.admit("k", rpm=None, tpm=100, now=4)
    assert refused is not None and refused.what == "tokens" and refused.retry_after_s == 57
    assert limiter.admit("k", rpm=None, tpm=100, now=61.5) is None  # the first 60 tokens left


def test_sliding_window_prunes():
    window = SlidingWindow()
    window.add(0, 5)
    window.add(30, 5)
    window.prune(61)
    assert window.total == 5 and len(window.events) == 1


# ---- store ----------------------------------------------------------------------------------------
@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'gw.db'}"
    url = request.getfixturevalue("postgres_url")
    store = PostgresStore(url)  # a clean slate per test
    with store._tx() as cur:
        cur.execute("DELETE FROM usage")
        cur.execute("DELETE FROM api_keys")
    store.close()
    return str(url)


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    opened = open_store(store_url)
    yield opened
    opened.close()


def test_store_keys_round_trip(store: Store, store_url: str):
    made = make_key(
        KeyRequest(
            name="alice",
            models=["a", "b"],
            rpm=5,
            tpm=100,
            admin=True,
            max_fine_tuning_jobs=2,
            max_trained_tokens=9,
        )
    )
    store.create_key(made.key)
    again = open_store(store_url)  # another process's view
    assert again.key_by_hash(made.key.key_hash) == made.key
    assert again.key_by_id(made.key.id) == made.key and again.key_by_id("key_nope") is None
    assert (made.key.max_fine_tuning_jobs, made.key.max_trained_tokens) == (2, 9)
    assert [k.id for k in again.all_keys()] == [made.key.id]
    assert again.key_by_hash(hash_secret("nope")) is None
    assert store.revoke_key(made.key.id, at=5.0)
    assert not store.revoke_key(made.key.id, at=6.0)  # already revoked
    revoked = again.key_by_hash(made.key.key_hash)
    assert revoked is not None and revoked.revoked_at == 5.0
    again.close()


def test_store_usage_rows_and_summary(store: Store, store_url: str):
    store.add_usage([_row(i) for i in range(3)] + [_row(3, status=429), _row(4, key_id=None, model="e")])
    again = open_store(store_url)
    rows = again.usage_rows()
    assert [r.request_id for r in rows] == ["r0", "r1", "r2", "r3", "r4"]
    assert rows[0] == _row(0)
    summary = {(s.key_id, s.model): s for s in again.usage()}
    a = summary[("key_a", "m")]
    assert (a.requests, a.errors, a.prompt_tokens, a.completion_tokens) == (4, 1, 40, 20)
    assert summary[(None, "e")].requests == 1
    assert [s.requests for s in again.usage(since=1003.0)] == [1, 1]
    again.close()


def _job_row(i: int, key_id: str | None = "key_a", trained: int = 1000) -> UsageRow:
    return UsageRow(
        request_id=f"ftjob-{i}",
        key_id=key_id,
        model="m",
        route="/v1/fine_tuning/jobs",
        status=200,
        prompt_tokens=0,
        completion_tokens=0,
        latency_ms=600_000.0,
        created_at=1000.0 + i,
        kind="fine_tuning",
        trained_tokens=trained,
        fine_tuned_model=f"ft:m:{key_id}::ftjob-{i}",
    )


def test_fine_tuning_rows_sum_trained_tokens_beside_the_requests(store: Store, store_url: str):
    store.add_usage(
        [_row(0), _row(1, status=500), _job_row(2), _job_row(3, trained=500), _job_row(4, "key_b")]
    )
    again = open_store(store_url)
    assert again.usage_rows()[2] == _job_row(2)
    summary = {(s.key_id, s.model): s for s in again.usage()}
    a = summary[("key_a", "m")]
    assert (a.requests, a.errors, a.mean_latency_ms) == (2, 1, 12.5)  # the jobs are no requests
    assert (a.fine_tuning_jobs, a.trained_tokens, a.prompt_tokens) == (2, 1500, 20)
    b = summary[("key_b", "m")]
    assert (b.requests, b.fine_tuning_jobs, b.trained_tokens, b.mean_latency_ms) == (0, 1, 1000, 0.0)
    again.close()


def test_a_database_from_before_gains_the_new_columns(tmp_path: Path):
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.execute(
        "CREATE TABLE api_keys (id TEXT PRIMARY KEY, name TEXT NOT NULL, key_hash TEXT NOT NULL UNIQUE, "
        "prefix TEXT NOT NULL, admin BOOLEAN NOT NULL, models TEXT, rpm INTEGER, tpm INTEGER, "
        "created_at DOUBLE PRECISION NOT NULL, expires_at DOUBLE PRECISION, revoked_at DOUBLE PRECISION)"
    )
    conn.execute(
        "CREATE TABLE usage (request_id TEXT NOT NULL, key_id TEXT, model TEXT NOT NULL, "
        "route TEXT NOT NULL, status INTEGER NOT NULL, prompt_tokens INTEGER NOT NULL, "
        "completion_tokens INTEGER NOT NULL, "
        "latency_ms DOUBLE PRECISION NOT NULL, created_at DOUBLE PRECISION NOT NULL)"
    )
    conn.execute(
        "INSERT INTO api_keys VALUES ('key_old', 'old', 'h', 'llmaas-abcd', 0, NULL, 5, NULL, 1, NULL, NULL)"
    )
    conn.execute(
        "INSERT INTO usage VALUES ('r0', 'key_old', 'm', '/v1/chat/completions', 200, 10, 5, 12.5, 1000)"
    )
    conn.commit()
    conn.close()
    store = open_store(f"sqlite:///{path}")
    old = store.key_by_id("key_old")
    assert (
        old is not None
        and old.rpm == 5
        and old.max_fine_tuning_jobs is None
        and old.max_trained_tokens is None
    )
    [row] = store.usage_rows()
    assert (row.kind, row.trained_tokens, row.fine_tuned_model, row.cached) == ("request", 0, None, False)
    store.add_usage([_job_row(1, "key_old")])
    [summary] = store.usage()
    assert (summary.requests, summary.fine_tuning_jobs, summary.trained_tokens) == (1, 1, 1000)
    store.close()


def test_the_cli_makes_keys_with_fine_tuning_limits_and_shows_trained_tokens(tmp_path: Path, capsys):
    import argparse

    from llmaas.gateway.admin_cli import add_parsers

    parser = argparse.ArgumentParser()
    add_parsers(parser.add_subparsers())
    url = f"sqlite:///{tmp_path / 'gw.db'}"
    args = parser.parse_args(
        [
            *("keys", "create", "--name", "t", "--max-fine-tuning-jobs", "2", "--max-trained-tokens", "5000"),
            *("--database", url, "--json"),
        ]
    )
    assert args.func(args) == 0
    made = json.loads(capsys.readouterr().out)
    assert (made["max_fine_tuning_jobs"], made["max_trained_tokens"]) == (2, 5000)
    args = parser.parse_args(["keys", "list", "--database", url])
    assert args.func(args) == 0
    assert "ft jobs 2, trained 5000" in capsys.readouterr().out
    store = open_store(url)
    store.add_usage([_job_row(1, made["id"], trained=4321)])
    store.close()
    args = parser.parse_args(["usage", "--database", url])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "trained tok" in out and out.splitlines()[1].split()[-2:] == ["1", "4321"]


def test_sqlite_store_is_in_wal_mode(tmp_path: Path):
    open_store(f"sqlite:///{tmp_path / 'w.db'}").close()
    conn = sqlite3.connect(tmp_path / "w.db")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


# ---- the gateway ----------------------------------------------------------------------------------
def _gateway(store_url: str, clock: Clock, **config: object) -> Gateway:
    return Gateway(GatewayConfig.model_validate({"database": store_url, **config}), clock=clock)


def test_admission_answers(store_url: str):
    async def main() -> None:
        clock = Clock()
        gw = _gateway(store_url, clock)
        await gw.start()
        user = await gw.create_key(KeyRequest(name="u", models=["a"], rpm=2))
        admin = await gw.create_key(KeyRequest(name="ops", admin=True))
        h = user.key.key_hash
        assert (await gw.admit(hash_secret("llmaas-unknown"), "a")).status == 401
        assert (await gw.admit(h, "b")).status == 403
        assert (await gw.admit(h, "a")).key_id == user.key.id
        assert (await gw.admit(h, "a")).ok
        limited = await gw.admit(h, "a")
        assert (
            limited.status == 429
            and limited.retry_after_s == 60
            and "2 requests per minute" in limited.message
        )
        assert (await gw.admit(h, None, admin=True)).status == 403
        assert (await gw.admit(admin.key.key_hash, None, admin=True)).key_id == admin.key.id
        assert await gw.revoke_key(user.key.id)
        revoked = await gw.admit(h, "a")
        assert revoked.status == 401 and revoked.code == "key_revoked"
        await gw.stop()

    asyncio.run(main())


def test_keys_made_or_revoked_elsewhere_take_effect(store_url: str):
    async def main() -> None:
        clock = Clock()
        gw = _gateway(store_url, clock, key_refresh_s=0.2)
        await gw.start()
        cli = open_store(store_url)  # the CLI writes the database directly
        made = make_key(KeyRequest(name="late", expires_in_s=30), now=clock.now)
        cli.create_key(made.key)
        assert (await gw.admit(made.key.key_hash, "a")).ok  # at once: a miss looks in the store
        cli.revoke_key(made.key.id, at=clock.now)
        await asyncio.sleep(0.3)
        assert (await gw.admit(made.key.key_hash, "a")).code == "key_revoked"
        clock.now += 31
        other = make_key(KeyRequest(name="short", expires_in_s=1), now=clock.now - 2)
        cli.create_key(other.key)
        assert (await gw.admit(other.key.key_hash, "a")).code == "key_expired"
        cli.close()
        await gw.stop()

    asyncio.run(main())


@pytest.mark.parametrize("interval_ms", [0, 5])
def test_ledger_commits_concurrent_rows_in_groups(store_url: str, interval_ms: float):
    async def main() -> None:
        gw = _gateway(store_url, Clock(), commit_interval_ms=interval_ms)
        await gw.start()
        await asyncio.gather(*(gw.record(_row(i)) for i in range(200)))
        # every awaited row is committed: a fresh connection sees them all
        reader = open_store(store_url)
        assert len(reader.usage_rows()) == 200
        reader.close()
        assert gw.rows_committed == 200
        assert gw.commits < 20, f"{gw.commits} commits for 200 concurrent rows: no grouping"
        await gw.stop()

    asyncio.run(main())


def test_ledger_rows_spend_the_keys_tokens(store_url: str):
    async def main() -> None:
        clock = Clock()
        gw = _gateway(store_url, clock)
        await gw.start()
        made = await gw.create_key(KeyRequest(name="t", tpm=20))
        assert (await gw.admit(made.key.key_hash, "m")).ok
        await gw.record(_row(0, key_id=made.key.id))  # 15 tokens
        assert (await gw.admit(made.key.key_hash, "m")).ok
        await gw.record(_row(1, key_id=made.key.id))  # 30 tokens: over 20
        refused = await gw.admit(made.key.key_hash, "m")
        assert refused.status == 429 and "20 tokens per minute" in refused.message
        await gw.stop()

    asyncio.run(main())


class _BrokenStore:
    def all_keys(self) -> list[ApiKey]:
        return []

    def add_usage(self, rows: object) -> None:
        raise OSError("disk full")


def test_a_failed_commit_fails_its_callers_and_the_writer_goes_on():
    async def main() -> None:
        gw = Gateway(GatewayConfig(), store=_BrokenStore())  # type: ignore[arg-type]
        await gw.start()
        with pytest.raises(RuntimeError, match="disk full"):
            await gw.record(_row(0))
        assert gw.healthy() is None
        with pytest.raises(RuntimeError, match="disk full"):
            await gw.record(_row(1))

    asyncio.run(main())
