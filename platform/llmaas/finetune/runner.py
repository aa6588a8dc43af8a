"""The job runner: takes queued jobs in order, trains them on the cluster, serves what they make.

At most ``max_concurrent_jobs`` train at once; the others wait ``queued``. A job's run reports
events (messages, ``metrics`` with step and losses, checkpoints) into the store as they come.
When training ends the result is made servable, added to the live catalog (``Registrar``) and
the job is ``succeeded`` only once its model answers. A failure anywhere is ``failed`` with the
reason; a cancel stops the run after its current step.

A restart of the platform (``recover``) puts every job that had not ended back in the queue: its
run resumes from its last checkpoint in storage (Ray Train restores a run by its job id), and
every succeeded job's model is added to the catalog again if it is missing.

A job whose result is a LoRA adapter on its base's replicas also serves its last
``SERVED_CHECKPOINTS`` checkpoints (OpenAI keeps those of the last three epochs), each by its
``fine_tuned_model_checkpoint`` name: an adapter entry, no replica, loaded when called.
Elsewhere (a classifier, an adapter merged into a copy of a tensor-parallel or kernel-injected
base, checkpoints in remote storage) a checkpoint would need a model copy and replicas of its
own: its name is listed, with its metrics, and not served.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from llmaas.config.catalog import Catalog, ModelSpec, unservable_adapters
from llmaas.config.fine_tuning import FineTuningConfig
from llmaas.finetune.jobs import Jobs, fine_tuned_model_id, learning_rate
from llmaas.finetune.serving import MERGED, catalog_entry, checkpoint_entry, merge_adapter
from llmaas.finetune.spec import (
    Hyperparameters,
    LoraSettings,
    TrainingCancelled,
    TrainingEvent,
    TrainingFailed,
    TrainingResult,
    TrainingSpec,
)
from llmaas.finetune.store import FINAL, CheckpointRecord, FileRecord, JobError, JobRecord, ordered_id

logger = logging.getLogger("ray.serve")

#: The newest checkpoints of an adapter job that are served by their names.
SERVED_CHECKPOINTS = 3


class Run(Protocol):
    """A training run (``llmaas.finetune.train.TrainingRun``)."""

    def poll(self, timeout: float | None = 30) -> list[TrainingEvent]: ...
    def wait(self, timeout: float) -> bool: ...
    def cancel(self, force_after_s: float = 60.0) -> None: ...
    def result(self, timeout: float | None = None) -> TrainingResult: ...


class Registrar(Protocol):
    """Adds a fine-tuned model to the live catalog and says when it answers."""

    async def add(self, entry: dict[str, Any]) -> None: ...
    async def wait_ready(self, model_id: str, timeout_s: float) -> None: ...
    async def wait_routed(self, model_ids: list[str], timeout_s: float) -> None: ...
    async def remove(self, model_id: str) -> None: ...
    async def has(self, model_id: str) -> bool: ...


StartRun = Callable[[TrainingSpec], Run]
BaseDir = Callable[[ModelSpec], Path]


class JobRunner:
    def __init__(
        self,
        config: FineTuningConfig,
        catalog: Catalog,
        jobs: Jobs,
        registrar: Registrar,
        start: StartRun,
        base_dir: BaseDir,
        *,
        ready_timeout_s: float = 900.0,
    ) -> None:
        self.config = config
        self.catalog = catalog
        self.jobs = jobs
        self.registrar = registrar
        self.start = start
        self.base_dir = base_dir
        self.ready_timeout_s = ready_timeout_s
        self._wake = asyncio.Event()
        self._runs: dict[str, Run] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._loop_task: asyncio.Task[None] | None = None

    # ---- lifecycle -------------------------------------------------------------------------------
    def wake(self) -> None:
        self._wake.set()

    def start_loop(self) -> None:
        if self._loop_task is None:
            self._loop_task = asyncio.get_running_loop().create_task(self._loop())

    async def stop_loop(self) -> None:
        for task in [self._loop_task, *self._tasks.values()]:
            if task is not None:
                task.cancel()
        for task in [self._loop_task, *self._tasks.values()]:
            if task is not None:
                with contextlib.suppress(BaseException):
                    await task

    async def recover(self) -> None:
        """After a restart: unfinished jobs queue again (resuming from their checkpoints), and
        succeeded jobs' models are served again."""
        for job in await self.jobs.all(None, admin=True):
            if job.status in ("running", "validating_files"):
                job.status, job.attempts = "queued", job.attempts + 1
                await asyncio.to_thread(self.jobs.store.put, job)
                await self.jobs.event(
                    job, "The platform restarted while the job ran: it resumes from its last checkpoint"
                )
            elif job.status == "succeeded" and job.fine_tuned_model and job.result_path:
                await self._serve_again(job, job.fine_tuned_model, job.result_path)
        self.wake()

    async def _serve_again(self, job: JobRecord, model_id: str, result_path: str) -> None:
        """Add a succeeded job's model to the catalog if it is not there (a restart from a file)."""
        base = self.catalog.get(job.model)
        if base is None or await self.registrar.has(model_id):
            return
        kind = job.options.task or "causal_lm"
        await self.registrar.add(catalog_entry(model_id, base, Path(result_path), kind, job.owner))
        for point in await self._served_checkpoints(job):
            if not await self.registrar.has(point.fine_tuned_model_checkpoint):
                await self.registrar.add(checkpoint_entry(point, base, model_id, job.owner))

    async def _loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=5.0)
            self._wake.clear()
            try:
                await self._start_queued()
            except Exception:
                logger.exception("the fine-tuning queue could not start a job")

    async def _start_queued(self) -> None:
        self._tasks = {k: t for k, t in self._tasks.items() if not t.done()}
        free = self.config.max_concurrent_jobs - len(self._tasks)
        if free <= 0:
            return
        queued = [j for j in await self.jobs.all(None, admin=True) if j.status == "queued"]
        for job in queued[:free]:
            self._tasks[job.id] = asyncio.get_running_loop().create_task(self._run(job))

    async def stop(self, job_id: str) -> None:
        """Cancel ``job_id``'s run if it trains now (a queued job simply never starts)."""
        run = self._runs.get(job_id)
        if run is not None:
            await asyncio.to_thread(run.cancel)

    # ---- one job ----------------------------------------------------------------------------------
    async def _current(self, job: JobRecord) -> JobRecord:
        stored = await asyncio.to_thread(self.jobs.store.get, JobRecord, job.id)
        return stored if stored is not None else job

    async def _save(self, job: JobRecord) -> None:
        await asyncio.to_thread(self.jobs.store.put, job)

    async def _run(self, job: JobRecord) -> None:
        try:
            await self._train_and_serve(job)
        except TrainingCancelled:
            await self._end(job, "cancelled", None, "Job cancelled")
        except TrainingFailed as exc:
            await self._end(job, "failed", JobError(code="training_failed", message=exc.message), exc.message)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.exception("fine-tuning job %s failed", job.id)
            message = f"{type(exc).__name__}: {exc}"
            await self._end(job, "failed", JobError(code="internal_error", message=message), message)
        finally:
            self._runs.pop(job.id, None)
            self._tasks.pop(job.id, None)
            self.wake()  # NOTE: a slot is free: the next queued job starts

    async def _end(self, job: JobRecord, status: str, error: JobError | None, message: str) -> None:
        job = await self._current(job)
        if job.status in FINAL and status != "succeeded":
            return  # NOTE: cancelled through the API while its run wound down
        job.status, job.error, job.finished_at = status, error, int(time.time())  # type: ignore[assignment]
        await self._save(job)
        await self.jobs.event(job, message, level="error" if status == "failed" else "info")

    def _spec(
        self, job: JobRecord, base: ModelSpec, training: FileRecord, validation: FileRecord | None
    ) -> TrainingSpec:
        hyper = job.hyperparameters
        assert hyper.n_epochs != "auto" and hyper.batch_size != "auto"
        options = job.options
        return TrainingSpec(
            job_id=job.id,
            base_model=self.base_dir(base),
            kind=options.task or "causal_lm",
            training_file=Path(training.path),
            validation_file=Path(validation.path) if validation else None,
            hyperparameters=Hyperparameters(
                n_epochs=hyper.n_epochs,
                batch_size=hyper.batch_size,
                learning_rate=learning_rate(job),
                seed=job.seed,
                method=options.method,
                lora=LoraSettings(
                    r=options.lora_r, alpha=options.lora_alpha, target_modules=options.lora_target_modules
                ),
            ),
            storage_path=str(Path(self.config.storage_path).expanduser() / "runs")
            if "://" not in self.config.storage_path
            else self.config.storage_path.rstrip("/") + "/runs",
            num_workers=self.config.resources.num_workers,
            cpus_per_worker=self.config.resources.cpus_per_worker,
            use_gpu=self.config.resources.gpus_per_worker > 0,
            custom_resources=self.config.resources.custom,
            max_failures=self.config.max_failures,
        )

    async def _train_and_serve(self, job: JobRecord) -> None:
        job = await self._current(job)
        if job.status != "queued":
            return  # NOTE: cancelled between the queue's read and this start
        base = self.catalog.get(job.model)
        if base is None:
            raise TrainingFailed(f"the base model '{job.model}' is no longer in the catalog")
        training = await asyncio.to_thread(self.jobs.store.get, FileRecord, job.training_file)
        validation = (
            await asyncio.to_thread(self.jobs.store.get, FileRecord, job.validation_file)
            if job.validation_file
            else None
        )
        if training is None:
            raise TrainingFailed(f"the training file {job.training_file} was deleted before the job ran")
        spec = await asyncio.to_thread(self._spec, job, base, training, validation)
        job.status = "running"
        await self._save(job)
        await self.jobs.event(job, "Fine-tuning job started")
        run = await asyncio.to_thread(self.start, spec)
        self._runs[job.id] = run
        model_id = fine_tuned_model_id(job)
        while True:
            finished = await asyncio.to_thread(run.wait, 1.0)
            for event in await asyncio.to_thread(run.poll):
                await self._record(job, event, model_id)
            if finished:
                break
        await asyncio.sleep(0.1)
        for event in await asyncio.to_thread(run.poll):
            await self._record(job, event, model_id)
        result = await asyncio.to_thread(run.result)
        trained_at = time.monotonic()
        if (await self._current(job)).status == "cancelled":
            return
        servable = Path(result.output_dir)
        if result.kind == "causal_lm":
            why = unservable_adapters(base)
            if why:
                await self.jobs.event(job, f"Merging the adapter into a copy of {base.id} ({why})")
                merged = servable / MERGED
                servable = await asyncio.to_thread(merge_adapter, spec.base_model, servable, merged)
            else:
                await self.jobs.event(job, f"Serving the adapter on {base.id}'s replicas")
        await self.jobs.event(job, f"Training finished ({result.steps} steps); deploying {model_id}")
        await self.registrar.add(catalog_entry(model_id, base, servable, result.kind, job.owner))
        points = await self._serve_checkpoints(job, base, model_id, servable)
        await self.registrar.wait_ready(model_id, self.ready_timeout_s)
        names = [p.fine_tuned_model_checkpoint for p in points]
        await self.registrar.wait_routed(names, self.ready_timeout_s)
        answered_s = time.monotonic() - trained_at
        job = await self._current(job)
        job.status, job.fine_tuned_model, job.finished_at = "succeeded", model_id, int(time.time())
        job.trained_tokens, job.result_path = result.trained_tokens, str(servable)
        await self._save(job)
        await self.jobs.account(job)
        await self.jobs.event(
            job,
            f"The job has successfully completed; {model_id} answers requests "
            f"(its first answer came {answered_s:.1f}s after training finished)",
        )

    async def _served_checkpoints(self, job: JobRecord) -> list[CheckpointRecord]:
        points = await asyncio.to_thread(self.jobs.store.of_job, CheckpointRecord, job.id)
        return [p for p in points if p.served]

    async def _serve_checkpoints(
        self, job: JobRecord, base: ModelSpec, model_id: str, servable: Path
    ) -> list[CheckpointRecord]:
        """Each checkpoint as a model of its own where the result is an adapter on ``base``'s
        replicas (see the module's doc); the checkpoints served."""
        if not (servable / "adapter_config.json").is_file():
            return []
        points = await asyncio.to_thread(self.jobs.store.of_job, CheckpointRecord, job.id)
        served = []
        for point in sorted(points, key=lambda p: p.step_number)[-SERVED_CHECKPOINTS:]:
            if "://" in point.path or not (Path(point.path) / "adapter_config.json").is_file():
                continue
            await self.registrar.add(checkpoint_entry(point, base, model_id, job.owner))
            point.served = True
            await asyncio.to_thread(self.jobs.store.put, point)
            served.append(point)
        return served

    async def _record(self, job: JobRecord, event: TrainingEvent, model_id: str) -> None:
        metrics = event.data() if event.type == "metrics" else None
        await self.jobs.event(job, event.message, level=event.level, metrics=metrics)
        if event.checkpoint is not None:
            point = event.checkpoint
            await asyncio.to_thread(
                self.jobs.store.put,
                CheckpointRecord(
                    id=ordered_id("ftckpt"),
                    job_id=job.id,
                    created_at=int(event.created_at),
                    step_number=point.step_number,
                    metrics=point.metrics,
                    fine_tuned_model_checkpoint=f"{model_id}:ckpt-step-{point.step_number}",
                    path=point.path,
                ),
            )
