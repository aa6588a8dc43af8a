"""The gateway's durable store: API keys and the usage ledger, in SQLite or PostgreSQL.

Both speak the same few statements (written with ``?`` placeholders; PostgreSQL's driver gets
``%s``). Methods are blocking: the gateway runs them in a thread, the CLI calls them directly.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import BaseModel

from llmaas.gateway.keys import ApiKey

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS api_keys (
        id TEXT PRIMARY KEY, name TEXT NOT NULL, key_hash TEXT NOT NULL UNIQUE, prefix TEXT NOT NULL,
        admin BOOLEAN NOT NULL, models TEXT, rpm INTEGER, tpm INTEGER,
        created_at DOUBLE PRECISION NOT NULL, expires_at DOUBLE PRECISION, revoked_at DOUBLE PRECISION)""",
    """CREATE TABLE IF NOT EXISTS usage (
        request_id TEXT NOT NULL, key_id TEXT, model TEXT NOT NULL, route TEXT NOT NULL,
        status INTEGER NOT NULL, prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL,
        latency_ms DOUBLE PRECISION NOT NULL, created_at DOUBLE PRECISION NOT NULL,
        cached BOOLEAN NOT NULL DEFAULT FALSE)""",
    "CREATE INDEX IF NOT EXISTS usage_by_time ON usage (created_at)",
)
_KEY_COLUMNS = (
    "id, name, key_hash, prefix, admin, models, rpm, tpm, created_at, expires_at, revoked_at, "
    "max_fine_tuning_jobs, max_trained_tokens"
)
_USAGE_COLUMNS = (
    "request_id, key_id, model, route, status, prompt_tokens, completion_tokens, latency_ms, created_at, "
    "cached, kind, trained_tokens, fine_tuned_model"
)
#: Columns added after the first release, with their definitions: a database made before gets them.
_ADDED_COLUMNS = {
    "usage": {
        "cached": "BOOLEAN NOT NULL DEFAULT FALSE",
        "kind": "TEXT NOT NULL DEFAULT 'request'",
        "trained_tokens": "INTEGER NOT NULL DEFAULT 0",
        "fine_tuned_model": "TEXT",
    },
    "api_keys": {"max_fine_tuning_jobs": "INTEGER", "max_trained_tokens": "INTEGER"},
}
#: A ledger row's kind: a request to a model, or a fine-tuning job that succeeded.
UsageKind = Literal["request", "fine_tuning"]


class UsageRow(BaseModel):
    """One request in the ledger, or one succeeded fine-tuning job (``kind="fine_tuning"``: its
    ``request_id`` is the job id, ``model`` the base model, and ``trained_tokens`` what it trained).
    NOTE: never the prompt or the completion text."""

    request_id: str
    key_id: str | None
    model: str
    route: str
    status: int
    prompt_tokens: int
    completion_tokens: int
    latency_ms: float
    created_at: float
    cached: bool = False  # answered from the router's response cache (no model ran)
    kind: UsageKind = "request"
    trained_tokens: int = 0
    fine_tuned_model: str | None = None  # a fine-tuning row: the model the job made


class UsageSummary(BaseModel):
    """Usage of one key on one model over a time range."""

    key_id: str | None
    model: str
    requests: int
    errors: int
    prompt_tokens: int
    completion_tokens: int
    mean_latency_ms: float
    cached: int = 0  # of the requests, answered from the response cache
    fine_tuning_jobs: int = 0  # succeeded fine-tuning jobs on this base model (not counted in requests)
    trained_tokens: int = 0  # what those jobs trained on


class Store(Protocol):
    def create_key(self, key: ApiKey) -> None: ...
    def all_keys(self) -> list[ApiKey]: ...
    def key_by_hash(self, key_hash: str) -> ApiKey | None: ...
    def key_by_id(self, key_id: str) -> ApiKey | None: ...
    def revoke_key(self, key_id: str, at: float) -> bool: ...
    def add_usage(self, rows: Sequence[UsageRow]) -> None: ...
    def usage(self, since: float = 0.0, until: float | None = None) -> list[UsageSummary]: ...
    def usage_rows(self, since: float = 0.0) -> list[UsageRow]: ...
    def transaction(self) -> AbstractContextManager[Any]: ...
    def sql(self, statement: str) -> str: ...
    def close(self) -> None: ...


