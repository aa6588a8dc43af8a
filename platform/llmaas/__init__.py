"""llmaas: an OpenAI-compatible, multi-model LLM service on Ray Serve and DeepSpeed-inference."""

from llmaas.client import LLMClient, LLMError
from llmaas.config.catalog import Catalog, ModelSpec, Task

__version__ = "0.1.0"

__all__ = ["Catalog", "LLMClient", "LLMError", "ModelSpec", "Task", "__version__"]
