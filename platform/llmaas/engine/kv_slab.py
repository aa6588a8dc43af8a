"""A KV cache layer over preallocated buffers, for the running batch.

transformers' ``DynamicLayer`` concatenates every decode step's K/V onto the whole cache, a copy
of the cache per step and layer. ``SlabLayer`` keeps K/V in buffers with room to grow: a decode
step writes its column in place, dropping left padding moves a start offset, and only a join, a
departing row, or running out of room copies the live region (into a buffer with fresh headroom).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer


def _headroom(tokens: int) -> int:
    return max(32, tokens // 4)


class _Slab:
    """One tensor's buffer and its live region ``[start, end)`` along the token axis."""

    def __init__(self, value: torch.Tensor) -> None:
        batch, heads, tokens, dim = value.shape
        self.buffer = value.new_empty((batch, heads, tokens + _headroom(tokens), dim))
        self.buffer[:, :, :tokens] = value
        self.start, self.end = 0, tokens

    @property
    def live(self) -> torch.Tensor:
        return self.buffer[:, :, self.start : self.end]

    def append(self, value: torch.Tensor) -> _Slab:
        """Write ``value`` after the live region: in place, or into a bigger copy when out of room."""
        tokens = value.shape[2]
        if self.end + tokens > self.buffer.shape[2]:
            grown = _Slab(self.live)
            return grown.append(value)
        self.buffer[:, :, self.end : self.end + tokens] = value
        self.end += tokens
        return self


class SlabLayer(DynamicLayer):
    """A ``DynamicLayer`` whose ``keys``/``values`` are views of the live regions of larger buffers."""

    def __init__(self) -> None:
        super().__init__()
        self._k: _Slab | None = None
        self._v: _Slab | None = None

    # NOTE: transformers (and our merge) assign ``keys`` and ``values`` whole, one after the
    # other; each assignment copies into a fresh buffer with headroom.
    @property
    def keys(self) -> Any:
        return None if self._k is None else self._k.live

    @keys.setter
    def keys(self, value: torch.Tensor | None) -> None:
        self._k = _Slab(value) if value is not None and value.dim() == 4 else None

    @property
    def values(self) -> Any:
        return None if self._v is None else self._v.live

    @values.setter
    def values(self, value: torch.Tensor | None) -> None:
        self._v = _Slab(value) if value is not None and value.dim() == 4 else None

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.dtype, self.device = key_states.dtype, key_states.device
            self.is_initialized = True
        if self._k is None or self._v is None:
            self._k, self._v = _Slab(key_states), _Slab(value_states)
        else:
            self._k, self._v = self._k.append(key_states), self._v.append(value_states)
        return self._k.live, self._v.live

    def get_seq_length(self) -> int:
        return 0 if self._k is None else self._k.end - self._k.start

    def trim_left(self, tokens: int) -> None:
        """Drop the first ``tokens`` columns (padding in every row) without copying."""
        for slab in (self._k, self._v):
            if slab is not None:
                slab.start = min(slab.end, slab.start + tokens)

    def reset(self) -> None:
        self._k = self._v = None
        self.is_initialized = False


def slab_cache(config: Any) -> DynamicCache:
    """A ``DynamicCache`` for ``config`` whose layers are ``SlabLayer``s."""
    cache = DynamicCache(config=config)
    cache.layers = [SlabLayer() for _ in cache.layers]
    return cache
