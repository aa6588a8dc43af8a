"""Fine-tuning: training files (``data``), and training runs on the Ray cluster (``train``).

Importing this package imports neither Ray nor torch: ``train`` loads them when a run starts.
"""

from llmaas.finetune.data import (
    FileCheck,
    FileKind,
    TrainingFileError,
    count_tokens,
    iter_examples,
    validate_file,
)
from llmaas.finetune.export import export_classifier
from llmaas.finetune.spec import (
    CheckpointInfo,
    Hyperparameters,
    LoraSettings,
    TrainingCancelled,
    TrainingEvent,
    TrainingFailed,
    TrainingKind,
    TrainingResult,
    TrainingSpec,
)
from llmaas.finetune.train import TrainingRun, check_files, run_training, start_training

__all__ = [
    "CheckpointInfo",
    "FileCheck",
    "FileKind",
    "Hyperparameters",
    "LoraSettings",
    "TrainingCancelled",
    "TrainingEvent",
    "TrainingFailed",
    "TrainingFileError",
    "TrainingKind",
    "TrainingResult",
    "TrainingRun",
    "TrainingSpec",
    "check_files",
    "count_tokens",
    "export_classifier",
    "iter_examples",
    "run_training",
    "start_training",
    "validate_file",
]
