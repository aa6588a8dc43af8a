"""The catalog's ``fine_tuning`` section: which models users may tune, where data and results
live, and what a job may use. Leaving it out turns the files and fine-tuning routes off."""

from __future__ import annotations

from pydantic import Field

from llmaas.config.base import BaseConfig


class JobResources(BaseConfig):
    """What one training job takes from the cluster (Ray Train's ScalingConfig)."""

    num_workers: int = Field(default=1, ge=1, le=64, description="Training workers (data parallel).")
    cpus_per_worker: float = Field(default=1.0, gt=0)
    gpus_per_worker: float = Field(default=0.0, ge=0)
    memory_bytes_per_worker: int | None = Field(default=None, ge=1)
    custom: dict[str, float] = Field(
        default_factory=dict,
        description="Custom Ray resources per worker, e.g. one that only a node type has, to train there "
        "(the autoscaler brings such a node up for a job).",
    )


class FineTuningConfig(BaseConfig):
    base_models: list[str] = Field(
        default_factory=list,
        description="Catalog model ids that may be tuned (generative: LoRA; classify or embed encoders: "
        "a classifier). Empty: every catalog model.",
    )
    storage_path: str = Field(
        default="~/.cache/llmaas/fine-tuning",
        description="Uploaded files, checkpoints and results. A local directory, or (for Ray Train's "
        "checkpoints) any URI Ray Train's storage_path accepts, such as s3://bucket/path.",
    )
    database: str | None = Field(
        default=None,
        description="Where files and jobs are recorded: sqlite:///PATH or postgresql://...; default: the "
        "gateway's database, or a SQLite file under storage_path without a gateway.",
    )
    max_file_bytes: int = Field(default=100 * 2**20, ge=1024, description="The largest upload accepted.")
    max_concurrent_jobs: int = Field(default=1, ge=1, description="Jobs training at once; others queue.")
    max_trained_tokens: int = Field(
        default=5_000_000, ge=1, description="Tokens one job may train on (file tokens x epochs)."
    )
    resources: JobResources = Field(default_factory=JobResources)
    max_failures: int = Field(
        default=2, ge=0, description="Worker failures a job survives (it resumes from its last checkpoint)."
    )

    def database_url(self, gateway_database: str | None) -> str:
        if self.database is not None:
            return self.database
        if gateway_database is not None:
            return gateway_database
        return f"sqlite:///{self.storage_path.rstrip('/')}/fine_tuning.db"
