"""The job runner with a fake training run and registrar: the queue, events and checkpoints, success
only once the model answers, failure and cancel, and a restart that resumes and serves again."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from typing import Any

from llmaas.config.catalog import Catalog, ModelSpec
from llmaas.config.fine_tuning import FineTuningConfig
from llmaas.finetune.files import Files
from llmaas.finetune.jobs import Jobs
from llmaas.finetune.runner import JobRunner
from llmaas.finetune.spec import (
    CheckpointInfo,
    TrainingCancelled,
    TrainingEvent,
    TrainingFailed,
    TrainingResult,
    TrainingSpec,
)
from llmaas.finetune.store import FineTuneStore, JobRecord
from llmaas.finetune.uploads import Upload
from llmaas.openai.protocol.fine_tuning import CreateFineTuningJob, FineTuningJobCheckpoint

LABELLED = [{"text": f"sample {i}", "label": "even" if i % 2 == 0 else "odd"} for i in range(20)]


class FakeRun:
    """Reports two metrics events and a checkpoint, then ends as ``outcome`` says (or when cancelled)."""

    def __init__(
        self, spec: TrainingSpec, outcome: str, gate: threading.Event, checkpoint: str = "/ck/2"
    ) -> None:
        self.spec = spec
        self.outcome = outcome
        self.gate = gate
        self.cancelled = False
        self.events = [
            TrainingEvent(type="metrics", message="step 1", step=1, train_loss=1.0),
            TrainingEvent(
                message="Checkpoint created at step 2",
                checkpoint=CheckpointInfo(step_number=2, metrics={"train_loss": 0.5}, path=checkpoint),
            ),
            TrainingEvent(type="metrics", message="step 2", step=2, train_loss=0.5),
        ]

    def poll(self, timeout: float | None = 30) -> list[TrainingEvent]:
        out, self.events = self.events, []
        return out

    def wait(self, timeout: float) -> bool:
        return self.gate.wait(timeout) or self.cancelled

    def cancel(self, force_after_s: float = 60.0) -> None:
        self.cancelled = True

    def result(self, timeout: float | None = None) -> TrainingResult:
        if self.cancelled:
            raise TrainingCancelled("cancelled")
        if self.outcome == "fail":
            raise TrainingFailed("the worker ran out of memory")
        out = Path(self.spec.storage_path) / "out"
        if self.spec.kind == "causal_lm":  # a LoRA adapter, as the worker exports it
            out.mkdir(parents=True, exist_ok=True)
            (out / "adapter_config.json").write_text("{}")
        return TrainingResult(
            job_id=self.spec.job_id,
            kind=self.spec.kind,
            method="lora",
            output_dir=str(out),
            trained_tokens=42,
            steps=2,
        )


class FakeRegistrar:
    def __init__(self) -> None:
        self.entries: dict[str, dict[str, Any]] = {}
        self.ready: set[str] = set()
        self.routed: set[str] = set()

    async def add(self, entry: dict[str, Any]) -> None:
        self.entries[entry["id"]] = entry

    async def wait_ready(self, model_id: str, timeout_s: float) -> None:
        assert model_id in self.entries
        self.ready.add(model_id)

    async def wait_routed(self, model_ids: list[str], timeout_s: float) -> None:
        assert set(model_ids) <= set(self.entries)
        self.routed.update(model_ids)

    async def remove(self, model_id: str) -> None:
        self.entries.pop(model_id, None)

    async def has(self, model_id: str) -> bool:
        return model_id in self.entries


CHAT = [
    {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}
    for i in range(10)
]


class World:
    def __init__(self, tmp: Path, outcome: str = "ok", checkpoint: str = "/ck/2", **config: Any) -> None:
        (tmp / "files").mkdir(exist_ok=True)
        (tmp / "base").mkdir(exist_ok=True)
        (tmp / "base" / "config.json").write_text("{}")
        self.tmp = tmp
        self.checkpoint = checkpoint
        self.catalog = Catalog.model_validate(
            {
                "models": [
                    {"id": "enc", "task": "embed", "source": {"demo": "all-minilm-l6-v2"}},
                    {"id": "lm", "source": {"demo": "tiny-llama-chat"}},
                ]
            }
        )
        self.config = FineTuningConfig(storage_path=str(tmp / "storage"), **config)
        self.store = FineTuneStore.open(f"sqlite:///{tmp / 'ft.db'}")
        self.files = Files(self.store, tmp / "files")
        self.jobs = Jobs(self.config, self.catalog, self.store, self.files, lambda path, kind, spec: 10)
        self.registrar = FakeRegistrar()
        self.gate = threading.Event()
        self.runs: list[FakeRun] = []
        self.outcome = outcome
        self.runner = self._runner()

    def _runner(self) -> JobRunner:
        def start(spec: TrainingSpec) -> FakeRun:
            run = FakeRun(spec, self.outcome, self.gate, self.checkpoint)
            self.runs.append(run)
            return run

        def base_dir(spec: ModelSpec) -> Path:
            return self.tmp / "base"

        runner = JobRunner(self.config, self.catalog, self.jobs, self.registrar, start, base_dir)
        self.jobs.wake = runner.wake
        return runner

    async def job(self, model: str = "enc") -> str:
        lines = LABELLED if model == "enc" else CHAT
        path = self.tmp / f"{model}.jsonl"
        path.write_text("".join(json.dumps(line) + "\n" for line in lines))
        upload = Upload(filename="l.jsonl", purpose="fine-tune", path=path, bytes=path.stat().st_size)
        file = await self.files.add(upload, "key-a")
        return (await self.jobs.create(CreateFineTuningJob(model=model, training_file=file.id), "key-a")).id

    async def one_checkpoint_job(self) -> tuple[JobRecord, FineTuningJobCheckpoint]:
        """A LoRA job on "lm" run to success (the fake run makes one checkpoint): it and its checkpoint."""
        self.runner.start_loop()
        job_id = await self.job("lm")
        self.gate.set()
        job = await self.until(job_id, "succeeded")
        await self.runner.stop_loop()
        [point] = (await self.jobs.checkpoints(job_id, "key-a")).data
        return job, point

    async def until(self, job_id: str, *statuses: str) -> JobRecord:
        for _ in range(200):
            job = self.store.get(JobRecord, job_id)
            if job is not None and job.status in statuses:
                return job
            await asyncio.sleep(0.02)
        raise AssertionError(f"job {job_id} never reached {statuses}: {self.store.get(JobRecord, job_id)}")


def test_a_job_trains_records_its_progress_and_succeeds_once_its_model_answers(tmp_path: Path):
    world = World(tmp_path)

    async def main() -> None:
        world.runner.start_loop()
        job_id = await world.job()
        await world.until(job_id, "running")
        world.gate.set()
        job = await world.until(job_id, "succeeded")
        model = job.fine_tuned_model
        assert model == f"ft:enc:key-a::{job_id}" and model in world.registrar.ready
        entry = world.registrar.entries[model]
        assert entry["task"] == "classify" and entry["parent"] == "enc" and entry["owner"] == "key-a"
        assert job.trained_tokens == 42
        spec = world.runs[0].spec
        assert spec.kind == "classification" and spec.hyperparameters.learning_rate == 2e-4
        events = (await world.jobs.events(job_id, "key-a", limit=100)).data
        metrics = [e for e in events if e.type == "metrics"]
        assert [e.data for e in reversed(metrics)] == [
            {"step": 1, "train_loss": 1.0},
            {"step": 2, "train_loss": 0.5},
        ]
        assert events[0].message.startswith("The job has successfully completed")
        points = (await world.jobs.checkpoints(job_id, "key-a")).data
        assert [(p.step_number, p.metrics) for p in points] == [(2, {"train_loss": 0.5})]
        await world.runner.stop_loop()

    asyncio.run(main())


def test_a_succeeded_jobs_trained_tokens_land_in_the_usage_ledger(tmp_path: Path):
    world = World(tmp_path)
    world.jobs.ledger = world.store.db  # the gateway's store: the same database by default

    async def main() -> None:
        world.runner.start_loop()
        job_id = await world.job()
        world.gate.set()
        job = await world.until(job_id, "succeeded")
        await world.runner.stop_loop()
        rows = world.store.db.usage_rows()
        assert [
            (r.kind, r.request_id, r.key_id, r.model, r.fine_tuned_model, r.trained_tokens) for r in rows
        ] == [("fine_tuning", job_id, "key-a", "enc", job.fine_tuned_model, 42)]
        [summary] = world.store.db.usage()
        assert (summary.key_id, summary.model, summary.fine_tuning_jobs, summary.trained_tokens) == (
            "key-a",
            "enc",
            1,
            42,
        )
        assert summary.requests == 0 and summary.mean_latency_ms == 0.0  # a job is not a request

    asyncio.run(main())


def test_a_failed_run_fails_the_job_with_its_reason(tmp_path: Path):
    world = World(tmp_path, outcome="fail")
    world.jobs.ledger = world.store.db
    world.gate.set()

    async def main() -> None:
        world.runner.start_loop()
        job = await world.until(await world.job(), "failed")
        assert job.error is not None and "out of memory" in job.error.message
        assert job.fine_tuned_model is None and world.registrar.entries == {}
        assert world.store.db.usage_rows() == []  # only a succeeded job is charged
        await world.runner.stop_loop()

    asyncio.run(main())


def test_cancel_stops_the_run_and_nothing_is_served(tmp_path: Path):
    world = World(tmp_path)

    async def main() -> None:
        world.runner.start_loop()
        job_id = await world.job()
        await world.until(job_id, "running")
        cancelled = await world.jobs.cancel(job_id, "key-a", False, world.runner.stop)
        assert cancelled.status == "cancelled" and world.runs[0].cancelled
        await asyncio.sleep(0.2)
        job = world.store.get(JobRecord, job_id)
        assert job is not None and job.status == "cancelled" and world.registrar.entries == {}
        await world.runner.stop_loop()

    asyncio.run(main())


def test_jobs_queue_beyond_the_concurrency_limit(tmp_path: Path):
    world = World(tmp_path, max_concurrent_jobs=1)

    async def main() -> None:
        world.runner.start_loop()
        first, second = await world.job(), await world.job()
        await world.until(first, "running")
        await asyncio.sleep(0.2)
        assert world.store.get(JobRecord, second).status == "queued"  # type: ignore[union-attr]
        world.gate.set()
        await world.until(second, "succeeded")
        await world.runner.stop_loop()

    asyncio.run(main())


def test_a_restart_resumes_unfinished_jobs_and_serves_finished_ones_again(tmp_path: Path):
    world = World(tmp_path)

    async def before() -> tuple[str, str]:
        world.runner.start_loop()
        done = await world.job()
        await world.until(done, "running")
        world.gate.set()
        await world.until(done, "succeeded")
        world.gate.clear()
        unfinished = await world.job()
        await world.until(unfinished, "running")
        await world.runner.stop_loop()  # the platform goes away mid-run
        return done, unfinished

    done, unfinished = asyncio.run(before())
    again = World(tmp_path)  # a new replica on the same database; the catalog forgot the model
    again.gate.set()

    async def after() -> None:
        again.runner.start_loop()
        await again.runner.recover()
        finished = again.store.get(JobRecord, done)
        assert finished is not None and finished.fine_tuned_model in again.registrar.entries
        job = await again.until(unfinished, "succeeded")
        assert job.attempts == 1
        messages = [e.message for e in (await again.jobs.events(unfinished, "key-a", limit=100)).data]
        assert any("resumes from its last checkpoint" in m for m in messages)
        await again.runner.stop_loop()

    asyncio.run(after())


def test_an_adapter_jobs_checkpoints_are_served_by_their_names_and_again_after_a_restart(tmp_path: Path):
    checkpoint = tmp_path / "storage" / "runs" / "ckpt-2" / "checkpoint"
    checkpoint.mkdir(parents=True)
    (checkpoint / "adapter_config.json").write_text("{}")
    world = World(tmp_path, checkpoint=str(checkpoint))

    async def main() -> str:
        job, point = await world.one_checkpoint_job()
        job_id = job.id
        name = point.fine_tuned_model_checkpoint
        assert name == f"{job.fine_tuned_model}:ckpt-step-2"
        entry = world.registrar.entries[name]
        assert entry["adapter_of"] == "lm" and entry["source"] == {"path": str(checkpoint)}
        assert entry["owner"] == "key-a" and name in world.registrar.routed  # routed before succeeded
        events = (await world.jobs.events(job_id, "key-a", limit=100)).data
        assert "after training finished" in events[0].message
        return name

    name = asyncio.run(main())
    again = World(tmp_path, checkpoint=str(checkpoint))  # the catalog forgot both models
    asyncio.run(again.runner.recover())
    assert name in again.registrar.entries


def test_a_checkpoint_that_is_not_an_adapter_on_disk_is_listed_but_not_served(tmp_path: Path):
    world = World(tmp_path)  # its checkpoint path holds no adapter

    async def main() -> None:
        job, point = await world.one_checkpoint_job()
        assert point.fine_tuned_model_checkpoint not in world.registrar.entries
        assert list(world.registrar.entries) == [job.fine_tuned_model]

    asyncio.run(main())
