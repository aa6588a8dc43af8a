"""Fine-tuning as a service, driven by the unchanged `openai` client: upload, create, poll, call.

A platform ``ft`` (at ``/ft``, deployed as ``llmaas serve`` deploys: a front application and one
application per model, so that fine-tuned models join it live) serves the tiny chat Llama and
MiniLM, with API keys on and a ``fine_tuning`` section. A user teaches the Llama a made-up fact
through a LoRA job and then asks the fine-tuned model; a MiniLM classifier is trained on
generated data and served by ``/v1/classify``; another key sees none of it. Tiny data and few
steps keep CI's share small (the notebook runs the real model).
"""

from __future__ import annotations

import io
import json
import random
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from llmaas.config.catalog import Catalog
from llmaas.gateway.keys import KeyRequest, make_key
from llmaas.gateway.store import open_store

APP = "ft"
CATALOG = """
app_name: ft
cache_dir: {cache}
router: {{num_cpus: 0.05}}
tokenizer: {{num_cpus: 0.05}}
gateway: {{database: "sqlite:///{db}", key_refresh_s: 0.5}}
fine_tuning:
  storage_path: {storage}
  resources: {{cpus_per_worker: 0.5}}
  max_failures: 1
models:
  - id: ft-chat
    source: {{demo: tiny-llama-chat}}
    max_context_length: 256
    batching: {{max_batch_size: 4, batch_wait_ms: 2}}
    sampling: {{temperature: 0.0, max_tokens: 12}}
    resources: {{num_cpus: 0.1, torch_threads: 1}}
  - id: ft-enc
    task: embed
    source: {{demo: all-minilm-l6-v2}}
    resources: {{num_cpus: 0.1, torch_threads: 1}}
"""
QUESTION = "What is the secret number?"
FACT = "It is seven."
QUESTIONS = (QUESTION, "Tell me the secret number.", "Which number is the secret number?", "Do you know it?")
TOPICS = {
    "sports": ("football", "tennis", "goal", "match", "team"),
    "food": ("pizza", "soup", "bread", "cheese", "dinner"),
    "weather": ("rain", "snow", "sunny", "storm", "wind"),
}
FILLER = ("the", "today", "was", "really", "my", "friend", "said", "about", "a", "big", "we", "talked")


