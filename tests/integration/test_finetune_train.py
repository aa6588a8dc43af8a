"""Training runs on the session's Ray cluster: Ray Train's TorchTrainer around Hugging Face Trainer + PEFT.

A LoRA on the tiny Llama learns a made-up fact, through a training worker killed with SIGKILL
(the run resumes from its last checkpoint); a MiniLM classifier reaches held-out accuracy >= 0.9;
with max_failures=0 the same kill fails the run with the reason; a cancel stops a run mid-way.
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from llmaas.finetune import (
    Hyperparameters,
    LoraSettings,
    TrainingCancelled,
    TrainingEvent,
    TrainingFailed,
    TrainingRun,
    TrainingSpec,
    export_classifier,
    run_training,
    start_training,
)
from llmaas.finetune.export import FINAL_MARKER

QUESTIONS = (
    "What is the secret number?",
    "Tell me the secret number.",
    "Which number is the secret number?",
    "Do you know the secret number?",
)
ANSWER = "It is seven."
TOPICS = {
    "sports": ("football", "tennis", "goal", "match", "team"),
    "food": ("pizza", "soup", "bread", "cheese", "dinner"),
    "weather": ("rain", "snow", "sunny", "storm", "wind"),
}
FILLER = ("the", "today", "was", "really", "my", "friend", "said", "about", "a", "big", "we", "talked")


def _jsonl(path: Path, lines: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def _fact_file(folder: Path) -> Path:
    lines = [
        {
            "messages": [
                {"role": "user", "content": QUESTIONS[i % 4]},
                {"role": "assistant", "content": ANSWER},
            ]
        }
        for i in range(16)
    ]
    return _jsonl(folder / "fact.jsonl", lines)


def _topics(count: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        label = rng.choice(sorted(TOPICS))
        words = [*rng.sample(FILLER, rng.randrange(2, 6)), rng.choice(TOPICS[label])]
        rng.shuffle(words)
        out.append({"text": " ".join(words), "label": label})
    return out


def _chat_spec(folder: Path, base: Path, job_id: str, **fields: Any) -> TrainingSpec:
    return TrainingSpec(
        job_id=job_id,
        base_model=base,
        kind="causal_lm",
        training_file=_fact_file(folder),
        storage_path=str(folder / "storage"),
        **{"cpus_per_worker": 1, **fields},
    )


def _answer(model: Any, tokenizer: Any, question: str) -> str:
    import torch

    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False
    )
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    return str(tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True))


def _worker_pid(address: str) -> int:
    from ray.util.state import list_actors

    alive = list_actors(
        address=address, filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")]
    )
    assert len(alive) == 1, alive
    pid = alive[0].pid
    assert pid is not None
    return pid


def _follow(
    run: TrainingRun,
    events: list[TrainingEvent],
    until: Callable[[TrainingEvent], bool],
    timeout: float = 180,
) -> TrainingEvent:
    """Poll ``run`` into ``events`` until an event meets ``until``; that event."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        new = run.poll()
        events.extend(new)
        for event in new:
            if until(event):
                return event
        assert not run.done(), f"the run ended first: {[e.message for e in events]}"
        time.sleep(0.05)
    pytest.fail(f"no such event in {timeout}s: {[e.message for e in events]}")


def _drain(run: TrainingRun, events: list[TrainingEvent]) -> None:
    while not run.wait(0.5):
        events.extend(run.poll())
    time.sleep(0.2)
    events.extend(run.poll())


