"""Configuration schemas: the model catalog and its parts."""

from llmaas.config.base import BaseConfig
from llmaas.config.catalog import (
    AutoscalingConfig,
    BatchingConfig,
    Catalog,
    ComponentConfig,
    ModelSource,
    ModelSpec,
    ReplicaConfig,
    SamplingDefaults,
    Task,
    TokenizerConfig,
    WorkerResources,
)
from llmaas.naming import deployment_name

__all__ = [
    "AutoscalingConfig",
    "BaseConfig",
    "BatchingConfig",
    "Catalog",
    "ComponentConfig",
    "ModelSource",
    "ModelSpec",
    "ReplicaConfig",
    "SamplingDefaults",
    "Task",
    "TokenizerConfig",
    "WorkerResources",
    "deployment_name",
]
