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
from llmaas.engine.model_config import kv_bytes_per_token, model_context_length


def context_length(spec: ModelSpec, config: Any) -> int:
    """The context a replica serves: the catalog's ``max_context_length`` within the model's own."""
    limit = model_context_length(config)
    return min(spec.max_context_length or limit, limit)


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

    def fits(self, rows: int, longest: int) -> bool:
        """Whether ``rows`` sequences, the longest ending at ``longest`` tokens, fit the cache."""
        return rows * longest <= self.capacity_tokens
