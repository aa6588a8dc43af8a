"""Model sources: local Hugging Face directories, local GGUF files, and llmaas's own demo models."""

from llmaas.models.demo import GGUF_DEMOS, RECIPES, build_demo, minilm_path, smollm2_gguf_path
from llmaas.models.errors import ModelSourceError
from llmaas.models.gguf import GgufError, GgufInfo, gguf_problems, read_gguf_info
from llmaas.models.gguf_cache import file_digest, is_gguf_prepared, prepare_gguf
from llmaas.models.resolve import demo_dir, gguf_file, is_prepared, resolve_model_path

__all__ = [
    "GGUF_DEMOS",
    "RECIPES",
    "GgufError",
    "GgufInfo",
    "ModelSourceError",
    "build_demo",
    "demo_dir",
    "file_digest",
    "gguf_file",
    "gguf_problems",
    "is_gguf_prepared",
    "is_prepared",
    "minilm_path",
    "prepare_gguf",
    "read_gguf_info",
    "resolve_model_path",
    "smollm2_gguf_path",
]
