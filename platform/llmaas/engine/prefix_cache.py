"""Automatic prefix caching: prompt KV kept after a sequence's prefill, reused by later prompts.

Written by hand because the running batch lives in our own left-padded cache (``kv_slab``),
which no library's prefix cache plugs into. The scheme is vLLM's automatic prefix caching:

- a prompt is cut into full blocks of ``block_size`` tokens; block ``i``'s key is a hash of its
  tokens chained onto block ``i-1``'s key (the first block's parent is the request's
  ``cache_salt``), so a key names the whole prefix up to the end of its block;
- after a prefill, every full block of the prompt that is not stored yet is copied out of the
  cache, one tensor ``[layers, 2 (K, V), kv heads, block_size, head dim]`` per block;
- a newcomer's hit is its longest run of stored blocks from the start, limited to the prompt
  minus its last token (that token must still run to give the logits of the first sample);
- blocks are evicted least recently used. NOTE: a chain is touched from its last block to its
  first, so a parent is always more recent than its children and eviction takes leaves first:
  no stored block is ever unreachable.

Lives on the model thread only: the scheduler looks up and stores, the runner never sees it.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence

import torch

#: Why the cache is off, when it is (shown in ``EngineHealth.prefix_cache`` and ``llmaas status``).
ON = "on"


def block_hashes(tokens: Sequence[int], block_size: int, salt: str | None = None) -> list[bytes]:
    """Chained keys of the full blocks of ``tokens``."""
    parent = hashlib.blake2b((salt or "").encode(), digest_size=16).digest()
    keys: list[bytes] = []
    for start in range(0, len(tokens) - block_size + 1, block_size):
        block = tokens[start : start + block_size]
        digest = hashlib.blake2b(parent, digest_size=16)
        digest.update(b"".join(int(t).to_bytes(4, "little", signed=True) for t in block))
        parent = digest.digest()
        keys.append(parent)
    return keys


class PrefixCache:
    """Stored KV blocks by chained key, within ``capacity_tokens``, evicted LRU."""

    def __init__(self, block_size: int, capacity_tokens: int) -> None:
        self.block_size = block_size
        self.capacity_blocks = max(0, capacity_tokens // block_size)
        self._blocks: OrderedDict[bytes, torch.Tensor] = OrderedDict()
        self.queries = 0  # prompt tokens looked up
        self.hits = 0  # of those, tokens found cached
        self.evicted = 0  # blocks evicted

    @property
    def capacity_tokens(self) -> int:
        return self.capacity_blocks * self.block_size

    @property
    def num_tokens(self) -> int:
        return len(self._blocks) * self.block_size

    def keys(self, tokens: Sequence[int], salt: str | None = None) -> list[bytes]:
        return block_hashes(tokens, self.block_size, salt)

    def match(self, keys: list[bytes], prompt_len: int) -> int:
        """How many leading blocks of ``keys`` are stored (never the prompt's last token)."""
        limit = min(len(keys), (prompt_len - 1) // self.block_size)
        found = 0
        while found < limit and keys[found] in self._blocks:
            found += 1
        return found

    def take(self, keys: list[bytes], tokens: int, prompt_len: int) -> torch.Tensor | None:
        """The KV of the first ``tokens`` tokens (``[layers, 2, heads, tokens, dim]``; stored blocks,
        at most ``match``'s), counted as one lookup of a ``prompt_len``-token prompt."""
        self.queries += prompt_len
        if tokens <= 0:
            return None
        self.hits += tokens
        blocks = -(-tokens // self.block_size)
        self._touch(keys[:blocks])
        return torch.cat([self._blocks[key] for key in keys[:blocks]], dim=3)[:, :, :, :tokens]

    def missing(self, keys: list[bytes]) -> list[int]:
        """Indices of the blocks of ``keys`` not stored (within the capacity)."""
        return [index for index, key in enumerate(keys[: self.capacity_blocks]) if key not in self._blocks]

    def put(self, keys: list[bytes], first: int, kv: torch.Tensor) -> None:
        """Store blocks ``first..`` of ``keys`` from ``kv`` (``[layers, 2, heads, tokens, dim]``,
        starting at block ``first``); blocks already stored are only touched."""
        for index in range(first, min(len(keys), self.capacity_blocks)):
            key = keys[index]
            if key not in self._blocks:
                offset = (index - first) * self.block_size
                self._blocks[key] = kv[:, :, :, offset : offset + self.block_size].clone()
        self._touch(keys[: self.capacity_blocks])
        while len(self._blocks) > self.capacity_blocks:
            self._blocks.popitem(last=False)
            self.evicted += 1

    def _touch(self, keys: list[bytes]) -> None:
        for key in reversed(keys):
            if key in self._blocks:
                self._blocks.move_to_end(key)

    def clear(self) -> None:
        self._blocks.clear()


__all__ = ["ON", "PrefixCache", "block_hashes"]
