"""The files and fine-tuning routes' front door: who calls, then one call to the fine-tuning deployment.

The caller's key (the gateway) decides what they see: their own files, jobs and models (an admin
key: everyone's); without a gateway every record has no owner. An upload is streamed to the
upload directory here, in the router, and handed over as a path. With no ``fine_tuning`` section
in the catalog every route answers 404 saying how to turn it on.
"""

from __future__ import annotations

from collections.abc import AsyncIterable
from pathlib import Path
from typing import Any, Protocol

from llmaas.errors import NotFound
from llmaas.finetune.uploads import Upload, receive_upload
from llmaas.gateway.client import GatewayClient
from llmaas.openai.body import read_json
from llmaas.openai.frontend import Caller
from llmaas.openai.protocol.fine_tuning import (
    CreateFineTuningJob,
    FileDeleted,
    FileList,
    FileObject,
    FineTuningCheckpointList,
    FineTuningEventList,
    FineTuningJob,
    FineTuningJobList,
    ModelDeleted,
)


class FineTuningBackend(Protocol):
    """The fine-tuning deployment as the router calls it (``llmaas.deployments.handles``)."""

    async def upload_directory(self) -> str: ...
    async def add_file(self, upload: Upload, owner: str | None) -> FileObject: ...
    async def list_files(self, owner: str | None, admin: bool, query: dict[str, Any]) -> FileList: ...
    async def get_file(self, file_id: str, owner: str | None, admin: bool) -> FileObject: ...
    async def file_path(self, file_id: str, owner: str | None, admin: bool) -> str: ...
    async def delete_file(self, file_id: str, owner: str | None, admin: bool) -> FileDeleted: ...
    async def create_job(
        self, request: CreateFineTuningJob, owner: str | None, admin: bool
    ) -> FineTuningJob: ...
    async def list_jobs(self, owner: str | None, admin: bool, query: dict[str, Any]) -> FineTuningJobList: ...
    async def get_job(self, job_id: str, owner: str | None, admin: bool) -> FineTuningJob: ...
    async def cancel_job(self, job_id: str, owner: str | None, admin: bool) -> FineTuningJob: ...
    async def job_events(
        self, job_id: str, owner: str | None, admin: bool, query: dict[str, Any]
    ) -> FineTuningEventList: ...
    async def job_checkpoints(
        self, job_id: str, owner: str | None, admin: bool, query: dict[str, Any]
    ) -> FineTuningCheckpointList: ...
    async def delete_model(self, model_id: str, owner: str | None, admin: bool) -> ModelDeleted: ...


class FineTuningFrontend:
    def __init__(
        self, backend: FineTuningBackend | None, gateway: GatewayClient | None, max_file_bytes: int
    ) -> None:
        self.backend = backend
        self.gateway = gateway
        self.max_file_bytes = max_file_bytes

    async def _who(self, caller: Caller) -> tuple[FineTuningBackend, str | None, bool]:
        key_id, admin = (
            (None, False) if self.gateway is None else await self.gateway.principal(caller.authorization)
        )
        if self.backend is None:
            raise NotFound(
                "fine-tuning is off on this platform: add a fine_tuning section to the catalog",
                code="fine_tuning_off",
            )
        return self.backend, key_id, admin

    # ---- files -----------------------------------------------------------------------------------
    async def create_file(
        self, caller: Caller, content_type: str | None, body: AsyncIterable[bytes]
    ) -> FileObject:
        backend, owner, _ = await self._who(caller)
        directory = Path(await backend.upload_directory())
        upload = await receive_upload(body, content_type, directory, self.max_file_bytes)
        return await backend.add_file(upload, owner)

    async def list_files(self, caller: Caller, query: dict[str, Any]) -> FileList:
        backend, owner, admin = await self._who(caller)
        return await backend.list_files(owner, admin, query)

    async def get_file(self, caller: Caller, file_id: str) -> FileObject:
        backend, owner, admin = await self._who(caller)
        return await backend.get_file(file_id, owner, admin)

    async def file_path(self, caller: Caller, file_id: str) -> Path:
        backend, owner, admin = await self._who(caller)
        return Path(await backend.file_path(file_id, owner, admin))

    async def delete_file(self, caller: Caller, file_id: str) -> FileDeleted:
        backend, owner, admin = await self._who(caller)
        return await backend.delete_file(file_id, owner, admin)

    # ---- jobs ------------------------------------------------------------------------------------
    async def create_job(self, caller: Caller, body: AsyncIterable[bytes]) -> FineTuningJob:
        from llmaas.openai.body import parse

        backend, owner, admin = await self._who(caller)
        request = parse(CreateFineTuningJob, await read_json(body))
        return await backend.create_job(request, owner, admin)

    async def list_jobs(self, caller: Caller, query: dict[str, Any]) -> FineTuningJobList:
        backend, owner, admin = await self._who(caller)
        return await backend.list_jobs(owner, admin, query)

    async def get_job(self, caller: Caller, job_id: str) -> FineTuningJob:
        backend, owner, admin = await self._who(caller)
        return await backend.get_job(job_id, owner, admin)

    async def cancel_job(self, caller: Caller, job_id: str) -> FineTuningJob:
        backend, owner, admin = await self._who(caller)
        return await backend.cancel_job(job_id, owner, admin)

    async def job_events(self, caller: Caller, job_id: str, query: dict[str, Any]) -> FineTuningEventList:
        backend, owner, admin = await self._who(caller)
        return await backend.job_events(job_id, owner, admin, query)

    async def job_checkpoints(
        self, caller: Caller, job_id: str, query: dict[str, Any]
    ) -> FineTuningCheckpointList:
        backend, owner, admin = await self._who(caller)
        return await backend.job_checkpoints(job_id, owner, admin, query)

    async def delete_model(self, caller: Caller, model_id: str) -> ModelDeleted:
        backend, owner, admin = await self._who(caller)
        return await backend.delete_model(model_id, owner, admin)


def page_query(after: str | None, limit: int | None, **extra: Any) -> dict[str, Any]:
    """A list route's query parameters as the backend takes them (only those given)."""
    query: dict[str, Any] = {k: v for k, v in extra.items() if v is not None}
    if after is not None:
        query["after"] = after
    if limit is not None:
        query["limit"] = max(1, min(limit, 10_000))
    return query
