"""The gateway: who may call what (API keys, limits) and what each request used (the ledger).

Plain async code over a ``Store``; one instance runs in the gateway deployment (one replica,
so limits are shared by every router replica), and unit tests drive it directly.

The ledger commits rows in groups: ``record`` returns once its row is committed, and rows that
arrive while a commit runs go into the next one, so a busy router pays one commit per group, not
one per request. The router waits for ``record`` before it sends a response's last byte; so a
router killed at any moment loses no row of a request its caller saw end.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from pydantic import BaseModel

from llmaas.config.gateway import GatewayConfig
from llmaas.gateway.keys import ApiKey, KeyRequest, NewKey, make_key
from llmaas.gateway.limits import RateLimiter
from llmaas.gateway.store import Store, UsageRow, UsageSummary, open_store

logger = logging.getLogger("ray.serve")


class Admission(BaseModel):
    """The gateway's answer to ``admit``: a key id, or an error for the router to send."""

    key_id: str | None = None
    admin: bool = False  # the key is an admin key (it sees every tenant's files, jobs and models)
    status: int = 200
    message: str = ""
    code: str | None = None
    retry_after_s: int | None = None

    @property
    def ok(self) -> bool:
        return self.status == 200


def _refuse(status: int, message: str, code: str, retry_after_s: int | None = None) -> Admission:
    return Admission(status=status, message=message, code=code, retry_after_s=retry_after_s)


class Gateway:
    def __init__(
        self,
        config: GatewayConfig,
        *,
        store: Store | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.clock = clock
        self._store = store
        self.limiter = RateLimiter()
        self._keys: dict[str, ApiKey] = {}  # by hash
        self._unknown: set[str] = set()  # hashes looked up and not found since the last refresh
        self._loaded_at = float("-inf")
        self._pending: list[tuple[UsageRow, asyncio.Future[None]]] = []
        self._wake: asyncio.Event | None = None
        self._writer: asyncio.Task[None] | None = None
        self.rows_committed = 0
        self.commits = 0

    @property
    def store(self) -> Store:
        if self._store is None:
            raise RuntimeError("the gateway has not started: call start() first")
        return self._store

    async def start(self) -> None:
        if self._store is None:
            self._store = await asyncio.to_thread(open_store, self.config.database)
        await self._refresh(force=True)
        self._wake = asyncio.Event()
        self._writer = asyncio.create_task(self._write_forever())

    async def stop(self) -> None:
        """Commit what is pending, then stop the writer."""
        if self._writer is not None:
            await self._flush()
            self._writer.cancel()
            self._writer = None

    def healthy(self) -> str | None:
        """None when healthy, else why not (Serve's health check raises on it)."""
        if self._writer is not None and self._writer.done():
            return f"the ledger writer stopped: {self._writer.exception()!r}"
        return None

    # ---- keys ----------------------------------------------------------------------------------
    async def _refresh(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._loaded_at < self.config.key_refresh_s:
            return
        self._loaded_at = now
        keys = await asyncio.to_thread(self.store.all_keys)
        self._keys = {k.key_hash: k for k in keys}
        self._unknown.clear()

    async def _key(self, key_hash: str) -> ApiKey | None:
        await self._refresh()
        key = self._keys.get(key_hash)
        if key is None and key_hash not in self._unknown:
            # NOTE: a key made since the last refresh (e.g. by the CLI) works at once.
            key = await asyncio.to_thread(self.store.key_by_hash, key_hash)
            if key is None:
                self._unknown.add(key_hash)
            else:
                self._keys[key_hash] = key
        return key

    async def admit(self, key_hash: str, model: str | None, *, admin: bool = False) -> Admission:
        """May the holder of ``key_hash`` call ``model`` now (or the admin routes)? Counts the request."""
        key = await self._key(key_hash)
        if key is None:
            return _refuse(401, "Incorrect API key provided. Ask your operator for a key.", "invalid_api_key")
        why = key.usable(self.clock())
        if why is not None:
            return _refuse(401, f"The API key {key.prefix}... is {why}. Ask for a new one.", f"key_{why}")
        if admin:
            if not key.admin:
                return _refuse(403, f"The API key {key.prefix}... is not an admin key.", "not_admin")
            return Admission(key_id=key.id)
        if model is not None and not key.allows(model):
            allowed = ", ".join(key.models or [])
            return _refuse(
                403,
                f"The API key {key.prefix}... may not use the model '{model}'. It may use: {allowed}.",
                "model_not_allowed",
            )
        refusal = self.limiter.admit(key.id, key.rpm, key.tpm, self.clock())
        if refusal is not None:
            return _refuse(
                429,
                f"Rate limit reached for key {key.prefix}...: {refusal.limit} {refusal.what} per minute. "
                f"Try again in {refusal.retry_after_s}s.",
                "rate_limit_exceeded",
                refusal.retry_after_s,
            )
        return Admission(key_id=key.id, admin=key.admin)

    async def create_key(self, request: KeyRequest) -> NewKey:
        made = make_key(request, self.clock())
        await asyncio.to_thread(self.store.create_key, made.key)
        self._keys[made.key.key_hash] = made.key
        return made

    async def list_keys(self) -> list[ApiKey]:
        return await asyncio.to_thread(self.store.all_keys)

    async def revoke_key(self, key_id: str) -> bool:
        revoked = await asyncio.to_thread(self.store.revoke_key, key_id, self.clock())
        await self._refresh(force=True)
        return revoked

    # ---- ledger --------------------------------------------------------------------------------
    async def record(self, row: UsageRow) -> None:
        """Count the row's tokens against its key; return once the row is committed."""
        if row.key_id is not None:
            self.limiter.spend(row.key_id, row.prompt_tokens + row.completion_tokens, self.clock())
        if not self.config.ledger:
            return
        if self._wake is None:
            raise RuntimeError("the gateway has not started: call start() first")
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((row, done))
        self._wake.set()
        await asyncio.shield(done)

    async def usage(self, since: float = 0.0) -> list[UsageSummary]:
        return await asyncio.to_thread(self.store.usage, since)

    async def _write_forever(self) -> None:
        assert self._wake is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self.config.commit_interval_ms:
                await asyncio.sleep(self.config.commit_interval_ms / 1000)
            await self._flush()

    async def _flush(self) -> None:
        batch, self._pending = self._pending, []
        if not batch:
            return
        try:
            await asyncio.to_thread(self.store.add_usage, [row for row, _ in batch])
        except Exception as exc:
            # NOTE: the rows go to the log, so an operator can replay them; callers see the failure.
            logger.exception(
                "llmaas ledger: committing %d rows failed; rows: %s",
                len(batch),
                [row.model_dump_json() for row, _ in batch],
            )
            for _, done in batch:
                if not done.done():
                    done.set_exception(RuntimeError(f"the usage ledger could not commit: {exc}"))
            return
        self.commits += 1
        self.rows_committed += len(batch)
        for _, done in batch:
            if not done.done():
                done.set_result(None)
