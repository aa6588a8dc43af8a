"""Fine-tuning jobs as the API sees them: created after their checks, listed, cancelled, and their
events and checkpoints.

A job is refused at creation (a 400 naming the field, or a 404 for a file or model the caller
does not have) when its base model may not be tuned, a file is not a processed ``fine-tune``
file of the caller's, the file's kind does not fit the task, or its tokens times its epochs
exceed the catalog's budget (both numbers in the message). With the gateway on, a job is also
refused (a 429, as the gateway refuses a key over its rates) when its key's ``max_fine_tuning_jobs``
are queued or running, or when it would take the key past its ``max_trained_tokens``: what its
succeeded jobs trained plus what its unfinished ones will train (file tokens x epochs, fixed at
creation). Accepted, it is ``queued`` with its
``"auto"`` hyperparameters resolved to the values it will train with, and ``JobRunner`` takes it
from there. Jobs belong to the key that made them; another key gets a 404 (an admin sees all).
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Literal, Protocol, TypeVar

from llmaas.config.catalog import Catalog, ModelSpec, Task
from llmaas.config.fine_tuning import FineTuningConfig
from llmaas.errors import Conflict, NotFound, PlatformError, RateLimited
from llmaas.finetune.files import Files
from llmaas.finetune.store import (
    FINAL,
    CheckpointRecord,
    EventRecord,
    FileRecord,
    FineTuneStore,
    Hyperparameters,
    JobRecord,
    TuningOptions,
    ordered_id,
)
from llmaas.gateway.keys import ApiKey
from llmaas.gateway.store import UsageRow
from llmaas.openai.protocol.fine_tuning import (
    CreateFineTuningJob,
    FineTuningCheckpointList,
    FineTuningEventList,
    FineTuningJob,
    FineTuningJobCheckpoint,
    FineTuningJobEvent,
    FineTuningJobList,
    HyperparametersOut,
    JobErrorOut,
    MethodOut,
)

logger = logging.getLogger("ray.serve")

#: Counts a file's tokens with the base model's tokenizer (blocking): (file path, kind, base model) -> tokens.
TokenCounter = Callable[[str, str, ModelSpec], int]
#: The route a fine-tuning job's ledger row names.
JOBS_ROUTE = "/v1/fine_tuning/jobs"


class KeySource(Protocol):
    """The gateway's keys (its ``Store``), read for a key's fine-tuning limits (blocking)."""

    def key_by_id(self, key_id: str) -> ApiKey | None: ...


class UsageSink(Protocol):
    """The gateway's usage ledger (its ``Store``): a succeeded job's row goes there (blocking)."""

    def add_usage(self, rows: Sequence[UsageRow]) -> None: ...


#: Learning rates a multiplier of 1 means: LoRA adapters learn fast, full fine-tuning slowly.
BASE_LEARNING_RATE = {"lora": 2e-4, "full": 5e-5}


def fine_tuned_model_id(job: JobRecord) -> str:
    """OpenAI's name for the result: ``ft:{base}:{owner}:{suffix}:{job id}``."""
    return f"ft:{job.model}:{job.owner or 'llmaas'}:{job.suffix or ''}:{job.id}"


def learning_rate(job: JobRecord) -> float:
    multiplier = job.hyperparameters.learning_rate_multiplier
    assert multiplier != "auto"
    return BASE_LEARNING_RATE[job.options.method] * float(multiplier)


def job_object(job: JobRecord) -> FineTuningJob:
    hyper = HyperparametersOut.model_validate(job.hyperparameters.model_dump())
    return FineTuningJob(
        id=job.id,
        created_at=job.created_at,
        error=JobErrorOut.model_validate(job.error.model_dump()) if job.error else None,
        fine_tuned_model=job.fine_tuned_model,
        finished_at=job.finished_at,
        hyperparameters=hyper,
        method=MethodOut(supervised={"hyperparameters": hyper}),
        model=job.model,
        seed=job.seed,
        status=job.status,
        trained_tokens=job.trained_tokens,
        training_file=job.training_file,
        validation_file=job.validation_file,
        user_provided_suffix=job.suffix,
        metadata=job.metadata,
    )


