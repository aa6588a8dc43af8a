"""Uploaded training files: kept under the storage path, checked line by line, owned by a key.

A file is checked when it arrives (``llmaas.finetune.data``): its status is ``processed`` with
its kind (chat, completion or classification), or ``error`` with ``status_details`` naming the
line and the reason, and only a processed file can start a job. Files belong to the key that
uploaded them: another key gets a 404, as if it did not exist (an admin key sees all).
"""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

from llmaas.errors import NotFound
from llmaas.finetune.data import validate_file
from llmaas.finetune.store import FileRecord, FineTuneStore, ordered_id
from llmaas.finetune.uploads import Upload
from llmaas.openai.protocol.fine_tuning import FileDeleted, FileList, FileObject

PURPOSES = ("fine-tune",)
MAX_LIST = 10_000


def file_object(record: FileRecord) -> FileObject:
    return FileObject(
        id=record.id,
        bytes=record.bytes,
        created_at=record.created_at,
        filename=record.filename,
        purpose=record.purpose,
        status=record.status,
        status_details=record.status_details,
    )


class Files:
    """The files API over a store and a directory (blocking store calls run in threads)."""

    def __init__(self, store: FineTuneStore, directory: Path) -> None:
        self.store = store
        self.directory = directory

    async def add(self, upload: Upload, owner: str | None) -> FileObject:
        """Keep ``upload`` (its temporary file is moved into place) and check it."""
        file_id = ordered_id("file")
        path = self.directory / f"{file_id}.jsonl"
        await asyncio.to_thread(shutil.move, upload.path, path)
        record = FileRecord(
            id=file_id,
            owner=owner,
            bytes=upload.bytes,
            created_at=int(time.time()),
            filename=upload.filename,
            purpose=upload.purpose,
            path=str(path),
        )
        if upload.purpose not in PURPOSES:
            record.status, record.status_details = (
                "error",
                (f"purpose {upload.purpose!r} is not served here: use 'fine-tune'"),
            )
        else:
            check = await asyncio.to_thread(validate_file, path)
            if check.error is not None:
                record.status, record.status_details = "error", check.error
            else:
                record.status, record.kind, record.lines = "processed", check.kind, check.lines
                record.labels = list(check.labels)
        await asyncio.to_thread(self.store.put, record)
        return file_object(record)

    async def record(self, file_id: str, owner: str | None, admin: bool = False) -> FileRecord:
        """The file ``file_id`` of ``owner``; a 404 for anyone else's (or none)."""
        record = await asyncio.to_thread(self.store.get, FileRecord, file_id)
        if record is None or not (admin or record.owner == owner):
            raise NotFound(f"No such file: '{file_id}'", param="file_id")
        return record

    async def get(self, file_id: str, owner: str | None, admin: bool = False) -> FileObject:
        return file_object(await self.record(file_id, owner, admin))

    async def content(self, file_id: str, owner: str | None, admin: bool = False) -> Path:
        return Path((await self.record(file_id, owner, admin)).path)

    async def list(
        self,
        owner: str | None,
        admin: bool = False,
        *,
        purpose: str | None = None,
        after: str | None = None,
        limit: int = MAX_LIST,
        order: str = "desc",
    ) -> FileList:
        records = await asyncio.to_thread(self.store.owned, FileRecord, owner, everyone=admin)
        if purpose is not None:
            records = [r for r in records if r.purpose == purpose]
        if order == "desc":
            records.reverse()
        if after is not None:
            ids = [r.id for r in records]
            records = records[ids.index(after) + 1 :] if after in ids else []
        page = records[:limit]
        data = [file_object(r) for r in page]
        return FileList(
            data=data,
            has_more=len(records) > limit,
            first_id=data[0].id if data else None,
            last_id=data[-1].id if data else None,
        )

    async def delete(self, file_id: str, owner: str | None, admin: bool = False) -> FileDeleted:
        record = await self.record(file_id, owner, admin)
        await asyncio.to_thread(self.store.delete, FileRecord, file_id)
        await asyncio.to_thread(Path(record.path).unlink, missing_ok=True)
        return FileDeleted(id=file_id, deleted=True)
