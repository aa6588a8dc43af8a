"""A KV cache layer over preallocated buffers, for the running batch.

transformers' ``DynamicLayer`` concatenates every decode step's K/V onto the whole cache, a copy
of the cache per step and layer, and copies it whole again when rows leave or join. ``SlabLayer``
keeps K/V in buffers with spare rows and spare tokens on both sides of the live block:

- a decode step writes its column in place;
- dropping left padding moves a start offset;
- departing rows are replaced by the last rows (only those move);
- joining rows are written below the live rows, right-aligned, left-padded with zeros;
- only running out of room copies the live block, into a buffer with fresh headroom.

The spare rows and tokens stay within the replica's KV budget (``limit``, in token slots: rows x
tokens): near it they shrink, spare rows first and the room for decode steps last, never below
what the live block needs, which admission keeps within the budget (``llmaas.engine.kv_budget``).
A cache that only grows one prompt (chunked prefill) keeps no spare rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer


def _headroom(tokens: int) -> int:
    return max(32, tokens // 4)


def _spare_rows(rows: int) -> int:
    return max(8, rows // 2)


@dataclass(frozen=True)
class SlabLimits:
    """How much a slab may hold beyond its live block."""

    limit: int | None = None  # token slots (rows x tokens) a buffer may take; None: unbounded
    spare_rows: bool = True  # rows for joining sequences (a running batch); False: one prompt


def _shape(rows: int, tokens: int, limits: SlabLimits) -> tuple[int, int, int]:
    """Row capacity, token capacity and left room of a buffer for ``rows`` x ``tokens`` live slots."""
    room = _headroom(tokens)
    row_capacity = rows + (_spare_rows(rows) if limits.spare_rows else 0)
    token_capacity = tokens + 2 * room
    if limits.limit is not None and row_capacity * token_capacity > limits.limit:
        row_capacity = max(rows, min(row_capacity, limits.limit // token_capacity))
        token_capacity = max(tokens, min(token_capacity, limits.limit // row_capacity))
    spare = token_capacity - tokens
    return row_capacity, token_capacity, spare - min(room, spare)  # decode steps' room goes last


class _Slab:
    """One tensor's buffer ``[row capacity, heads, token capacity, dim]``.

    The live block is rows ``[0, rows)`` and tokens ``[start, end)``. Buffers start zeroed, so
    whatever a row's attention mask hides is finite (a NaN there would poison softmax @ V).
    """

    def __init__(
        self,
        value: torch.Tensor,
        limits: SlabLimits,
        *,
        extra_rows: int = 0,
        left: int = 0,
        right: int = 0,
    ) -> None:
        batch, heads, tokens, dim = value.shape
        row_capacity, token_capacity, left_room = _shape(batch + extra_rows, left + tokens + right, limits)
        self.limits = limits
        self.buffer = value.new_zeros((row_capacity, heads, token_capacity, dim))
        self.rows = batch
        self.start = left_room + left
        self.end = self.start + tokens
        self.buffer[:batch, :, self.start : self.end] = value

    @property
    def live(self) -> torch.Tensor:
        return self.buffer[: self.rows, :, self.start : self.end]

    @property
    def width(self) -> int:
        return self.end - self.start

    def append(self, value: torch.Tensor) -> _Slab:
        """Write ``value`` (every live row) after the live block: in place, or into a bigger copy."""
        tokens = value.shape[2]
        if self.end + tokens > self.buffer.shape[2]:
            return _Slab(self.live, self.limits, right=tokens).append(value)
        self.buffer[: self.rows, :, self.end : self.end + tokens] = value
        self.end += tokens
        return self

    def join(self, value: torch.Tensor) -> _Slab:
        """Add ``value``'s rows below the live ones, right-aligned with them; pad the shorter side."""
        rows, tokens = value.shape[0], value.shape[2]
        wider = max(0, tokens - self.width)
        if self.rows + rows > self.buffer.shape[0] or wider > self.start:
            return _Slab(self.live, self.limits, extra_rows=rows, left=wider).join(value)
        if wider:
            self.start -= wider
            self.buffer[: self.rows, :, self.start : self.start + wider] = 0
        new = self.buffer[self.rows : self.rows + rows, :, self.start : self.end]
        new[:, :, : self.width - tokens] = 0
        new[:, :, self.width - tokens :] = value
        self.rows += rows
        return self

    def select(self, indices: list[int]) -> None:
        """Keep rows ``indices`` in that order, like ``live[indices]``.

        When every kept row either stays where it is or comes from beyond the new row count
        (what ``compaction_order`` produces), only the rows that move are copied.
        """
        count = len(indices)
        moves = [(dst, src) for dst, src in enumerate(indices) if dst != src]
        in_place = len(set(indices)) == count and all(src >= count for _, src in moves)
        block = slice(self.start, self.end)
        if in_place and moves:
            dst = torch.tensor([d for d, _ in moves], device=self.buffer.device)
            src = torch.tensor([s for _, s in moves], device=self.buffer.device)
            self.buffer[dst, :, block] = self.buffer[src, :, block]
        elif moves or count != self.rows:
            index = torch.tensor(indices, device=self.buffer.device)
            self.buffer[:count, :, block] = self.live.index_select(0, index)
        self.rows = count


