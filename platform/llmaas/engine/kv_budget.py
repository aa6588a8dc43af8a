"""The KV cache budget of a replica, and the admission rule that keeps the batch inside it.

The running batch keeps one left-padded, right-aligned KV tensor per layer, and columns that are
padding in every row are trimmed each step, so its width is the length of its longest live row.
A batch of ``n`` rows that each end at ``prompt + max_new`` tokens therefore never holds more than
``n * max(prompt + max_new)`` token slots. Admission reserves that bound: a sequence joins only
when the bound, with it included, fits the budget; otherwise it waits for rows to finish. The
bound is conservative (a paged cache would pack tighter) but it can never be exceeded, so a
replica cannot run out of memory mid-generation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from llmaas.config.catalog import ModelSpec


def kv_bytes_per_token(config: Any, dtype: torch.dtype, tensor_parallel_size: int = 1) -> int:
    """Bytes of K and V one token takes in one rank's cache, over all layers."""

    def field(*names: str, default: int) -> int:
        for name in names:
            value = getattr(config, name, None)
            if isinstance(value, int) and value > 0:
                return value
        return default

    layers = field("num_hidden_layers", "n_layer", default=1)
    heads = field("num_attention_heads", "n_head", default=1)
    kv_heads = field("num_key_value_heads", default=heads)
    head_dim = field("head_dim", default=field("hidden_size", "n_embd", default=heads) // heads)
    local_kv_heads = max(1, kv_heads // max(1, tensor_parallel_size))
    element = torch.empty((), dtype=dtype).element_size()
    return 2 * layers * local_kv_heads * head_dim * element


@dataclass(frozen=True)
class KVBudget:
    """How many token slots the cache may hold, and whether a batch fits them."""

    capacity_tokens: int
    bytes_per_token: int

    @classmethod
    def for_model(cls, spec: ModelSpec, config: Any, dtype: torch.dtype, max_context_length: int) -> KVBudget:
        per_token = kv_bytes_per_token(config, dtype, spec.tensor_parallel_size)
        budget = spec.batching.kv_cache_bytes
        if budget is None:
            capacity = spec.batching.max_batch_size * max_context_length
        else:
            capacity = int(budget) // per_token
        return cls(capacity_tokens=capacity, bytes_per_token=per_token)

    @property
    def capacity_bytes(self) -> int:
        return self.capacity_tokens * self.bytes_per_token

    def fits(self, rows: int, longest: int) -> bool:
        """Whether ``rows`` sequences, the longest ending at ``longest`` tokens, fit the cache."""
        return rows * longest <= self.capacity_tokens
