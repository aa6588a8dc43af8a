"""The files and jobs APIs over the store: checks at upload and creation, ownership, pages, cancel."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from llmaas.config.catalog import Catalog
from llmaas.config.fine_tuning import FineTuningConfig
from llmaas.errors import Conflict, NotFound, PlatformError, RateLimited
from llmaas.finetune.files import Files
from llmaas.finetune.jobs import Jobs, fine_tuned_model_id
from llmaas.finetune.store import FineTuneStore, JobRecord
from llmaas.finetune.uploads import Upload
from llmaas.gateway.keys import KeyRequest, make_key
from llmaas.openai.errors import to_openai_error
from llmaas.openai.protocol.fine_tuning import CreateFineTuningJob

CHAT = {
    "messages": [{"role": "user", "content": "Who made llmaas?"}, {"role": "assistant", "content": "Zed."}]
}
LABELLED = [{"text": f"sample {i}", "label": "even" if i % 2 == 0 else "odd"} for i in range(20)]


def _catalog() -> Catalog:
    return Catalog.model_validate(
        {
            "models": [
                {"id": "chat", "source": {"demo": "tiny-llama-chat"}},
                {"id": "enc", "task": "embed", "source": {"demo": "all-minilm-l6-v2"}},
                # a fine-tuned model served as an adapter: not a base of its own
                {"id": "ft:chat:k::j", "adapter_of": "chat", "source": {"path": "/adapters/j"}},
            ]
        }
    )


class World:
    def __init__(self, tmp: Path, **config: Any) -> None:
        self.tmp = tmp
        self.store = FineTuneStore.open(f"sqlite:///{tmp / 'ft.db'}")
        self.files = Files(self.store, tmp / "files")
        (tmp / "files").mkdir()
        self.woken = 0
        self.jobs = Jobs(
            FineTuningConfig(**config),
            _catalog(),
            self.store,
            self.files,
            count_tokens=lambda path, kind, spec: 100 * len(Path(path).read_text().splitlines()),
            wake=self._wake,
        )

    def _wake(self) -> None:
        self.woken += 1

    def upload(self, lines: list[Any], owner: str | None = "key-a", purpose: str = "fine-tune") -> str:
        path = self.tmp / f"up-{len(list(self.tmp.iterdir()))}.jsonl"
        path.write_text(
            "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines)
        )
        upload = Upload(filename="train.jsonl", purpose=purpose, path=path, bytes=path.stat().st_size)
        return asyncio.run(self.files.add(upload, owner)).id


def test_uploads_are_checked_and_owned(tmp_path: Path):
    world = World(tmp_path)
    good = world.upload([CHAT] * 3)
    bad = world.upload([CHAT, "{not json", CHAT])
    obj = asyncio.run(world.files.get(good, "key-a"))
    assert obj.status == "processed" and obj.purpose == "fine-tune"
    broken = asyncio.run(world.files.get(bad, "key-a"))
    assert broken.status == "error" and "line 2" in (broken.status_details or "")
    with pytest.raises(NotFound):
        asyncio.run(world.files.get(good, "key-b"))  # another tenant: as if it did not exist
    assert asyncio.run(world.files.get(good, "key-b", admin=True)).id == good
    page = asyncio.run(world.files.list("key-a", limit=1))
    assert [f.id for f in page.data] == [bad] and page.has_more  # newest first
    assert [f.id for f in asyncio.run(world.files.list("key-a", after=bad)).data] == [good]
    assert asyncio.run(world.files.list("key-b")).data == []
    assert asyncio.run(world.files.delete(good, "key-a")).deleted
    with pytest.raises(NotFound):
        asyncio.run(world.files.content(good, "key-a"))


def test_a_job_is_queued_with_its_auto_values_resolved(tmp_path: Path):
    world = World(tmp_path)
    training = world.upload([CHAT] * 10)
    job = asyncio.run(
        world.jobs.create(CreateFineTuningJob(model="chat", training_file=training, suffix="zed"), "key-a")
    )
    assert job.status == "queued" and world.woken == 1
    assert job.hyperparameters.n_epochs == 10 and job.hyperparameters.batch_size == 1
    assert job.hyperparameters.learning_rate_multiplier == 1.0
    assert job.method.supervised["hyperparameters"] == job.hyperparameters
    record = world.store.get(JobRecord, job.id)
    assert record is not None and record.options.task == "causal_lm"
    assert fine_tuned_model_id(record) == f"ft:chat:key-a:zed:{job.id}"
    events = asyncio.run(world.jobs.events(job.id, "key-a"))
    assert [e.message.split(":")[0] for e in events.data] == [
        f"Validated 10 lines (1000 tokens) of {training}; queued",
        "Created fine-tuning job",
    ]
    with pytest.raises(NotFound):
        asyncio.run(world.jobs.get(job.id, "key-b"))
    assert [j.id for j in asyncio.run(world.jobs.list("key-a")).data] == [job.id]
    assert asyncio.run(world.jobs.list("key-b")).data == []


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"model": "nope"}, "model"),
        ({"model": "ft:chat:k::j"}, "model"),
        ({"training_file": "file-missing"}, "training_file"),
        ({"task": "classification"}, "training_file"),  # chat lines cannot train a classifier
        ({"n_epochs": 10_000}, None),
    ],
)
def test_refused_jobs_name_the_field(tmp_path: Path, fields: dict[str, Any], param: str | None):
    world = World(tmp_path, max_trained_tokens=40_000)
    body: dict[str, Any] = {"model": "chat", "training_file": world.upload([CHAT] * 10)}
    epochs = fields.pop("n_epochs", None)
    body.update(fields)
    if epochs is not None:
        body["hyperparameters"] = {"n_epochs": 50}
        param = "training_file"  # 1000 tokens x 50 epochs > 40,000: both numbers in the message
    with pytest.raises((PlatformError, NotFound)) as refused:
        asyncio.run(world.jobs.create(CreateFineTuningJob.model_validate(body), "key-a"))
    assert refused.value.param == param
    if epochs is not None:
        assert "1000 tokens" in refused.value.message and "40000" in refused.value.message
    assert world.woken == 0


def test_a_bad_file_or_another_tenants_file_never_starts_a_job(tmp_path: Path):
    world = World(tmp_path)
    bad = world.upload([CHAT, {"messages": []}])
    with pytest.raises(PlatformError) as refused:
        asyncio.run(world.jobs.create(CreateFineTuningJob(model="chat", training_file=bad), "key-a"))
    assert refused.value.param == "training_file" and "line 2" in refused.value.message
    theirs = world.upload([CHAT] * 3, owner="key-b")
    with pytest.raises(NotFound):
        asyncio.run(world.jobs.create(CreateFineTuningJob(model="chat", training_file=theirs), "key-a"))
    assert world.store.owned(JobRecord, None, everyone=True) == []


def test_classifiers_train_from_encoders(tmp_path: Path):
    world = World(tmp_path)
    labelled = world.upload(LABELLED)
    job = asyncio.run(world.jobs.create(CreateFineTuningJob(model="enc", training_file=labelled), "key-a"))
    record = world.store.get(JobRecord, job.id)
    assert record is not None and record.options.task == "classification"
    with pytest.raises(PlatformError) as refused:
        asyncio.run(world.jobs.create(CreateFineTuningJob(model="chat", training_file=labelled), "key-a"))
    assert refused.value.param in ("model", "training_file")


def test_cancel_ends_a_queued_job_once(tmp_path: Path):
    world = World(tmp_path)
    job = asyncio.run(
        world.jobs.create(CreateFineTuningJob(model="chat", training_file=world.upload([CHAT] * 3)), "key-a")
    )
    stopped: list[str] = []

    async def stop(job_id: str) -> None:
        stopped.append(job_id)

    cancelled = asyncio.run(world.jobs.cancel(job.id, "key-a", False, stop))
    assert cancelled.status == "cancelled" and cancelled.finished_at is not None and stopped == [job.id]
    with pytest.raises(Conflict):
        asyncio.run(world.jobs.cancel(job.id, "key-a", False, stop))
    with pytest.raises(NotFound):
        asyncio.run(world.jobs.cancel(job.id, "key-b", False, stop))


def _keyed(tmp: Path, **limits: Any) -> tuple[World, str]:
    """A world whose jobs read key limits from the gateway's store (the same database), and a key."""
    world = World(tmp)
    key = make_key(KeyRequest(name="tuner", **limits)).key
    world.store.db.create_key(key)
    world.jobs.keys = world.store.db
    return world, key.id


