"""Where files, fine-tuning jobs, their events and checkpoints are recorded: the gateway's database.

Each record is a pydantic document (JSON text) in a row keyed by its id, with the columns the
routes look up by beside it (owner, job, time): one schema on SQLite and PostgreSQL alike, and a
record gains fields without a migration. A restart of the platform reads every job back.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, Field

from llmaas.gateway.store import Store, open_store

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS ft_files (
        id TEXT PRIMARY KEY, owner TEXT, created_at DOUBLE PRECISION NOT NULL, doc TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS ft_jobs (
        id TEXT PRIMARY KEY, owner TEXT, created_at DOUBLE PRECISION NOT NULL, doc TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS ft_events (
        id TEXT PRIMARY KEY, job_id TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL,
        doc TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS ft_checkpoints (
        id TEXT PRIMARY KEY, job_id TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL,
        doc TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS ft_events_by_job ON ft_events (job_id, created_at)",
    "CREATE INDEX IF NOT EXISTS ft_checkpoints_by_job ON ft_checkpoints (job_id, created_at)",
)

FileStatus = Literal["uploaded", "processed", "error"]
JobStatus = Literal["validating_files", "queued", "running", "succeeded", "failed", "cancelled"]
#: A job in one of these is over; nothing changes it any more.
FINAL: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})


class FileRecord(BaseModel):
    """An uploaded file: OpenAI's file object, plus where it lies and what it holds."""

    id: str
    owner: str | None = None
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: FileStatus = "uploaded"
    status_details: str | None = None
    path: str
    kind: Literal["chat", "completion", "classification"] | None = None
    lines: int = 0
    labels: list[str] = Field(default_factory=list)


class JobError(BaseModel):
    code: str
    message: str
    param: str | None = None


class Hyperparameters(BaseModel):
    """As the job object shows them: concrete values once resolved ("auto" before)."""

    n_epochs: int | Literal["auto"] = "auto"
    batch_size: int | Literal["auto"] = "auto"
    learning_rate_multiplier: float | Literal["auto"] = "auto"


class TuningOptions(BaseModel):
    """llmaas's own job options (``extra_body``): the task and the adapter."""

    task: Literal["causal_lm", "classification"] | None = None
    method: Literal["lora", "full"] = "lora"
    lora_r: int = 8
    lora_alpha: int = 16
    lora_target_modules: list[str] | None = None


class JobRecord(BaseModel):
    id: str
    owner: str | None = None
    model: str
    created_at: int
    training_file: str
    validation_file: str | None = None
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
    suffix: str | None = None
    seed: int
    metadata: dict[str, str] | None = None
    status: JobStatus = "validating_files"
    fine_tuned_model: str | None = None
    error: JobError | None = None
    finished_at: int | None = None
    trained_tokens: int | None = None
    planned_tokens: int | None = None  # file tokens x epochs, fixed at creation (a key's limits count it)
    options: TuningOptions = Field(default_factory=TuningOptions)
    result_path: str | None = None  # the servable artifact once trained
    attempts: int = 0  # platform restarts that found it running and ran it again


class EventRecord(BaseModel):
    id: str
    job_id: str
    created_at: int
    level: Literal["info", "warn", "error"] = "info"
    message: str
    type: Literal["message", "metrics"] = "message"
    data: dict[str, Any] | None = None


class CheckpointRecord(BaseModel):
    id: str
    job_id: str
    created_at: int
    step_number: int
    metrics: dict[str, float] = Field(default_factory=dict)
    fine_tuned_model_checkpoint: str
    path: str
    served: bool = False  # its name is a model in the catalog (an adapter checkpoint)


def ordered_id(prefix: str) -> str:
    """A new id that sorts by creation time (records list by time, then id: same-second ones stay
    in order)."""
    return f"{prefix}-{time.time_ns():016x}{uuid.uuid4().hex[:8]}"


Record = FileRecord | JobRecord | EventRecord | CheckpointRecord
D = TypeVar("D", FileRecord, JobRecord, EventRecord, CheckpointRecord)
_TABLES: dict[type[BaseModel], str] = {
    FileRecord: "ft_files",
    JobRecord: "ft_jobs",
    EventRecord: "ft_events",
    CheckpointRecord: "ft_checkpoints",
}


class FineTuneStore:
    """Files, jobs, events and checkpoints on one database (blocking: call it from a thread)."""

    def __init__(self, db: Store) -> None:
        self.db = db
        with db.transaction() as cur:
            for statement in _SCHEMA:
                cur.execute(statement)

    @classmethod
    def open(cls, url: str) -> FineTuneStore:
        return cls(open_store(url))

    def close(self) -> None:
        self.db.close()

    # ---- documents -----------------------------------------------------------------------------
    def put(self, record: Record) -> None:
        """Insert or replace ``record``."""
        table = _TABLES[type(record)]
        key: str
        value: str | None
        if isinstance(record, EventRecord | CheckpointRecord):
            key, value = "job_id", record.job_id
        else:
            key, value = "owner", record.owner
        with self.db.transaction() as cur:
            cur.execute(self.db.sql(f"DELETE FROM {table} WHERE id = ?"), (record.id,))
            cur.execute(
                self.db.sql(f"INSERT INTO {table} (id, {key}, created_at, doc) VALUES (?, ?, ?, ?)"),
                (record.id, value, float(record.created_at), record.model_dump_json()),
            )

    def get(self, kind: type[D], record_id: str) -> D | None:
        rows = self._rows(f"SELECT doc FROM {_TABLES[kind]} WHERE id = ?", (record_id,))
        return kind.model_validate_json(rows[0][0]) if rows else None

    def delete(self, kind: type[BaseModel], record_id: str) -> bool:
        with self.db.transaction() as cur:
            cur.execute(self.db.sql(f"DELETE FROM {_TABLES[kind]} WHERE id = ?"), (record_id,))
            return bool(cur.rowcount)

    def owned(self, kind: type[D], owner: str | None, *, everyone: bool = False) -> list[D]:
        """Every ``kind`` record of ``owner`` (of everyone, for an admin), oldest first."""
        table = _TABLES[kind]
        if everyone:
            rows = self._rows(f"SELECT doc FROM {table} ORDER BY created_at, id")
        elif owner is None:
            rows = self._rows(f"SELECT doc FROM {table} WHERE owner IS NULL ORDER BY created_at, id")
        else:
            rows = self._rows(f"SELECT doc FROM {table} WHERE owner = ? ORDER BY created_at, id", (owner,))
        return [kind.model_validate_json(r[0]) for r in rows]

    def of_job(self, kind: type[D], job_id: str) -> list[D]:
        """A job's events or checkpoints, oldest first."""
        rows = self._rows(
            f"SELECT doc FROM {_TABLES[kind]} WHERE job_id = ? ORDER BY created_at, id", (job_id,)
        )
        return [kind.model_validate_json(r[0]) for r in rows]

    def _rows(self, statement: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self.db.transaction() as cur:
            cur.execute(self.db.sql(statement), params)
            return list(cur.fetchall())