def compaction_order(keep: list[int]) -> list[int]:
    """``keep`` (ascending row numbers) reordered so that as few rows as possible move.

    Kept rows below the new row count stay where they are; the kept rows beyond it fill the
    holes left by departing rows.
    """
    count = len(keep)
    kept = set(keep)
    holes = [row for row in range(count) if row not in kept]
    movers = [row for row in keep if row >= count]
    order = list(range(count))
    for hole, mover in zip(holes, movers, strict=True):
        order[hole] = mover
    return order


class SlabLayer(DynamicLayer):
    """A ``DynamicLayer`` whose ``keys``/``values`` are views of the live blocks of larger buffers."""

    def __init__(self, limits: SlabLimits | None = None) -> None:
        super().__init__()
        self.limits = limits or SlabLimits()
        self._k: _Slab | None = None
        self._v: _Slab | None = None

    # NOTE: transformers assigns ``keys`` and ``values`` whole, one after the other (crop,
    # reorder); each assignment copies into a fresh buffer with headroom.
    @property
    def keys(self) -> Any:
        return None if self._k is None else self._k.live

    @keys.setter
    def keys(self, value: torch.Tensor | None) -> None:
        self._k = _Slab(value, self.limits) if value is not None and value.dim() == 4 else None

    @property
    def values(self) -> Any:
        return None if self._v is None else self._v.live

    @values.setter
    def values(self, value: torch.Tensor | None) -> None:
        self._v = _Slab(value, self.limits) if value is not None and value.dim() == 4 else None

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.dtype, self.device = key_states.dtype, key_states.device
            self.is_initialized = True
        if self._k is None or self._v is None:
            self._k, self._v = _Slab(key_states, self.limits), _Slab(value_states, self.limits)
        else:
            self._k, self._v = self._k.append(key_states), self._v.append(value_states)
        return self._k.live, self._v.live

    def join(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Append rows (their own left-padded prefill) to the running ones."""
        if self._k is None or self._v is None:
            self.update(keys, values)
        else:
            self._k, self._v = self._k.join(keys), self._v.join(values)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        for slab in (self._k, self._v):
            if slab is not None:
                slab.select(indices.tolist())

    def get_seq_length(self) -> int:
        return 0 if self._k is None else self._k.width

    def trim_left(self, tokens: int) -> None:
        """Drop the first ``tokens`` columns (padding in every row) without copying."""
        for slab in (self._k, self._v):
            if slab is not None:
                slab.start = min(slab.end, slab.start + tokens)

    def reset(self) -> None:
        self._k = self._v = None
        self.is_initialized = False


def slab_cache(config: Any, limits: SlabLimits | None = None) -> DynamicCache:
    """A ``DynamicCache`` for ``config`` whose layers are ``SlabLayer``s."""
    cache = DynamicCache(config=config)
    cache.layers = [SlabLayer(limits) for _ in cache.layers]
    return cache
