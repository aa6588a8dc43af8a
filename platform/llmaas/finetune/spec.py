"""What a training run is given and what it gives back: typed, picklable, no Ray or torch imports.

The job manager resolves a job's ``"auto"`` hyperparameters into a ``TrainingSpec``;
``llmaas.finetune.train`` runs it and reports ``TrainingEvent``s, then a ``TrainingResult`` (or
raises ``TrainingFailed`` / ``TrainingCancelled``).
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "CheckpointInfo",
    "Hyperparameters",
    "LoraSettings",
    "TrainingCancelled",
    "TrainingEvent",
    "TrainingFailed",
    "TrainingKind",
    "TrainingResult",
    "TrainingSpec",
]

TrainingKind = Literal["causal_lm", "classification"]
#: Ray's own default results folder, as Ray Train's storage_path default.
DEFAULT_STORAGE = "~/ray_results/llmaas-fine-tuning"
_JOB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


class _Base(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LoraSettings(_Base):
    """The LoRA adapter (``peft.LoraConfig``)."""

    r: int = Field(default=8, ge=1, le=1024, description="the adapter's rank")
    alpha: int = Field(default=16, ge=1, description="lora_alpha: the update is scaled by alpha / r")
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0, description="dropout on the adapter's input")
    target_modules: list[str] | None = Field(
        default=None,
        description="modules that get an adapter; None: peft's default for the architecture "
        "(q_proj and v_proj on Llama, query and value on BERT)",
    )

    @field_validator("target_modules")
    @classmethod
    def _some_modules(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and not value:
            raise ValueError(
                "target_modules is empty: name modules (e.g. ['q_proj', 'v_proj']) or leave it out"
            )
        return value


class Hyperparameters(_Base):
    """Concrete values (the job manager resolves OpenAI's ``"auto"`` before it builds a spec)."""

    n_epochs: int = Field(default=3, ge=1, le=100, description="passes over the training file")
    batch_size: int = Field(default=8, ge=1, le=4096, description="examples per step, per worker")
    learning_rate: float = Field(
        default=2e-4, gt=0.0, le=1.0, description="peak learning rate (linear decay)"
    )
    seed: int = Field(default=0, ge=0, description="seeds the new weights, the adapter and the data order")
    max_length: int = Field(default=512, ge=8, description="examples are truncated to this many tokens")
    method: Literal["lora", "full"] = Field(
        default="lora", description="lora: train an adapter; full: every weight (classification only)"
    )
    lora: LoraSettings = Field(default_factory=LoraSettings)


class TrainingSpec(_Base):
    """One training run: what to train, on what, with which settings, where checkpoints go."""

    job_id: str = Field(description="names the run (Ray Train's RunConfig.name) and its storage folder")
    base_model: Path = Field(description="the base model: a local Hugging Face directory")
    kind: TrainingKind = Field(description="causal_lm (chat or completion files) or classification")
    training_file: Path = Field(description="a JSONL file that llmaas.finetune.data.validate_file accepted")
    validation_file: Path | None = Field(default=None, description="held-out examples of the same kind")
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
    storage_path: str = Field(
        default=DEFAULT_STORAGE,
        validate_default=True,
        description="Ray Train's storage_path: a local directory (shared by every node on a multi-node "
        "cluster) or a URI pyarrow knows (s3://, gs://); checkpoints and the result go under job_id",
    )
    num_workers: int = Field(default=1, ge=1, description="data-parallel training workers")
    cpus_per_worker: float = Field(
        default=1.0, gt=0, description="CPUs each worker reserves (and its torch threads)"
    )
    use_gpu: bool = Field(default=False, description="one GPU per worker")
    custom_resources: dict[str, float] = Field(
        default_factory=dict, description="custom Ray resources each worker reserves"
    )
    max_failures: int = Field(
        default=2,
        ge=-1,
        description="worker failures to recover from (from the last checkpoint); -1: no limit",
    )
    save_steps: int | None = Field(
        default=None, ge=1, description="a checkpoint every this many steps; None: one at each epoch's end"
    )
    logging_steps: int = Field(default=1, ge=1, description="a metrics event every this many steps")
    checkpoints_to_keep: int | None = Field(
        default=None, ge=1, description="older checkpoints are deleted past this many; None keeps all"
    )

    def worker_bundle(self) -> dict[str, float]:
        """What each training worker reserves (Ray Train's ``resources_per_worker``)."""
        return {
            "CPU": self.cpus_per_worker,
            **self.custom_resources,
            **({"GPU": 1.0} if self.use_gpu else {}),
        }

    @field_validator("job_id")
    @classmethod
    def _job_id(cls, value: str) -> str:
        if not _JOB_ID.match(value):
            raise ValueError(
                f"job_id {value!r} must be 1-128 letters, digits, '_', '.' or '-' (it names a folder)"
            )
        return value

    @field_validator("base_model")
    @classmethod
    def _base_model(cls, value: Path) -> Path:
        if not (value / "config.json").is_file():
            raise ValueError(
                f"base_model {str(value)!r} is not a Hugging Face model directory (no config.json)"
            )
        return value.resolve()

    @field_validator("training_file", "validation_file")
    @classmethod
    def _file(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"{str(value)!r} is not a file")
        return None if value is None else value.resolve()

    @field_validator("storage_path")
    @classmethod
    def _storage(cls, value: str) -> str:
        if "://" in value:
            return value
        return str(Path(value).expanduser().resolve())  # NOTE: Ray Train wants an absolute path

    @model_validator(mode="after")
    def _method_fits_kind(self) -> TrainingSpec:
        if self.kind == "causal_lm" and self.hyperparameters.method == "full":
            raise ValueError(
                "method 'full' is for classification; causal LMs are tuned with method 'lora' "
                "(the adapter is served on its base model's replicas)"
            )
        return self

    @property
    def file_kinds(self) -> tuple[str, ...]:
        return ("chat", "completion") if self.kind == "causal_lm" else ("classification",)


class CheckpointInfo(_Base):
    """One checkpoint in storage: a Hugging Face Trainer checkpoint directory.

    For a causal LM it is a servable LoRA adapter (adapter_config.json + weights + tokenizer); for
    a full fine-tune a complete model; for a classification LoRA an adapter on the base
    (``llmaas.finetune.export.merge_classifier`` makes it a complete classifier)."""

    step_number: int
    metrics: dict[str, float] = Field(default_factory=dict)
    path: str = Field(description="in storage_path's filesystem (a local directory when storage_path is one)")


class TrainingEvent(_Base):
    """A message or a metrics line, as OpenAI's fine-tuning job events show them."""

    type: Literal["message", "metrics"] = "message"
    level: Literal["info", "warn", "error"] = "info"
    message: str
    created_at: float = Field(default_factory=time.time)
    step: int | None = None
    total_steps: int | None = None
    epoch: float | None = None
    train_loss: float | None = None
    valid_loss: float | None = None
    accuracy: float | None = Field(
        default=None, description="classification: accuracy on the validation file"
    )
    checkpoint: CheckpointInfo | None = Field(
        default=None, description="set on 'Checkpoint created' messages"
    )

    def data(self) -> dict[str, Any]:
        """The metrics as OpenAI's ``event.data`` (only the values this event has)."""
        keys = ("step", "total_steps", "epoch", "train_loss", "valid_loss", "accuracy")
        return {key: getattr(self, key) for key in keys if getattr(self, key) is not None}


class TrainingResult(_Base):
    """A finished run: where its servable artifact is, its checkpoints and its numbers."""

    job_id: str
    kind: TrainingKind
    method: Literal["lora", "full"]
    output_dir: str = Field(
        description="the servable artifact: a LoRA adapter (causal_lm) or a complete classifier directory; "
        "in storage_path's filesystem"
    )
    checkpoints: list[CheckpointInfo] = Field(default_factory=list)
    trained_tokens: int = Field(
        description="tokens trained on: the training file's (truncated) tokens times epochs"
    )
    steps: int
    metrics: dict[str, float] = Field(default_factory=dict, description="the last train/valid loss, accuracy")
    worker_failures: int = Field(default=0, description="worker failures recovered from")


class TrainingFailed(RuntimeError):
    """The run ended without a result; the message says why (never a half-trained result)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.__class__, (self.message,))


class TrainingCancelled(TrainingFailed):
    """The run was cancelled (``TrainingRun.cancel``); its checkpoints so far stay in storage."""