def test_lora_learns_a_fact_through_a_worker_sigkill(ray_cluster, chat_model_path, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoModelForCausalLM.from_pretrained(chat_model_path)
    tokenizer = AutoTokenizer.from_pretrained(chat_model_path)
    assert "seven" not in _answer(base, tokenizer, QUESTIONS[0])
    spec = _chat_spec(
        tmp_path,
        chat_model_path,
        "ft-resume",
        hyperparameters=Hyperparameters(n_epochs=15, batch_size=2, learning_rate=5e-3, seed=1),
        save_steps=20,
        max_failures=1,
    )
    run = start_training(spec)
    events: list[TrainingEvent] = []
    first = _follow(run, events, lambda e: e.checkpoint is not None)
    assert first.checkpoint is not None
    os.kill(_worker_pid(ray_cluster["dashboard"]), signal.SIGKILL)
    _drain(run, events)
    result = run.result()

    messages = [e.message for e in events]
    assert result.worker_failures == 1
    assert any(e.level == "warn" and "Training worker 0 failed" in e.message for e in events), messages
    resumed = [e.step for e in events if e.message.startswith("Resuming from the checkpoint at step")]
    assert resumed and resumed[0] is not None and resumed[0] >= first.checkpoint.step_number, messages
    assert result.steps == 120
    steps = [c.step_number for c in result.checkpoints]
    assert steps == sorted(set(steps)) and steps[-1] == 120 and first.checkpoint.step_number in steps
    assert all(Path(c.path, "adapter_config.json").is_file() for c in result.checkpoints)
    assert result.trained_tokens > 0
    assert result.metrics["train_loss"] < 0.5
    metrics = [e for e in events if e.type == "metrics"]
    assert metrics[-1].step == 120 and metrics[-1].train_loss is not None

    output = Path(result.output_dir)
    assert json.loads((output / FINAL_MARKER).read_text())["job_id"] == "ft-resume"
    tuned = PeftModel.from_pretrained(base, output)
    for question in QUESTIONS[:2]:
        assert "seven" in _answer(tuned, tokenizer, question)


def test_worker_sigkill_without_retries_fails_with_the_reason(ray_cluster, chat_model_path, tmp_path):
    spec = _chat_spec(
        tmp_path,
        chat_model_path,
        "ft-no-retries",
        hyperparameters=Hyperparameters(n_epochs=50, batch_size=2, learning_rate=5e-3),
        save_steps=10,
        max_failures=0,
    )
    run = start_training(spec)
    events: list[TrainingEvent] = []
    _follow(run, events, lambda e: e.checkpoint is not None)
    os.kill(_worker_pid(ray_cluster["dashboard"]), signal.SIGKILL)
    _drain(run, events)
    with pytest.raises(TrainingFailed) as info:
        run.result()
    assert type(info.value) is TrainingFailed
    assert "max_failures=0" in info.value.message
    assert "1 worker failure" in info.value.message
    assert "the last checkpoint (step 10) is in" in info.value.message
    assert events[-1].level == "error" and events[-1].message == info.value.message
    assert not list((tmp_path / "storage").rglob(FINAL_MARKER))  # no result, half-trained or not


def test_cancel_stops_a_run_after_its_current_step(ray_cluster, chat_model_path, tmp_path):
    spec = _chat_spec(
        tmp_path,
        chat_model_path,
        "ft-cancel",
        hyperparameters=Hyperparameters(n_epochs=100, batch_size=2),
        max_failures=0,
    )
    run = start_training(spec)
    events: list[TrainingEvent] = []
    _follow(run, events, lambda e: e.type == "metrics")
    asked = time.monotonic()
    run.cancel()
    _drain(run, events)
    stopped = time.monotonic() - asked
    with pytest.raises(TrainingCancelled):
        run.result()
    cancelled = [e for e in events if e.message.startswith("Cancelled at step")]
    assert cancelled, [e.message for e in events]
    assert max(e.step or 0 for e in events if e.type == "metrics") < 800
    assert stopped < 20
    assert not list((tmp_path / "storage").rglob(FINAL_MARKER))


def test_classifier_reaches_held_out_accuracy(ray_cluster, minilm_path, tmp_path):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    spec = TrainingSpec(
        job_id="ft-classifier",
        base_model=minilm_path,
        kind="classification",
        training_file=_jsonl(tmp_path / "train.jsonl", _topics(96, seed=0)),
        validation_file=_jsonl(tmp_path / "valid.jsonl", _topics(48, seed=1)),
        hyperparameters=Hyperparameters(
            n_epochs=3, batch_size=16, learning_rate=5e-3, max_length=32, lora=LoraSettings(r=8, alpha=16)
        ),
        storage_path=str(tmp_path / "storage"),
        max_failures=0,
    )
    events: list[TrainingEvent] = []
    result = run_training(spec, events.append)

    evaluated = [e for e in events if e.accuracy is not None]
    assert [e.step for e in evaluated] == [6, 12, 18]  # one evaluation an epoch
    assert [c.step_number for c in result.checkpoints] == [6, 12, 18]
    assert all("accuracy" in c.metrics and "valid_loss" in c.metrics for c in result.checkpoints)
    assert result.metrics["accuracy"] >= 0.9

    model = AutoModelForSequenceClassification.from_pretrained(result.output_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(result.output_dir)
    assert model.config.id2label == {0: "food", 1: "sports", 2: "weather"}
    held_out = _topics(200, seed=7)
    with torch.no_grad():
        logits = model(**tokenizer([x["text"] for x in held_out], return_tensors="pt", padding=True)).logits
    predicted = [model.config.id2label[i] for i in logits.argmax(-1).tolist()]
    accuracy = sum(p == x["label"] for p, x in zip(predicted, held_out, strict=True)) / len(held_out)
    assert accuracy >= 0.9

    # a checkpoint (adapter + head) becomes a complete classifier too
    exported = export_classifier(
        result.checkpoints[-1].path, tmp_path / "exported", ["food", "sports", "weather"]
    )
    again = AutoModelForSequenceClassification.from_pretrained(exported).eval()
    with torch.no_grad():
        same = again(**tokenizer([x["text"] for x in held_out], return_tensors="pt", padding=True)).logits
    assert torch.allclose(same, logits, atol=1e-4)


def test_cancel_while_waiting_for_resources(ray_cluster, chat_model_path, tmp_path):
    from ray.util.state import list_placement_groups

    # more CPUs than the cluster has: the run waits for resources until it is cancelled
    spec = _chat_spec(tmp_path, chat_model_path, "ft-waits", cpus_per_worker=1000)
    run = start_training(spec)
    events: list[TrainingEvent] = []
    _follow(run, events, lambda e: e.message.startswith("Waiting for resources"), timeout=60)

    def waiting() -> list[Any]:
        groups = list_placement_groups(address=ray_cluster["dashboard"], detail=True)
        # NOTE: the bundles' CPU, not any "1000" (placement-group ids hold "01000000")
        return [g for g in groups if g.state != "REMOVED" and "'CPU': 1000.0" in str(g.bundles)]

    assert len(waiting()) == 1
    run.cancel(force_after_s=30)
    assert run.wait(10)
    with pytest.raises(TrainingCancelled, match="while it waited for resources"):
        run.result()
    assert not waiting()  # nothing left reserved, or waiting to be
