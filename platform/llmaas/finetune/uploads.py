"""A multipart upload (OpenAI's ``POST /v1/files``) streamed to storage under a size limit.

The body is parsed as it arrives (python-multipart, as Starlette does) and the file part is
written to a temporary file in the storage directory, never held whole in memory: past 64 KiB
the parser writes it to disk. Past ``limit`` bytes nothing more is written, the rest of the body
is read and dropped (the client is still sending) and the upload is refused with a 413, as a
large JSON body is.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import AsyncIterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from python_multipart.multipart import Field, File, FormParser, parse_options_header

from llmaas.errors import PayloadTooLarge, PlatformError

_IN_MEMORY = 64 * 1024


@dataclass(frozen=True)
class Upload:
    filename: str
    purpose: str
    path: Path  # a temporary file in the upload directory: move it or delete it
    bytes: int


async def receive_upload(
    chunks: AsyncIterable[bytes], content_type: str | None, directory: Path, limit: int
) -> Upload:
    """The ``file`` part of a multipart body (written under ``directory``) and its ``purpose``."""
    kind, options = parse_options_header(content_type or "")
    if kind != b"multipart/form-data" or b"boundary" not in options:
        raise PlatformError(
            "upload the file as multipart/form-data with a 'file' part and a 'purpose' field "
            "(as the openai client's files.create does)",
            param="file",
            code="invalid_upload",
        )
    # NOTE: each upload parses into its own directory, so a refused one leaves nothing behind
    # (the parser makes its temporary file when a part begins, and reports it only at its end).
    staging = directory / f".upload-{uuid.uuid4().hex}"
    await asyncio.to_thread(staging.mkdir, parents=True)
    fields: dict[str, str] = {}
    files: list[File] = []

    def on_field(field: Field) -> None:
        name = (field.field_name or b"").decode("utf-8", "replace")
        fields[name] = (field.value or b"").decode("utf-8", "replace")

    def on_file(file: File) -> None:
        files.append(file)

    config: Any = {
        "MAX_MEMORY_FILE_SIZE": _IN_MEMORY,
        "UPLOAD_DIR": str(staging),
        "UPLOAD_DELETE_TMP": False,
        "MAX_FIELD_SIZE": 4096,
    }
    parser = FormParser(
        "multipart/form-data", on_field, on_file, boundary=options[b"boundary"], config=config
    )
    size = 0
    try:
        async for chunk in chunks:
            size += len(chunk)
            if size <= limit + _IN_MEMORY:  # NOTE: the body holds headers and the purpose field too
                # NOTE: in a thread: past 64 KiB the parser writes to disk, off the event loop
                await asyncio.to_thread(parser.write, chunk)
        await asyncio.to_thread(parser.finalize)
        file = next((f for f in files if f.field_name == b"file"), None)
        if file is not None and file.size > limit:
            raise PayloadTooLarge(
                f"the file is larger than this platform's limit of {limit} bytes ({limit / 2**20:g} MiB): "
                "split it, or ask the operator to raise fine_tuning.max_file_bytes",
                param="file",
            )
        if size > limit + _IN_MEMORY:
            raise PayloadTooLarge(
                f"the upload is {size} bytes; the limit is {limit} bytes ({limit / 2**20:g} MiB)",
                param="file",
            )
        if file is None:
            raise PlatformError("the upload has no 'file' part", param="file", code="invalid_upload")
        purpose = fields.get("purpose")
        if not purpose:
            raise PlatformError("the upload has no 'purpose' field", param="purpose", code="invalid_upload")
        path = await asyncio.to_thread(_keep, file, directory)
        name = (file.file_name or b"upload.jsonl").decode("utf-8", "replace")
        return Upload(filename=Path(name).name, purpose=purpose, path=path, bytes=path.stat().st_size)
    finally:
        for part in files:
            part.close()
        await asyncio.to_thread(shutil.rmtree, staging, ignore_errors=True)


def _keep(file: File, directory: Path) -> Path:
    """The part's bytes as a temporary file in ``directory`` (a small part is still in memory)."""
    if file.in_memory:
        file.flush_to_disk()
    file.file_object.flush()
    name = file.actual_file_name
    assert name is not None
    path = directory / f".upload-{uuid.uuid4().hex}.part"
    shutil.move(os.fsdecode(name), path)
    return path
