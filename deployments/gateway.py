"""The gateway deployment: one replica holding every key's rate windows and the ledger's writer.

NOTE: one replica on purpose: limits must hold across router replicas, so their counters live
in one place. Its work per request is a dict lookup and a list append, and the ledger commits
in groups, so one replica keeps up with many routers.
"""

from llmaas.config.gateway import GatewayConfig
from llmaas.gateway.keys import ApiKey, KeyRequest, NewKey
from llmaas.gateway.service import Admission, Gateway
from llmaas.gateway.store import UsageRow, UsageSummary


class GatewayReplica:
    async def __init__(self, config: GatewayConfig) -> None:  # type: ignore[misc]  # Serve awaits it
        self.gateway = Gateway(config)
        await self.gateway.start()

    async def admit(self, key_hash: str, model: str | None, admin: bool = False) -> Admission:
        return await self.gateway.admit(key_hash, model, admin=admin)

    async def record(self, row: UsageRow) -> None:
        await self.gateway.record(row)

    async def create_key(self, request: KeyRequest) -> NewKey:
        return await self.gateway.create_key(request)

    async def list_keys(self) -> list[ApiKey]:
        return await self.gateway.list_keys()

    async def revoke_key(self, key_id: str) -> bool:
        return await self.gateway.revoke_key(key_id)

    async def usage(self, since: float = 0.0) -> list[UsageSummary]:
        return await self.gateway.usage(since)

    def check_health(self) -> None:
        problem = self.gateway.healthy()
        if problem:
            raise RuntimeError(problem)

    async def __del__(self) -> None:
        await self.gateway.stop()