def _resolve(given: Hyperparameters, lines: int) -> Hyperparameters:
    """``"auto"`` values as the job will use them: more epochs for small files (as OpenAI does)."""
    epochs = given.n_epochs if given.n_epochs != "auto" else min(10, max(1, math.ceil(200 / max(lines, 1))))
    batch = given.batch_size if given.batch_size != "auto" else max(1, min(8, lines // 8))
    rate = given.learning_rate_multiplier if given.learning_rate_multiplier != "auto" else 1.0
    return Hyperparameters(n_epochs=epochs, batch_size=batch, learning_rate_multiplier=rate)


class Jobs:
    """The fine-tuning jobs API over the store; ``wake`` tells the runner a job is queued.

    ``keys`` (the gateway's store; None without a gateway) gives each key's fine-tuning limits, and
    ``ledger`` (the same store; None with the ledger off) takes a row per succeeded job.
    """

    def __init__(
        self,
        config: FineTuningConfig,
        catalog: Catalog,
        store: FineTuneStore,
        files: Files,
        count_tokens: TokenCounter,
        wake: Callable[[], None] = lambda: None,
        *,
        keys: KeySource | None = None,
        ledger: UsageSink | None = None,
    ) -> None:
        self.config = config
        self.catalog = catalog
        self.store = store
        self.files = files
        self.count_tokens = count_tokens
        self.wake = wake
        self.keys = keys
        self.ledger = ledger
        # NOTE: a key's limits are checked and its job stored under one lock, so two creations at
        # once cannot both pass a limit only one of them fits (one replica holds every job).
        self._admitting = asyncio.Lock()

    # ---- create ----------------------------------------------------------------------------------
    def _base(self, model: str) -> ModelSpec:
        spec = self.catalog.get(model)
        # NOTE: an adapter (a fine-tuned model served on its base) is not a base of its own
        allowed = self.config.base_models or [m.id for m in self.catalog.models if m.adapter_of is None]
        if spec is None or model not in allowed or spec.adapter_of is not None:
            raise NotFound(
                f"model '{model}' cannot be fine-tuned here; models that can: {', '.join(allowed) or 'none'}",
                param="model",
                code="model_not_found",
            )
        return spec

    async def _file(self, file_id: str, owner: str | None, admin: bool, param: str) -> FileRecord:
        try:
            record = await self.files.record(file_id, owner, admin)
        except NotFound as exc:
            raise NotFound(exc.message, param=param) from exc
        if record.purpose != "fine-tune":
            raise PlatformError(
                f"file '{file_id}' has purpose {record.purpose!r}, not 'fine-tune'", param=param
            )
        if record.status != "processed":
            raise PlatformError(
                f"file '{file_id}' cannot train a model: {record.status_details or record.status}",
                param=param,
                code="invalid_file",
            )
        return record

    async def create(
        self, request: CreateFineTuningJob, owner: str | None, admin: bool = False
    ) -> FineTuningJob:
        base = self._base(request.model)
        training = await self._file(request.training_file, owner, admin, "training_file")
        validation = None
        if request.validation_file is not None:
            validation = await self._file(request.validation_file, owner, admin, "validation_file")
            if validation.kind != training.kind:
                raise PlatformError(
                    f"validation_file holds {validation.kind} lines and training_file {training.kind} lines: "
                    "give both of one kind",
                    param="validation_file",
                )
        task = request.task or ("classification" if training.kind == "classification" else "causal_lm")
        self._check_task(task, base, training)
        options = TuningOptions(task=task, method=request.training_method or "lora")
        if options.method == "full" and task != "classification":
            raise PlatformError(
                "full fine-tuning is offered for classifiers only: use LoRA", param="training_method"
            )
        if request.lora_r is not None:
            options.lora_r = request.lora_r
        if request.lora_alpha is not None:
            options.lora_alpha = request.lora_alpha
        options.lora_target_modules = request.lora_target_modules
        hyper = _resolve(
            Hyperparameters.model_validate(request.given_hyperparameters().model_dump()), training.lines
        )
        tokens = await asyncio.to_thread(self.count_tokens, training.path, training.kind or "", base)
        assert hyper.n_epochs != "auto"
        budget = self.config.max_trained_tokens
        if tokens * hyper.n_epochs > budget:
            raise PlatformError(
                f"training_file holds {tokens} tokens; {hyper.n_epochs} epochs would train on "
                f"{tokens * hyper.n_epochs}, beyond this platform's budget of {budget} tokens per job: "
                "use a smaller file or fewer epochs",
                param="training_file",
                code="too_many_tokens",
            )
        async with self._admitting:
            job = await self._admit(request, owner, base, training, validation, options, hyper, tokens)
        await self.event(job, f"Created fine-tuning job: {job.id}")
        await self.event(job, f"Validated {training.lines} lines ({tokens} tokens) of {training.id}; queued")
        self.wake()
        return job_object(job)

    async def _admit(
        self,
        request: CreateFineTuningJob,
        owner: str | None,
        base: ModelSpec,
        training: FileRecord,
        validation: FileRecord | None,
        options: TuningOptions,
        hyper: Hyperparameters,
        tokens: int,
    ) -> JobRecord:
        """The key's limits checked, then the job stored ``queued``."""
        assert hyper.n_epochs != "auto"
        planned = tokens * hyper.n_epochs
        mine = await self.all(owner, admin=False)
        running = [j for j in mine if j.status not in FINAL]
        if owner is not None and len(running) >= max(self.config.max_concurrent_jobs * 4, 4):
            raise PlatformError(
                f"this key has {len(running)} unfinished jobs; wait for one to end or cancel one",
                code="too_many_jobs",
            )
        key = await asyncio.to_thread(self.keys.key_by_id, owner) if self.keys and owner else None
        if key is not None:
            _check_limits(key, mine, planned)
        job = JobRecord(
            id=ordered_id("ftjob"),
            owner=owner,
            model=base.id,
            created_at=int(time.time()),
            training_file=training.id,
            validation_file=validation.id if validation else None,
            hyperparameters=hyper,
            suffix=request.suffix,
            seed=request.seed if request.seed is not None else random.randrange(2**31),
            metadata=request.metadata,
            status="queued",
            options=options,
            trained_tokens=None,
            planned_tokens=planned,
        )
        await asyncio.to_thread(self.store.put, job)
        return job

    async def account(self, job: JobRecord) -> None:
        """Record a succeeded job in the usage ledger: its key, base model, model and trained tokens.
        A failure is logged with the row (to replay it), never failing the job: its model is served."""
        if self.ledger is None or job.fine_tuned_model is None:
            return
        now = time.time()
        row = UsageRow(
            request_id=job.id,
            key_id=job.owner,
            model=job.model,
            route=JOBS_ROUTE,
            status=200,
            prompt_tokens=0,
            completion_tokens=0,
            latency_ms=round(max(0.0, (job.finished_at or now) - job.created_at) * 1000, 3),
            created_at=now,
            kind="fine_tuning",
            trained_tokens=job.trained_tokens or 0,
            fine_tuned_model=job.fine_tuned_model,
        )
        try:
            await asyncio.to_thread(self.ledger.add_usage, [row])
        except Exception:
            logger.exception(
                "llmaas ledger: the row of fine-tuning job %s failed: %s", job.id, row.model_dump_json()
            )

    @staticmethod
    def _check_task(task: str, base: ModelSpec, training: FileRecord) -> None:
        if task == "classification":
            if training.kind != "classification":
                raise PlatformError(
                    f"a classifier trains on {{text, label}} lines; training_file has {training.kind} lines",
                    param="training_file",
                )
            if base.task is Task.GENERATE:
                raise PlatformError(
                    f"model '{base.id}' is generative; a classifier is tuned from an encoder (an embed or "
                    "classify model)",
                    param="model",
                )
            return
        if training.kind == "classification":
            raise PlatformError(
                "training_file holds {text, label} lines: set task 'classification' to train a classifier",
                param="training_file",
            )
        if base.task is not Task.GENERATE:
            raise PlatformError(
                f"model '{base.id}' does not generate text: it cannot learn chat", param="model"
            )

    # ---- read ------------------------------------------------------------------------------------
    async def all(self, owner: str | None, admin: bool = False) -> list[JobRecord]:
        return await asyncio.to_thread(self.store.owned, JobRecord, owner, everyone=admin)

    async def record(self, job_id: str, owner: str | None, admin: bool = False) -> JobRecord:
        job = await asyncio.to_thread(self.store.get, JobRecord, job_id)
        if job is None or not (admin or job.owner == owner):
            raise NotFound(f"No such fine-tuning job: '{job_id}'", param="fine_tuning_job_id")
        return job

    async def get(self, job_id: str, owner: str | None, admin: bool = False) -> FineTuningJob:
        return job_object(await self.record(job_id, owner, admin))

    async def list(
        self,
        owner: str | None,
        admin: bool = False,
        *,
        after: str | None = None,
        limit: int = 20,
        metadata: dict[str, str] | None = None,
    ) -> FineTuningJobList:
        jobs = list(reversed(await self.all(owner, admin)))  # newest first, as OpenAI lists them
        if metadata:
            jobs = [j for j in jobs if all((j.metadata or {}).get(k) == v for k, v in metadata.items())]
        jobs = _after(jobs, after)
        return FineTuningJobList(data=[job_object(j) for j in jobs[:limit]], has_more=len(jobs) > limit)

    async def events(
        self,
        job_id: str,
        owner: str | None,
        admin: bool = False,
        *,
        after: str | None = None,
        limit: int = 20,
    ) -> FineTuningEventList:
        await self.record(job_id, owner, admin)
        events = list(reversed(await asyncio.to_thread(self.store.of_job, EventRecord, job_id)))
        events = _after(events, after)
        data = [FineTuningJobEvent.model_validate(e.model_dump(exclude={"job_id"})) for e in events[:limit]]
        return FineTuningEventList(data=data, has_more=len(events) > limit)

    async def checkpoints(
        self,
        job_id: str,
        owner: str | None,
        admin: bool = False,
        *,
        after: str | None = None,
        limit: int = 10,
    ) -> FineTuningCheckpointList:
        await self.record(job_id, owner, admin)
        points = list(reversed(await asyncio.to_thread(self.store.of_job, CheckpointRecord, job_id)))
        points = _after(points, after)
        data = [
            FineTuningJobCheckpoint(
                id=c.id,
                created_at=c.created_at,
                fine_tuned_model_checkpoint=c.fine_tuned_model_checkpoint,
                fine_tuning_job_id=job_id,
                metrics=c.metrics,
                step_number=c.step_number,
            )
            for c in points[:limit]
        ]
        return FineTuningCheckpointList(
            data=data,
            has_more=len(points) > limit,
            first_id=data[0].id if data else None,
            last_id=data[-1].id if data else None,
        )

    # ---- change ----------------------------------------------------------------------------------
    async def cancel(
        self, job_id: str, owner: str | None, admin: bool, stop: Callable[[str], Awaitable[None]]
    ) -> FineTuningJob:
        """Cancel a job that has not ended (``stop`` ends its training, if it runs)."""
        job = await self.record(job_id, owner, admin)
        if job.status in FINAL:
            raise Conflict(
                f"job '{job_id}' has already {job.status}: there is nothing to cancel",
                param="fine_tuning_job_id",
            )
        await stop(job_id)
        job = await self.record(job_id, owner, admin)
        if job.status not in FINAL:
            job.status, job.finished_at = "cancelled", int(time.time())
            await asyncio.to_thread(self.store.put, job)
            await self.event(job, "Job cancelled")
        return job_object(job)

    async def event(
        self,
        job: JobRecord,
        message: str,
        *,
        level: Literal["info", "warn", "error"] = "info",
        metrics: dict[str, float] | None = None,
    ) -> None:
        record = EventRecord(
            id=ordered_id("ftevent"),
            job_id=job.id,
            created_at=int(time.time()),
            level=level,
            message=message,
            type="metrics" if metrics is not None else "message",
            data=metrics,
        )
        await asyncio.to_thread(self.store.put, record)


def _check_limits(key: ApiKey, jobs: list[JobRecord], planned: int) -> None:
    """Refuse a job of ``key`` (whose jobs are ``jobs``) that would train ``planned`` tokens, if it
    passes one of the key's fine-tuning limits (a 429 naming the limit and the numbers)."""
    unfinished = [j for j in jobs if j.status not in FINAL]
    if key.max_fine_tuning_jobs is not None and len(unfinished) >= key.max_fine_tuning_jobs:
        raise RateLimited(
            f"Fine-tuning jobs limit reached for key {key.prefix}...: {len(unfinished)} of its jobs are "
            f"queued or running and its limit (max_fine_tuning_jobs) is {key.max_fine_tuning_jobs}. "
            "Wait for one to end or cancel one.",
            "fine_tuning_jobs_limit",
        )
    if key.max_trained_tokens is None:
        return
    trained = sum(j.trained_tokens or 0 for j in jobs if j.status == "succeeded")
    reserved = sum(j.planned_tokens or 0 for j in unfinished)
    used = trained + reserved
    if used + planned > key.max_trained_tokens:
        raise RateLimited(
            f"Trained tokens limit reached for key {key.prefix}...: this job would train on {planned} "
            f"tokens, and the key has used {used} of its {key.max_trained_tokens} (max_trained_tokens: "
            f"{trained} trained by its succeeded jobs, {reserved} planned by its queued or running ones). "
            "Use a smaller file or fewer epochs, or ask your operator for a larger limit.",
            "trained_tokens_limit",
        )


R = TypeVar("R", JobRecord, EventRecord, CheckpointRecord)


def _after(items: list[R], after: str | None) -> list[R]:
    """The items after the one with id ``after`` (a cursor page); all of them without one."""
    if after is None:
        return items
    ids = [i.id for i in items]
    return items[ids.index(after) + 1 :] if after in ids else []