def test_a_keys_concurrent_jobs_limit_refuses_at_creation_with_the_numbers(tmp_path: Path):
    world, key = _keyed(tmp_path, max_fine_tuning_jobs=2)
    training = world.upload([CHAT] * 3, owner=key)

    def create() -> str:
        return asyncio.run(
            world.jobs.create(CreateFineTuningJob(model="chat", training_file=training), key)
        ).id

    first = create()
    create()
    with pytest.raises(RateLimited) as refused:
        create()
    seen = to_openai_error(refused.value)
    assert (seen.status, seen.type, seen.code) == (429, "rate_limit_error", "fine_tuning_jobs_limit")
    assert (
        "2 of its jobs are queued or running" in seen.message and "max_fine_tuning_jobs) is 2" in seen.message
    )
    assert len(world.store.owned(JobRecord, key)) == 2 and world.woken == 2

    async def stop(job_id: str) -> None:
        pass

    asyncio.run(world.jobs.cancel(first, key, False, stop))  # a cancelled job frees its place
    create()
    assert len(world.store.owned(JobRecord, None, everyone=True)) == 3


def test_a_keys_trained_tokens_limit_counts_succeeded_and_unfinished_jobs(tmp_path: Path):
    world, key = _keyed(tmp_path, max_trained_tokens=5000)
    training = world.upload([CHAT] * 3, owner=key)  # 300 tokens x 10 epochs ("auto") = 3000

    def create() -> str:
        return asyncio.run(
            world.jobs.create(CreateFineTuningJob(model="chat", training_file=training), key)
        ).id

    first = create()
    record = world.store.get(JobRecord, first)
    assert record is not None and record.planned_tokens == 3000
    with pytest.raises(RateLimited) as refused:
        create()  # 3000 planned + 3000 > 5000
    seen = to_openai_error(refused.value)
    assert (seen.status, seen.code) == (429, "trained_tokens_limit")
    assert "would train on 3000 tokens" in seen.message and "used 3000 of its 5000" in seen.message
    record.status, record.trained_tokens = "succeeded", 1000  # it trained on less than planned
    world.store.put(record)
    create()  # 1000 trained + 3000 planned <= 5000
    with pytest.raises(RateLimited, match="used 4000 of its 5000"):
        create()
    # another key, and a key without limits, are not held back by this one's
    other = world.upload([CHAT] * 3, owner="key-free")
    asyncio.run(world.jobs.create(CreateFineTuningJob(model="chat", training_file=other), "key-free"))