class _SQLStore:
    """The statements, over a DB-API connection made by a subclass."""

    placeholder = "?"

    def __init__(self) -> None:
        self._lock = threading.Lock()  # one connection, used from one thread at a time
        with self._tx() as cur:
            for statement in _SCHEMA:
                cur.execute(statement)
            for table, columns in _ADDED_COLUMNS.items():
                cur.execute(f"SELECT * FROM {table} WHERE 1 = 0")
                present = {d[0] for d in cur.description}
                for name, definition in columns.items():
                    if name not in present:
                        cur.execute(f"ALTER TABLE {table} ADD COLUMN {name} {definition}")

    @contextmanager
    def _tx(self) -> Iterator[Any]:
        raise NotImplementedError

    def _sql(self, statement: str) -> str:
        return statement.replace("?", self.placeholder)

    # NOTE: other stores on the same database (fine-tuning's files and jobs) run their statements
    # through these two, so the gateway's locking and dialect rules hold for them too.
    def transaction(self) -> AbstractContextManager[Any]:
        """A cursor in one transaction (committed when the block ends, rolled back on an error)."""
        return self._tx()

    def sql(self, statement: str) -> str:
        """``statement`` (written with ``?`` placeholders) in this database's dialect."""
        return self._sql(statement)

    def _fetch(self, statement: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._tx() as cur:
            cur.execute(self._sql(statement), tuple(params))
            return list(cur.fetchall())

    # ---- keys ----------------------------------------------------------------------------------
    def create_key(self, key: ApiKey) -> None:
        with self._tx() as cur:
            cur.execute(
                self._sql(f"INSERT INTO api_keys ({_KEY_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)"),
                (
                    key.id, key.name, key.key_hash, key.prefix, key.admin,
                    None if key.models is None else json.dumps(key.models),
                    key.rpm, key.tpm, key.created_at, key.expires_at, key.revoked_at,
                    key.max_fine_tuning_jobs, key.max_trained_tokens,
                ),
            )  # fmt: skip

    @staticmethod
    def _key(row: tuple[Any, ...]) -> ApiKey:
        kid, name, key_hash, prefix, admin, models, rpm, tpm, created, expires, revoked, jobs, trained = row
        return ApiKey(
            id=kid,
            name=name,
            key_hash=key_hash,
            prefix=prefix,
            admin=bool(admin),
            models=None if models is None else json.loads(models),
            rpm=rpm,
            tpm=tpm,
            created_at=created,
            expires_at=expires,
            revoked_at=revoked,
            max_fine_tuning_jobs=jobs,
            max_trained_tokens=trained,
        )

    def all_keys(self) -> list[ApiKey]:
        return [self._key(r) for r in self._fetch(f"SELECT {_KEY_COLUMNS} FROM api_keys ORDER BY created_at")]

    def key_by_hash(self, key_hash: str) -> ApiKey | None:
        rows = self._fetch(f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE key_hash = ?", (key_hash,))
        return self._key(rows[0]) if rows else None

    def key_by_id(self, key_id: str) -> ApiKey | None:
        rows = self._fetch(f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE id = ?", (key_id,))
        return self._key(rows[0]) if rows else None

    def revoke_key(self, key_id: str, at: float) -> bool:
        with self._tx() as cur:
            cur.execute(
                self._sql("UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL"),
                (at, key_id),
            )
            return bool(cur.rowcount)

    # ---- usage ---------------------------------------------------------------------------------
    def add_usage(self, rows: Sequence[UsageRow]) -> None:
        """Insert ``rows`` in one transaction: all are durable when this returns, or none."""
        if not rows:
            return
        with self._tx() as cur:
            cur.executemany(
                self._sql(f"INSERT INTO usage ({_USAGE_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)"),
                [
                    (
                        r.request_id, r.key_id, r.model, r.route, r.status, r.prompt_tokens,
                        r.completion_tokens, r.latency_ms, r.created_at, r.cached, r.kind,
                        r.trained_tokens, r.fine_tuned_model,
                    )
                    for r in rows
                ],
            )  # fmt: skip

    def usage(self, since: float = 0.0, until: float | None = None) -> list[UsageSummary]:
        """Per key and model; requests and their latency count ``request`` rows only, and a base
        model's succeeded fine-tuning jobs and their trained tokens go beside them."""
        request = "kind = 'request'"
        rows = self._fetch(
            f"SELECT key_id, model, SUM(CASE WHEN {request} THEN 1 ELSE 0 END), "
            f"SUM(CASE WHEN {request} AND status >= 400 THEN 1 ELSE 0 END), "
            f"SUM(prompt_tokens), SUM(completion_tokens), AVG(CASE WHEN {request} THEN latency_ms END), "
            f"SUM(CASE WHEN cached THEN 1 ELSE 0 END), SUM(CASE WHEN {request} THEN 0 ELSE 1 END), "
            "SUM(trained_tokens) FROM usage "
            "WHERE created_at >= ? AND created_at < ? GROUP BY key_id, model ORDER BY key_id, model",
            (since, until if until is not None else float("inf")),
        )
        return [
            UsageSummary(
                key_id=k,
                model=m,
                requests=int(n),
                errors=int(e),
                prompt_tokens=int(p),
                completion_tokens=int(c),
                mean_latency_ms=round(float(lat or 0.0), 1),
                cached=int(hits or 0),
                fine_tuning_jobs=int(jobs or 0),
                trained_tokens=int(trained or 0),
            )
            for k, m, n, e, p, c, lat, hits, jobs, trained in rows
        ]

    def usage_rows(self, since: float = 0.0) -> list[UsageRow]:
        rows = self._fetch(
            f"SELECT {_USAGE_COLUMNS} FROM usage WHERE created_at >= ? ORDER BY created_at", (since,)
        )
        fields = list(UsageRow.model_fields)
        cached = fields.index("cached")
        return [
            UsageRow(**dict(zip(fields, (*r[:cached], bool(r[cached]), *r[cached + 1 :]), strict=True)))
            for r in rows
        ]


class SQLiteStore(_SQLStore):
    """A file database in WAL mode: readers never block the ledger's writer."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # NOTE: check_same_thread=False with our own lock: the gateway's writer runs in a worker thread.
        self._conn = sqlite3.connect(self.path, timeout=30, check_same_thread=False, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        # NOTE: in WAL mode NORMAL makes a commit durable against a crash or kill of any process
        # (the router's and the gateway's included) without an fsync per commit; a power loss may
        # drop the last commits. PostgreSQL (with its own fsync) is the choice where that matters.
        self._conn.execute("PRAGMA synchronous=NORMAL")
        super().__init__()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Cursor]:
        with self._lock:
            cur = self._conn.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                yield cur
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            cur.execute("COMMIT")

    def close(self) -> None:
        self._conn.close()


class PostgresStore(_SQLStore):
    placeholder = "%s"

    def __init__(self, url: str) -> None:
        try:
            import psycopg
        except ImportError as exc:
            raise RuntimeError(
                "a postgresql:// database needs psycopg: pip install 'llmaas[postgres]'"
            ) from exc
        self._conn = psycopg.connect(url, autocommit=False)
        super().__init__()

    @contextmanager
    def _tx(self) -> Iterator[Any]:
        with self._lock, self._conn.transaction(), self._conn.cursor() as cur:
            yield cur

    def close(self) -> None:
        self._conn.close()


def open_store(url: str) -> Store:
    """``sqlite:///PATH`` (``~`` allowed) or ``postgresql://...``."""
    if url.startswith("sqlite:///"):
        return SQLiteStore(url.removeprefix("sqlite:///"))
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresStore(url)
    raise ValueError(f"unknown database URL {url!r}: use sqlite:///PATH or postgresql://...")
