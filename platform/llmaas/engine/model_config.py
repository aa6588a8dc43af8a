"""Reading a transformers model config whatever its family names a field (Llama, GPT-2, ...)."""

from __future__ import annotations

from typing import Any

import torch


def config_int(config: Any, *names: str, default: int) -> int:
    """The first of ``names`` that ``config`` holds as a positive int, else ``default``."""
    for name in names:
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return default


def model_context_length(config: Any) -> int:
    return config_int(
        config, "max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", default=2048
    )


def kv_bytes_per_token(config: Any, dtype: torch.dtype, tensor_parallel_size: int = 1) -> int:
    """Bytes of K and V one token takes in one rank's cache, over all layers."""
    layers = config_int(config, "num_hidden_layers", "n_layer", default=1)
    heads = config_int(config, "num_attention_heads", "n_head", default=1)
    kv_heads = config_int(config, "num_key_value_heads", default=heads)
    head_dim = config_int(
        config, "head_dim", default=config_int(config, "hidden_size", "n_embd", default=heads) // heads
    )
    local_kv_heads = max(1, kv_heads // max(1, tensor_parallel_size))
    element = torch.empty((), dtype=dtype).element_size()
    return 2 * layers * local_kv_heads * head_dim * element
