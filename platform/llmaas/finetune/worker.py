"""The training function each Ray Train worker runs: Hugging Face ``Trainer`` + PEFT.

Ray Train (``llmaas.finetune.train``) starts the workers, sets up torch.distributed between them
and restarts them from the last checkpoint after a failure; this module is what runs inside:

1. read and encode the files (``llmaas.finetune.encode``); build the model (LoRA adapter or, for
   classification, optionally every weight);
2. ``Trainer.train``, resumed from ``ray.train.get_checkpoint()`` when Ray Train hands one over
   (a restarted worker group, or a rerun of the same job id);
3. checkpoints: the Trainer saves them locally and Ray's ``RayTrainReportCallback`` reports each
   to Ray Train, which persists it under ``storage_path``/``job_id``;
4. the servable artifact (adapter, or complete classifier) is reported as the run's last
   checkpoint, marked ``final``, so Ray Train persists it to any storage it supports.

Events (step metrics, messages) go from world rank 0 straight to the run's event log actor; the
cancel flag comes back from it, checked after every step (rank 0 asks, then broadcasts the answer
so that every worker stops at the same step).
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import tempfile
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

from llmaas.finetune.data import iter_examples, sorted_labels
from llmaas.finetune.encode import IGNORE_INDEX, encode_example
from llmaas.finetune.export import FINAL_MARKER, load_classifier_base, merge_classifier
from llmaas.finetune.spec import TrainingEvent, TrainingSpec

__all__ = ["train_loop_per_worker"]

logger = logging.getLogger(__name__)

#: The folder inside a Ray checkpoint that holds the Trainer's own (RayTrainReportCallback's layout).
HF_CHECKPOINT = "checkpoint"


class _Log:
    """The event log actor, as a worker uses it: fire-and-forget puts, a cancel check."""

    def __init__(self, sink: Any, rank: int) -> None:
        self.sink = sink
        self.rank = rank

    def put(self, event: TrainingEvent) -> None:
        if self.rank == 0 and self.sink is not None:
            self.sink.put.remote(event)

    def cancelled(self) -> bool:
        import ray

        if self.sink is None:
            return False
        try:
            return bool(ray.get(self.sink.cancelled.remote(), timeout=30))
        except Exception:  # the log gone or slow: keep training; the caller can still force-cancel
            return False


def _labels_of(spec: TrainingSpec) -> list[str]:
    labels: set[str] = set()
    all_ints = True
    for record in iter_examples(spec.training_file):
        labels.add(str(record["label"]))
        all_ints = all_ints and isinstance(record["label"], int) and not isinstance(record["label"], bool)
    return sorted_labels(labels, all_ints)


def _encode_file(
    path: Path, spec: TrainingSpec, tokenizer: Any, label2id: dict[str, int] | None
) -> tuple[list[dict[str, Any]], int, int]:
    """(examples, tokens trained per epoch, examples dropped for having nothing left to learn)."""
    examples: list[dict[str, Any]] = []
    tokens = dropped = 0
    max_length = spec.hyperparameters.max_length
    for record in iter_examples(path):
        kind = "classification" if "label" in record else ("chat" if "messages" in record else "completion")
        encoded = encode_example(record, tokenizer, kind, max_length)
        if label2id is not None:
            label = str(record["label"])
            if label not in label2id:
                raise ValueError(
                    f"{path.name}: label {label!r} is not among the training file's labels {sorted(label2id)}"
                )
            examples.append({"input_ids": encoded.input_ids, **encoded.extra, "labels": label2id[label]})
        else:
            if encoded.learned_tokens == 0:  # truncated away: nothing to learn from it
                dropped += 1
                continue
            examples.append({"input_ids": encoded.input_ids, "labels": encoded.labels})
        tokens += len(encoded.input_ids)
    return examples, tokens, dropped


def _collator(spec: TrainingSpec, tokenizer: Any) -> Any:
    from transformers import DataCollatorForSeq2Seq, DataCollatorWithPadding

    if spec.kind == "classification":
        return DataCollatorWithPadding(tokenizer)
    # NOTE: the Seq2Seq collator pads ready-made labels with -100; nothing in it is seq2seq-only.
    return DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=IGNORE_INDEX, padding=True)


def _model(spec: TrainingSpec, labels: list[str] | None) -> Any:
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForCausalLM

    hp = spec.hyperparameters
    if spec.kind == "classification":
        assert labels is not None
        model = load_classifier_base(spec.base_model, labels)
        task = TaskType.SEQ_CLS
    else:
        model = AutoModelForCausalLM.from_pretrained(spec.base_model)
        task = TaskType.CAUSAL_LM
    if hp.method == "full":
        return model
    config = LoraConfig(
        task_type=task,  # SEQ_CLS: peft trains and saves the classification head too (modules_to_save)
        r=hp.lora.r,
        lora_alpha=hp.lora.alpha,
        lora_dropout=hp.lora.dropout,
        target_modules=hp.lora.target_modules,
    )
    return get_peft_model(model, config)


def _accuracy(prediction: Any) -> dict[str, float]:
    import numpy as np

    logits, labels = prediction.predictions, prediction.label_ids
    if isinstance(logits, tuple):
        logits = logits[0]
    return {"accuracy": float((np.argmax(logits, axis=-1) == labels).mean())}


def _fmt(value: float | None) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


def _cancelled(log: _Log, world_size: int) -> bool:
    """Rank 0 asks the event log; every worker gets its answer.

    NOTE: workers must agree (stop at the same step, or none starts), or the others wait in a
    collective for one that has left."""
    stop = log.cancelled() if log.rank == 0 else False
    if world_size > 1:
        import torch
        import torch.distributed as dist

        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
        flag = torch.tensor([1 if stop else 0], device=device)
        dist.broadcast(flag, src=0)
        stop = bool(flag.item())
    return stop


def _callbacks(log: _Log, world_size: int) -> list[Any]:
    """[events, Ray's report callback]; ``events.cancelled`` says whether training stopped for a cancel
    (the same answer on every worker)."""
    from transformers import TrainerCallback

    class Events(TrainerCallback):
        """Step metrics to the event log (rank 0) and the cancel flag from it (every rank)."""

        cancelled = False

        def on_log(
            self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **_: Any
        ) -> None:
            if not logs or not state.is_world_process_zero:
                return
            step, total = int(state.global_step), int(state.max_steps)
            if "train_runtime" in logs:
                return  # the Trainer's end-of-run summary: the final event says it
            train_loss, valid_loss, accuracy = (
                logs.get("loss"),
                logs.get("eval_loss"),
                logs.get("eval_accuracy"),
            )
            parts = [f"Step {step}/{total}:"]
            if train_loss is not None:
                parts.append(f"training loss={_fmt(train_loss)}")
            if valid_loss is not None:
                parts.append(f"validation loss={_fmt(valid_loss)}")
            if accuracy is not None:
                parts.append(f"accuracy={_fmt(accuracy)}")
            log.put(
                TrainingEvent(
                    type="metrics",
                    message=" ".join(parts),
                    step=step,
                    total_steps=total,
                    epoch=logs.get("epoch", state.epoch),
                    train_loss=train_loss,
                    valid_loss=valid_loss,
                    accuracy=accuracy,
                )
            )

        def on_step_end(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            if _cancelled(log, world_size):
                self.cancelled = True
                control.should_training_stop = True
                control.should_save = False
                control.should_evaluate = False

    from ray.train.huggingface.transformers import RayTrainReportCallback

    return [Events(), RayTrainReportCallback()]


def _restored(checkpoint: Any) -> AbstractContextManager[Any]:
    return checkpoint.as_directory() if checkpoint is not None else nullcontext(None)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train's ``train_loop_per_worker``: ``config`` holds the spec (as JSON) and the event log."""
    import ray.train
    import torch
    from ray.train.huggingface.transformers import prepare_trainer
    from transformers import AutoTokenizer, Trainer, TrainingArguments, set_seed

    spec = TrainingSpec.model_validate(config["spec"])
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    log = _Log(config.get("sink"), rank)
    if _cancelled(log, world_size):
        return
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            if (Path(folder) / FINAL_MARKER).exists():  # finished before: a rerun has nothing to do
                return
    hp = spec.hyperparameters
    torch.set_num_threads(max(1, int(spec.cpus_per_worker)))
    set_seed(hp.seed)
    random.seed(hp.seed)

    tokenizer = AutoTokenizer.from_pretrained(spec.base_model)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    labels = _labels_of(spec) if spec.kind == "classification" else None
    label2id = {label: i for i, label in enumerate(labels)} if labels else None
    train_set, tokens, dropped = _encode_file(spec.training_file, spec, tokenizer, label2id)
    valid_set = (
        _encode_file(spec.validation_file, spec, tokenizer, label2id)[0] if spec.validation_file else None
    )
    if not train_set:
        raise ValueError(
            f"no example of {spec.training_file.name} has a token to learn within {hp.max_length} tokens"
        )
    if dropped:
        log.put(
            TrainingEvent(
                level="warn",
                message=f"{dropped} example(s) dropped: nothing left to learn within {hp.max_length} tokens",
            )
        )
    model = _model(spec, labels)

    per_epoch = math.ceil(len(train_set) / (hp.batch_size * world_size))
    strategy = "steps" if spec.save_steps else "epoch"
    callbacks = _callbacks(log, world_size)
    events = callbacks[0]
    workdir = Path(tempfile.mkdtemp(prefix=f"llmaas-ft-{spec.job_id}-{rank}-"))
    args = TrainingArguments(
        output_dir=str(workdir),
        num_train_epochs=hp.n_epochs,
        per_device_train_batch_size=hp.batch_size,
        per_device_eval_batch_size=hp.batch_size,
        learning_rate=hp.learning_rate,
        seed=hp.seed,
        data_seed=hp.seed,
        logging_strategy="steps",
        logging_steps=spec.logging_steps,
        save_strategy=strategy,
        save_steps=spec.save_steps or 500,
        # NOTE: evaluation runs when a checkpoint is saved, so each checkpoint's metrics are fresh
        # (RayTrainReportCallback reports the latest metrics with each checkpoint).
        eval_strategy=strategy if valid_set else "no",
        eval_steps=spec.save_steps,
        save_total_limit=1,  # locally; Ray Train keeps the persisted ones
        report_to="none",
        disable_tqdm=True,
        use_cpu=not spec.use_gpu,
        dataloader_num_workers=0,
        remove_unused_columns=False,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train_set,
        eval_dataset=valid_set,
        data_collator=_collator(spec, tokenizer),
        processing_class=tokenizer,  # saved in every checkpoint, so each one is servable
        compute_metrics=_accuracy if spec.kind == "classification" else None,
        callbacks=callbacks,
    )
    trainer = prepare_trainer(trainer)
    total = per_epoch * hp.n_epochs
    try:
        with _restored(checkpoint) as folder:
            if folder is not None:
                resume = Path(folder) / HF_CHECKPOINT
                step = json.loads((resume / "trainer_state.json").read_text())["global_step"]
                log.put(TrainingEvent(message=f"Resuming from the checkpoint at step {step}", step=step))
            else:
                resume = None
                log.put(
                    TrainingEvent(
                        message=f"Training started: {len(train_set)} examples, {total} steps "
                        f"({hp.n_epochs} epochs of {per_epoch}), {world_size} worker(s); "
                        f"worker 0 is pid {os.getpid()}",
                        total_steps=total,
                    )
                )
            trainer.train(resume_from_checkpoint=str(resume) if resume else None)
        if events.cancelled:
            log.put(TrainingEvent(level="warn", message=f"Cancelled at step {trainer.state.global_step}"))
            return
        _finish(spec, trainer, tokenizer, rank, tokens * hp.n_epochs)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _final_metrics(trainer: Any) -> dict[str, float]:
    metrics: dict[str, float] = {}
    names = {"loss": "train_loss", "eval_loss": "valid_loss", "eval_accuracy": "accuracy"}
    for entry in trainer.state.log_history:
        for key, name in names.items():
            if isinstance(entry.get(key), int | float):
                metrics[name] = float(entry[key])
    return metrics


def _finish(spec: TrainingSpec, trainer: Any, tokenizer: Any, rank: int, trained_tokens: int) -> None:
    """Report the servable artifact as the run's final checkpoint (rank 0 writes it)."""
    import ray.train

    metrics = {
        **_final_metrics(trainer),
        "final": 1.0,
        "step": float(trainer.state.global_step),
        "trained_tokens": float(trained_tokens),
    }
    if rank != 0:
        ray.train.report(metrics=metrics, checkpoint=None)
        return
    with tempfile.TemporaryDirectory(prefix=f"llmaas-ft-{spec.job_id}-out-") as out:
        model = trainer.model
        if spec.kind == "classification" and spec.hyperparameters.method == "lora":
            model = merge_classifier(model)
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        (Path(out) / FINAL_MARKER).write_text(
            json.dumps(
                {
                    "job_id": spec.job_id,
                    "kind": spec.kind,
                    "method": spec.hyperparameters.method,
                    "base_model": str(spec.base_model),
                    **metrics,
                },
                indent=2,
            )
        )
        ray.train.report(metrics=metrics, checkpoint=ray.train.Checkpoint.from_directory(out))
