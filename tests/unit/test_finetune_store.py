"""Fine-tuning's records on the gateway's database, and uploads streamed to storage."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from llmaas.errors import PayloadTooLarge, PlatformError
from llmaas.finetune.store import CheckpointRecord, EventRecord, FileRecord, FineTuneStore, JobRecord
from llmaas.finetune.uploads import receive_upload

BOUNDARY = "llmaas-boundary"


def test_records_round_trip_by_owner_and_job(tmp_path: Path):
    store = FineTuneStore.open(f"sqlite:///{tmp_path / 'db.sqlite'}")
    for i, owner in enumerate(["a", "b", "a", None]):
        store.put(
            FileRecord(
                id=f"file-{i}",
                owner=owner,
                bytes=1,
                created_at=i,
                filename="f",
                purpose="fine-tune",
                path="p",
            )
        )
    assert [f.id for f in store.owned(FileRecord, "a")] == ["file-0", "file-2"]
    assert [f.id for f in store.owned(FileRecord, None)] == ["file-3"]
    assert len(store.owned(FileRecord, "x", everyone=True)) == 4
    job = JobRecord(id="ftjob-1", owner="a", model="m", created_at=5, training_file="file-0", seed=1)
    store.put(job)
    store.put(job.model_copy(update={"status": "running"}))  # replaced, not added
    got = store.get(JobRecord, "ftjob-1")
    assert got is not None and got.status == "running"
    store.put(EventRecord(id="ev-2", job_id="ftjob-1", created_at=7, message="second"))
    store.put(EventRecord(id="ev-1", job_id="ftjob-1", created_at=6, message="first"))
    store.put(
        CheckpointRecord(
            id="ck",
            job_id="ftjob-1",
            created_at=8,
            step_number=3,
            fine_tuned_model_checkpoint="m:ckpt-3",
            path="x",
        )
    )
    assert [e.message for e in store.of_job(EventRecord, "ftjob-1")] == ["first", "second"]
    assert store.of_job(CheckpointRecord, "ftjob-1")[0].step_number == 3
    assert store.delete(FileRecord, "file-0") and not store.delete(FileRecord, "file-0")
    store.close()
    reopened = FineTuneStore.open(f"sqlite:///{tmp_path / 'db.sqlite'}")  # a restart reads it all back
    assert reopened.get(JobRecord, "ftjob-1") is not None
    reopened.close()


def _multipart(content: bytes, purpose: str | None = "fine-tune", filename: str = "train.jsonl") -> bytes:
    parts = []
    if purpose is not None:
        parts.append(
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\n{purpose}\r\n'.encode()
        )
    parts.append(
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        "Content-Type: application/jsonl\r\n\r\n".encode()
        + content
        + b"\r\n"
    )
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


async def _chunks(body: bytes, size: int = 7000) -> AsyncIterator[bytes]:
    for i in range(0, len(body), size):
        yield body[i : i + size]


CONTENT_TYPE = f"multipart/form-data; boundary={BOUNDARY}"


def test_an_upload_is_streamed_to_a_file(tmp_path: Path):
    content = b'{"text": "a", "label": "x"}\n' * 10_000  # 280 KB: past the in-memory part
    upload = asyncio.run(receive_upload(_chunks(_multipart(content)), CONTENT_TYPE, tmp_path, 10**6))
    assert upload.purpose == "fine-tune" and upload.filename == "train.jsonl"
    assert upload.path.parent == tmp_path and upload.path.read_bytes() == content
    assert upload.bytes == len(content)
    small = asyncio.run(receive_upload(_chunks(_multipart(b"{}\n")), CONTENT_TYPE, tmp_path, 10**6))
    assert small.path.read_bytes() == b"{}\n"


def test_an_upload_past_the_limit_is_refused_and_nothing_is_left(tmp_path: Path):
    body = _multipart(b"x" * 500_000)
    with pytest.raises(PayloadTooLarge) as refused:
        asyncio.run(receive_upload(_chunks(body), CONTENT_TYPE, tmp_path, 100_000))
    assert "100000 bytes" in refused.value.message and refused.value.param == "file"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("body", "content_type", "param"),
    [
        (_multipart(b"{}", purpose=None), CONTENT_TYPE, "purpose"),
        (f"--{BOUNDARY}--\r\n".encode(), CONTENT_TYPE, "file"),
        (b"{}", "application/json", "file"),
    ],
)
def test_malformed_uploads_name_what_is_missing(tmp_path: Path, body: bytes, content_type: str, param: str):
    with pytest.raises(PlatformError) as refused:
        asyncio.run(receive_upload(_chunks(body), content_type, tmp_path, 10**6))
    assert refused.value.param == param
