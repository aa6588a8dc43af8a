"""Model sources: local Hugging Face directories and llmaas's own demo models."""

from llmaas.models.demo import RECIPES, build_demo, minilm_path
from llmaas.models.resolve import ModelSourceError, demo_dir, is_prepared, resolve_model_path

__all__ = [
    "RECIPES",
    "ModelSourceError",
    "build_demo",
    "demo_dir",
    "is_prepared",
    "minilm_path",
    "resolve_model_path",
]