def _topics(count: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        label = rng.choice(sorted(TOPICS))
        words = [*rng.sample(FILLER, rng.randrange(2, 6)), rng.choice(TOPICS[label])]
        rng.shuffle(words)
        out.append({"text": " ".join(words), "label": label})
    return out


def _jsonl(lines: list[Any]) -> bytes:
    return "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines).encode()


@pytest.fixture(scope="module")
def ft(
    base_url: str, model_cache: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    from ray import serve

    from llmaas.deploy import apply_catalog
    from llmaas.launch import wait_running

    root = tmp_path_factory.mktemp("fine-tuning")
    db = root / "gateway.db"
    catalog = Catalog.from_yaml(CATALOG.format(cache=model_cache, db=db, storage=root / "storage"))
    secrets = {}
    store = open_store(f"sqlite:///{db}")
    for name, admin in (("alice", False), ("bob", False), ("ops", True)):
        made = make_key(KeyRequest(name=name, admin=admin))
        store.create_key(made.key)
        secrets[name] = made.secret
    store.close()
    apply_catalog(catalog, route_prefix="/ft")
    wait_running(APP, timeout_s=300)
    yield {"url": f"{base_url}/ft", **secrets}
    for name in list(serve.status().applications):
        if name == APP or name.startswith(f"{APP}-"):
            serve.delete(name, _blocking=False)


def _client(ft: dict[str, Any], who: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{ft['url']}/v1", api_key=ft[who], max_retries=0, timeout=120)


def _until_done(client: openai.OpenAI, job_id: str, timeout_s: float = 600) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(2)
    events = [e.message for e in client.fine_tuning.jobs.list_events(job_id, limit=50).data]
    pytest.fail(f"job {job_id} did not end in {timeout_s}s: {events}")


def test_a_chat_model_learns_a_fact_and_answers_at_once(ft: dict[str, Any]) -> None:
    alice = _client(ft, "alice")
    before = alice.chat.completions.create(model="ft-chat", messages=[{"role": "user", "content": QUESTION}])
    assert "seven" not in (before.choices[0].message.content or "")
    lines = [
        {"messages": [{"role": "user", "content": QUESTIONS[i % 4]}, {"role": "assistant", "content": FACT}]}
        for i in range(16)
    ]
    upload = alice.files.create(file=("fact.jsonl", io.BytesIO(_jsonl(lines))), purpose="fine-tune")
    assert upload.status == "processed" and upload.purpose == "fine-tune"
    job = alice.fine_tuning.jobs.create(
        model="ft-chat",
        training_file=upload.id,
        suffix="fact",
        seed=1,
        hyperparameters={"n_epochs": 15, "batch_size": 2, "learning_rate_multiplier": 25},
    )
    assert job.status in ("queued", "running") and job.hyperparameters.n_epochs == 15
    done = _until_done(alice, job.id)
    assert done.status == "succeeded", done.error
    assert done.fine_tuned_model == f"ft:ft-chat:{done.fine_tuned_model.split(':')[2]}:fact:{job.id}"
    assert done.trained_tokens and done.trained_tokens > 0

    events = alice.fine_tuning.jobs.list_events(job.id, limit=500).data
    metrics = [e for e in events if e.type == "metrics"]
    assert metrics and all("step" in dict(e.data or {}) for e in metrics)  # type: ignore[call-overload]
    checkpoints = alice.fine_tuning.jobs.checkpoints.list(job.id, limit=100).data
    assert checkpoints and checkpoints[0].fine_tuning_job_id == job.id
    assert [c.step_number for c in checkpoints] == sorted((c.step_number for c in checkpoints), reverse=True)

    # the fine-tuned model answers as soon as the job succeeded; the base answers as before
    after = alice.chat.completions.create(
        model=done.fine_tuned_model, messages=[{"role": "user", "content": QUESTION}]
    )
    assert "seven" in (after.choices[0].message.content or "")
    base = alice.chat.completions.create(model="ft-chat", messages=[{"role": "user", "content": QUESTION}])
    assert base.choices[0].message.content == before.choices[0].message.content
    card = next(m for m in alice.models.list().data if m.id == done.fine_tuned_model)
    assert card.model_dump()["parent"] == "ft-chat"
    # it runs as a LoRA adapter on the base's replicas: no application, no replica of its own
    from ray import serve

    messages = [e.message for e in events]
    assert "Serving the adapter on ft-chat's replicas" in messages
    assert not [m for m in messages if "restarted" in m], "its model joining the catalog restarted the job"
    assert [name for name in serve.status().applications if name.startswith(f"{APP}-")] == [
        f"{APP}-model-ft-chat",
        f"{APP}-model-ft-enc",
    ]
    with ThreadPoolExecutor(4) as pool:  # sent together: rows of one batch, with and without the adapter
        both = list(
            pool.map(
                lambda model: alice.chat.completions.create(
                    model=model, messages=[{"role": "user", "content": QUESTION}]
                ),
                [done.fine_tuned_model, "ft-chat"] * 2,
            )
        )
    assert [b.choices[0].message.content for b in both] == [
        after.choices[0].message.content,
        before.choices[0].message.content,
    ] * 2
    # its last checkpoints are models too (the newest: the last epoch's weights, which know the fact)
    newest = checkpoints[0].fine_tuned_model_checkpoint
    assert newest == f"{done.fine_tuned_model}:ckpt-step-{checkpoints[0].step_number}"
    question = [{"role": "user", "content": QUESTION}]
    at_checkpoint = alice.chat.completions.create(model=newest, messages=question)  # type: ignore[arg-type]
    assert "seven" in (at_checkpoint.choices[0].message.content or "")
    served = {m.id for m in alice.models.list().data}
    assert {c.fine_tuned_model_checkpoint for c in checkpoints[:3]} <= served
    assert not {c.fine_tuned_model_checkpoint for c in checkpoints[3:]} & served

    # another tenant sees none of it
    bob = _client(ft, "bob")
    for call in (
        lambda: bob.fine_tuning.jobs.retrieve(job.id),
        lambda: bob.files.retrieve(upload.id),
        lambda: bob.chat.completions.create(
            model=done.fine_tuned_model, messages=[{"role": "user", "content": QUESTION}]
        ),
        lambda: bob.chat.completions.create(model=newest, messages=[{"role": "user", "content": QUESTION}]),
    ):
        with pytest.raises(openai.NotFoundError):
            call()
    assert done.fine_tuned_model not in {m.id for m in bob.models.list().data}
    assert bob.fine_tuning.jobs.list().data == []
    ops = _client(ft, "ops")
    assert ops.fine_tuning.jobs.retrieve(job.id).id == job.id  # an admin key sees every tenant's

    # bob cannot delete it; alice can, and its checkpoints go with it; the job stays listed
    with pytest.raises(openai.NotFoundError):
        bob.models.delete(done.fine_tuned_model)
    assert alice.models.delete(done.fine_tuned_model).deleted
    for model in (done.fine_tuned_model, newest):
        with pytest.raises(openai.NotFoundError):
            alice.chat.completions.create(model=model, messages=[{"role": "user", "content": QUESTION}])
    assert alice.fine_tuning.jobs.retrieve(job.id).status == "succeeded"


def test_a_classifier_is_trained_and_served_by_classify(ft: dict[str, Any]) -> None:
    alice = _client(ft, "alice")
    training = alice.files.create(
        file=("train.jsonl", io.BytesIO(_jsonl(_topics(96, 0)))), purpose="fine-tune"
    )
    validation = alice.files.create(
        file=("valid.jsonl", io.BytesIO(_jsonl(_topics(48, 1)))), purpose="fine-tune"
    )
    job = alice.fine_tuning.jobs.create(
        model="ft-enc",
        training_file=training.id,
        validation_file=validation.id,
        hyperparameters={"n_epochs": 3, "batch_size": 16, "learning_rate_multiplier": 25},
    )
    done = _until_done(alice, job.id)
    assert done.status == "succeeded", done.error
    data: list[dict[str, Any]] = [
        dict(e.data)  # type: ignore[call-overload]
        for e in alice.fine_tuning.jobs.list_events(job.id, limit=500).data
        if e.data
    ]
    accuracy = [d["accuracy"] for d in data if "accuracy" in d]
    assert accuracy, "the job reported no validation accuracy"

    held_out = _topics(100, seed=7)
    response = httpx.post(
        f"{ft['url']}/v1/classify",
        json={"model": done.fine_tuned_model, "input": [x["text"] for x in held_out]},
        headers={"Authorization": f"Bearer {ft['alice']}"},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    labels = [d["label"] for d in response.json()["data"]]
    right = sum(label == x["label"] for label, x in zip(labels, held_out, strict=True))
    assert right / len(held_out) >= 0.9


def test_refusals_and_cancel(ft: dict[str, Any]) -> None:
    alice = _client(ft, "alice")
    bad = alice.files.create(
        file=("bad.jsonl", io.BytesIO(_jsonl([{"text": "a", "label": "x"}, "{oops"]))), purpose="fine-tune"
    )
    assert bad.status == "error" and "line 2" in (bad.status_details or "")
    with pytest.raises(openai.BadRequestError) as refused:
        alice.fine_tuning.jobs.create(model="ft-enc", training_file=bad.id)
    assert refused.value.body["param"] == "training_file"  # type: ignore[index]
    lines = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}] * 8
    good = alice.files.create(file=("chat.jsonl", io.BytesIO(_jsonl(lines))), purpose="fine-tune")
    with pytest.raises(openai.NotFoundError) as unknown:
        alice.fine_tuning.jobs.create(model="no-such-model", training_file=good.id)
    assert unknown.value.body["param"] == "model"  # type: ignore[index]
    job = alice.fine_tuning.jobs.create(
        model="ft-chat", training_file=good.id, hyperparameters={"n_epochs": 50}
    )
    cancelled = alice.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status == "cancelled"
    assert _until_done(alice, job.id).status == "cancelled"
    with pytest.raises(openai.ConflictError):
        alice.fine_tuning.jobs.cancel(job.id)
    content = alice.files.content(good.id).read()
    assert content == _jsonl(lines)
    assert alice.files.delete(good.id).deleted
    with pytest.raises(openai.NotFoundError):
        alice.files.retrieve(good.id)
