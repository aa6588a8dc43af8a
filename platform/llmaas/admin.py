"""The admin API's logic: API keys and usage (through the gateway) and the catalog, one model at a time.

Every call needs an admin key. Catalog changes are not made here: a change is a ``CatalogEdit``
value handed to ``change`` (the catalog-admin deployment, ``llmaas.deployments.catalog_admin``),
which redeploys; the data plane (the router) never does. Without it (an application that was not
deployed declaratively) a change is refused with 409 ``not_declarative``.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Awaitable, Callable
from typing import Any, Literal

from pydantic import BaseModel

from llmaas.catalog_edit import CatalogEdit
from llmaas.config.catalog import Catalog
from llmaas.errors import CatalogNotDeclarative
from llmaas.gateway.client import GatewayClient
from llmaas.gateway.keys import KeyRequest
from llmaas.openai.body import parse, read_json
from llmaas.openai.errors import OpenAIError, bad_request, json_type
from llmaas.openai.frontend import Caller

#: Applies one catalog edit to the deployed catalog and says what changes (``CatalogChange``).
CatalogChanger = Callable[[CatalogEdit], Awaitable[BaseModel]]


class AdminService:
    """One per router replica and catalog."""

    def __init__(
        self,
        catalog: Catalog,
        gateway: GatewayClient | None,
        *,
        change: CatalogChanger | None = None,
        app_name: str = "",
    ) -> None:
        self.catalog = catalog
        self.gateway = gateway
        self.change = change
        self.app_name = app_name

    async def _admin(self, caller: Caller) -> GatewayClient:
        if self.gateway is None:
            raise OpenAIError(
                404,
                "Admin routes need the gateway: add a gateway section to the catalog.",
                type="not_found_error",
                code="no_gateway",
            )
        await self.gateway.authorize(caller.authorization, None, admin=True)
        return self.gateway

    # ---- keys and usage ------------------------------------------------------------------------
    async def create_key(self, caller: Caller, body: AsyncIterable[bytes]) -> dict[str, Any]:
        gateway = await self._admin(caller)
        made = await gateway.create_key(parse(KeyRequest, await read_json(body)))
        return {**made.key.public(), "secret": made.secret}

    async def list_keys(self, caller: Caller) -> dict[str, Any]:
        gateway = await self._admin(caller)
        return {"object": "list", "data": [k.public() for k in await gateway.list_keys()]}

    async def revoke_key(self, caller: Caller, key_id: str) -> dict[str, Any]:
        gateway = await self._admin(caller)
        if not await gateway.revoke_key(key_id):
            raise OpenAIError(
                404, f"No active key has the id {key_id!r}.", type="not_found_error", code="key_not_found"
            )
        return {"id": key_id, "revoked": True}

    async def usage(self, caller: Caller, since: float = 0.0) -> dict[str, Any]:
        gateway = await self._admin(caller)
        return {"object": "list", "data": [r.model_dump() for r in await gateway.usage(since)]}

    # ---- the catalog (what `llmaas deploy` does with a file) -----------------------------------
    async def get_catalog(self, caller: Caller) -> dict[str, Any]:
        await self._admin(caller)
        return self.catalog.model_dump(mode="json")

    async def change_model(
        self,
        caller: Caller,
        op: Literal["put", "patch", "delete"],
        model_id: str,
        body: AsyncIterable[bytes] | None = None,
    ) -> dict[str, Any]:
        """Apply one model's change to the deployed catalog: what changes (the roll goes on)."""
        await self._admin(caller)
        data = await read_json(body) if body is not None else {}
        if not isinstance(data, dict):
            raise bad_request(f"the body must be a JSON object, not {json_type(data)}")
        edit = CatalogEdit(op=op, model_id=model_id, body=data)
        if self.change is None:
            raise CatalogNotDeclarative(self.app_name)
        return (await self.change(edit)).model_dump()
