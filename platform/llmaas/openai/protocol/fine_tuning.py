"""OpenAI's files and fine-tuning API, as the ``openai`` client sends and reads it.

Files: ``FileObject`` (``status`` uploaded, processed or error, with ``status_details`` naming
the line at fault), lists and deletions. Jobs: ``CreateFineTuningJob`` (``hyperparameters`` or
``method.supervised.hyperparameters``, each value ``"auto"`` or a number; llmaas's own options
``task`` and LoRA settings come through ``extra_body``), the job object with its ``"auto"``
values resolved, cursor pages, events (messages and ``type: "metrics"`` with step and losses)
and checkpoints.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, model_validator

from llmaas.openai.protocol.base import Strict
from llmaas.openai.protocol.tools import NAME_PATTERN

# ---- files ---------------------------------------------------------------------------------------


class FileObject(BaseModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: Literal["uploaded", "processed", "error"]
    status_details: str | None = None
    expires_at: int | None = None


class FileList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FileObject]
    has_more: bool = False
    first_id: str | None = None
    last_id: str | None = None


class FileDeleted(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool


# ---- jobs ----------------------------------------------------------------------------------------
Auto = Literal["auto"]
PositiveInt = Annotated[int, Field(ge=1, le=1000)]


class HyperparametersIn(Strict):
    n_epochs: Auto | Annotated[int, Field(ge=1, le=50)] = "auto"
    batch_size: Auto | Annotated[int, Field(ge=1, le=256)] = "auto"
    learning_rate_multiplier: Auto | Annotated[float, Field(gt=0, le=100)] = "auto"


class SupervisedMethod(Strict):
    hyperparameters: HyperparametersIn = Field(default_factory=HyperparametersIn)


class MethodIn(Strict):
    type: Literal["supervised"] = "supervised"
    supervised: SupervisedMethod | None = None


class CreateFineTuningJob(Strict):
    model: str = Field(min_length=1)
    training_file: str = Field(min_length=1)
    validation_file: str | None = None
    hyperparameters: HyperparametersIn | None = None
    method: MethodIn | None = None
    suffix: str | None = Field(default=None, min_length=1, max_length=64, pattern=NAME_PATTERN)
    seed: Annotated[int, Field(ge=0, le=2**31 - 1)] | None = None
    metadata: dict[str, str] | None = Field(default=None, max_length=16)
    integrations: list[dict[str, Any]] | None = Field(
        default=None, max_length=0, description="Not supported."
    )
    # llmaas's options (the openai client sends them through extra_body)
    task: Literal["causal_lm", "classification"] | None = Field(
        default=None, description="llmaas: what to train; default: from the training file's kind."
    )
    lora_r: Annotated[int, Field(ge=1, le=256)] | None = None
    lora_alpha: Annotated[int, Field(ge=1, le=1024)] | None = None
    lora_target_modules: list[str] | None = None
    training_method: Literal["lora", "full"] | None = Field(
        default=None, description="llmaas: LoRA (default) or full fine-tuning (classifiers only)."
    )

    @model_validator(mode="after")
    def _one_place_for_hyperparameters(self) -> CreateFineTuningJob:
        nested = self.method is not None and self.method.supervised is not None
        if nested and self.hyperparameters is not None:
            raise ValueError("give hyperparameters or method.supervised.hyperparameters, not both")
        return self

    def given_hyperparameters(self) -> HyperparametersIn:
        if self.method is not None and self.method.supervised is not None:
            return self.method.supervised.hyperparameters
        return self.hyperparameters or HyperparametersIn()


class JobErrorOut(BaseModel):
    code: str
    message: str
    param: str | None = None


class HyperparametersOut(BaseModel):
    n_epochs: int | Auto
    batch_size: int | Auto
    learning_rate_multiplier: float | Auto


class MethodOut(BaseModel):
    type: Literal["supervised"] = "supervised"
    supervised: dict[str, HyperparametersOut]


class FineTuningJob(BaseModel):
    id: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    created_at: int
    error: JobErrorOut | None = None
    fine_tuned_model: str | None = None
    finished_at: int | None = None
    hyperparameters: HyperparametersOut
    method: MethodOut
    model: str
    organization_id: str = "llmaas"
    result_files: list[str] = Field(default_factory=list)
    seed: int
    status: Literal["validating_files", "queued", "running", "succeeded", "failed", "cancelled"]
    trained_tokens: int | None = None
    training_file: str
    validation_file: str | None = None
    user_provided_suffix: str | None = None
    metadata: dict[str, str] | None = None
    estimated_finish: int | None = None
    integrations: list[dict[str, Any]] | None = None


class FineTuningJobList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FineTuningJob]
    has_more: bool = False


class FineTuningJobEvent(BaseModel):
    id: str
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    created_at: int
    level: Literal["info", "warn", "error"]
    message: str
    type: Literal["message", "metrics"] = "message"
    data: dict[str, Any] | None = None


class FineTuningEventList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FineTuningJobEvent]
    has_more: bool = False


class FineTuningJobCheckpoint(BaseModel):
    id: str
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    created_at: int
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    metrics: dict[str, float]
    step_number: int


class FineTuningCheckpointList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FineTuningJobCheckpoint]
    has_more: bool = False
    first_id: str | None = None
    last_id: str | None = None


class ModelDeleted(BaseModel):
    id: str
    object: Literal["model"] = "model"
    deleted: bool


__all__ = [
    "CreateFineTuningJob",
    "FileDeleted",
    "FileList",
    "FileObject",
    "FineTuningCheckpointList",
    "FineTuningEventList",
    "FineTuningJob",
    "FineTuningJobCheckpoint",
    "FineTuningJobEvent",
    "FineTuningJobList",
    "HyperparametersIn",
    "HyperparametersOut",
    "JobErrorOut",
    "MethodOut",
    "ModelDeleted",
]
