"""The router's side of the gateway: checks a caller's key, and sends ledger rows.

``GatewayClient`` wraps the gateway deployment's handle. Rows go out as soon as a request ends
(``record``, called by the service's trace); the router then ``settle``s the request, waiting
for its row to be committed before it sends the last byte of the response. A caller refused
raises ``AuthError`` (a 401), ``Forbidden`` (403) or ``RateLimited`` (429) from ``llmaas.errors``;
the API layer answers them in OpenAI's shape.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from llmaas.errors import AuthError, Forbidden, RateLimited
from llmaas.gateway.keys import ApiKey, KeyRequest, NewKey, hash_secret, well_formed
from llmaas.gateway.service import Admission
from llmaas.gateway.store import UsageRow, UsageSummary
from llmaas.metrics import RequestRecord, RequestRecorder

logger = logging.getLogger("ray.serve")

#: How long a response waits for its ledger row before it is sent anyway (and an error logged).
SETTLE_TIMEOUT_S = 30.0


def bearer_secret(authorization: str | None) -> str:
    """The key in ``Authorization: Bearer KEY``; an ``AuthError`` saying what is wrong otherwise."""
    if not authorization:
        raise AuthError(
            "You didn't provide an API key. Send it as 'Authorization: Bearer YOUR_KEY' "
            "(the openai client's api_key).",
            code="missing_api_key",
        )
    scheme, _, secret = authorization.strip().partition(" ")
    secret = secret.strip()
    if scheme.lower() != "bearer" or not secret:
        raise AuthError("The Authorization header must be 'Bearer YOUR_KEY'.", code="invalid_api_key")
    if not well_formed(secret):
        raise AuthError("Incorrect API key provided. Ask your operator for a key.")
    return secret


def raise_refusal(admission: Admission) -> None:
    """Raise the gateway's refusal as a domain error; return when it admitted the caller."""
    if admission.ok:
        return
    if admission.status == 401:
        raise AuthError(admission.message, admission.code or "invalid_api_key")
    if admission.status == 429:
        raise RateLimited(admission.message, admission.code, admission.retry_after_s)
    raise Forbidden(admission.message, admission.code)


class GatewayClient(RequestRecorder):
    """Authorizes callers and records finished requests in the ledger, through the gateway's handle."""

    def __init__(self, handle: Any, *, auth: bool, ledger: bool) -> None:
        self.handle = handle
        self.auth = auth
        self.ledger = ledger
        self._pending: dict[str, set[asyncio.Task[None]]] = {}

    async def authorize(
        self, authorization: str | None, model: str | None, *, admin: bool = False
    ) -> str | None:
        """The caller's key id (None with auth off); raises ``AuthError``, ``Forbidden`` or
        ``RateLimited`` otherwise."""
        return (await self.admit(authorization, model, admin=admin))[0]

    async def admit(
        self, authorization: str | None, model: str | None, *, admin: bool = False
    ) -> tuple[str | None, bool]:
        """``authorize``'s key id, and whether it is an admin key."""
        if not self.auth and not admin:
            return None, False
        if not self.auth:
            raise Forbidden(
                "Admin routes need API keys: set gateway.auth: true in the catalog and use an admin key.",
                code="auth_disabled",
            )
        secret = bearer_secret(authorization)
        admission: Admission = await self.handle.admit.remote(hash_secret(secret), model, admin=admin)
        raise_refusal(admission)
        return admission.key_id, admission.admin

    async def principal(self, authorization: str | None) -> tuple[str | None, bool]:
        """The caller's key id and whether it is an admin key ((None, False) with auth off)."""
        return await self.admit(authorization, None)

    # ---- keys and usage (the admin API) ------------------------------------------------------
    async def create_key(self, request: KeyRequest) -> NewKey:
        made: NewKey = await self.handle.create_key.remote(request)
        return made

    async def list_keys(self) -> list[ApiKey]:
        keys: list[ApiKey] = await self.handle.list_keys.remote()
        return keys

    async def revoke_key(self, key_id: str) -> bool:
        """Whether an active key had the id ``key_id`` (it is revoked now)."""
        return bool(await self.handle.revoke_key.remote(key_id))

    async def usage(self, since: float = 0.0) -> list[UsageSummary]:
        rows: list[UsageSummary] = await self.handle.usage.remote(since)
        return rows

    # ---- ledger --------------------------------------------------------------------------------
    def record(self, record: RequestRecord) -> None:
        if not (self.ledger or record.key_id):
            return
        row = UsageRow(
            request_id=record.request_id,
            key_id=record.key_id,
            model=record.model,
            route=record.route,
            status=record.status,
            prompt_tokens=record.prompt_tokens,
            completion_tokens=record.generation_tokens,
            latency_ms=round(record.e2e_s * 1000, 3),
            created_at=time.time(),
            cached=record.cached,
        )
        task = asyncio.get_running_loop().create_task(self._send(row))
        waiting = self._pending.setdefault(record.request_id, set())
        waiting.add(task)
        task.add_done_callback(lambda t: self._forget(record.request_id, t))

    async def _send(self, row: UsageRow) -> None:
        await self.handle.record.remote(row)

    def _forget(self, request_id: str, task: asyncio.Task[None]) -> None:
        waiting = self._pending.get(request_id)
        if waiting is not None:
            waiting.discard(task)
            if not waiting:
                del self._pending[request_id]
        if not task.cancelled() and task.exception() is not None:
            logger.error(
                "llmaas ledger: the row of request %s was not committed: %r", request_id, task.exception()
            )

    async def settle(self, request_id: str | None) -> None:
        """Wait until the ledger rows of ``request_id`` are committed (bounded; failures are logged)."""
        tasks = list(self._pending.get(request_id or "", ()))
        if not tasks:
            return
        done, _ = await asyncio.wait([asyncio.shield(t) for t in tasks], timeout=SETTLE_TIMEOUT_S)
        if len(done) < len(tasks):
            logger.error("llmaas ledger: request %s answered before its row was committed", request_id)
