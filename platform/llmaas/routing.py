"""Prefix-aware routing: requests that share a prompt prefix go to the replica whose prefix cache holds it.

Serve's default router sends each call to the less loaded of two random replicas, so requests that
share a system prompt or a conversation's earlier turns land on different replicas of a model and
each replica's prefix cache (``llmaas.engine.prefix_cache``) misses. ``PrefixAffinityRouter``, a
Serve request router (``ray.serve.request_router``; ray-project/ray's ``PrefixCacheAffinityRouter``
in shape), sends a generate call to the replica it already sent the longest run of that prompt's
leading blocks to, unless that replica is much busier than the least loaded one; with no such
replica it makes Serve's default choice.

- ``PrefixAffinity``: the choice and what it remembers, with no Ray in it (tested alone);
- ``PrefixAffinityRouter``: the Serve router around it; ``llmaas.plan`` names it, by import path, in
  the ``request_router_config`` of a generating model whose prefix cache is on.

Blocks are the engine's own: ``block_hashes`` of the prompt's token ids, ``block_size`` tokens
each, chained from the request's ``cache_salt``, so a key names a whole prefix and "replica R
holds key i" means R was sent a prompt starting with those ``i + 1`` blocks.

NOTE: it knows what it routed, not what each engine holds: a replica's own evictions are not
seen (its map is bounded and least-recently-used like the engine's cache, so old prefixes fade
from both), and every process that calls the model (each router replica) keeps its own map.
Ray's router shares one prefix tree through an actor instead, at a remote call per request; here
two router replicas may first send a prefix to two model replicas, and then each keeps sending it
to its own, where it is cached.
"""

from __future__ import annotations

import logging
import random
from collections import OrderedDict
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from ray.serve.request_router import (
    FIFOMixin,
    LocalityMixin,
    MultiplexMixin,
    PendingRequest,
    ReplicaID,
    RequestRouter,
    RunningReplica,
)

from llmaas.config.catalog import PrefixCacheConfig
from llmaas.engine.prefix_cache import block_hashes
from llmaas.engine.types import GenerationRequest

logger = logging.getLogger(__name__)

#: Tokens per block where the plan does not say (the catalog's default ``prefix_cache.block_size``).
BLOCK_SIZE: int = PrefixCacheConfig.model_fields["block_size"].default
#: How many more requests in flight than the least loaded replica a prefix's holder may have and still
#: get it (the plan passes half the model's ``batching.max_batch_size``).
IMBALANCED_THRESHOLD = 8
#: Block keys remembered per calling process. NOTE: about 200 bytes each (a 16-byte key, a tuple of
#: replica ids, the LRU links): 32768 blocks of 16 tokens, 512K prompt tokens, take ~6.5 MB.
MAX_BLOCKS = 32_768
#: Prompts whose keys are kept between choosing a replica and recording it (hashing is ~0.2 ms per
#: 1,000 tokens; a request's keys are needed twice).
_KEYS_KEPT = 256


class PrefixAffinity:
    """Which replicas were sent which prompt blocks, and where a new prompt should go.

    Replicas are named by strings (Serve's ``ReplicaID.unique_id``); loads are requests in flight
    per candidate (None: not known lately, taken as idle, as a replica Serve has not heard from
    for seconds is).
    """

    def __init__(
        self,
        *,
        block_size: int = BLOCK_SIZE,
        imbalanced_threshold: int = IMBALANCED_THRESHOLD,
        max_blocks: int = MAX_BLOCKS,
    ) -> None:
        if block_size < 1:
            raise ValueError(f"block_size {block_size} must be at least 1 (prefix_cache.block_size)")
        if imbalanced_threshold < 0:
            raise ValueError(f"imbalanced_threshold {imbalanced_threshold} must be 0 or more")
        if max_blocks < 1:
            raise ValueError(f"max_blocks {max_blocks} must be at least 1")
        self.block_size = block_size
        self.imbalanced_threshold = imbalanced_threshold
        self.max_blocks = max_blocks
        # NOTE: key -> every replica sent it, most recent first: a prefix sent elsewhere while its
        # first holder was busy is then cached on both, and either may take the next one.
        self._owners: OrderedDict[bytes, tuple[str, ...]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._owners)

    def keys(self, request: GenerationRequest) -> list[bytes]:
        """The chained keys of the full blocks of the request's prompt, as its replica's cache makes them."""
        return block_hashes(request.prompt_token_ids, self.block_size, request.prefix_salt)

    def holders(self, key: bytes) -> tuple[str, ...]:
        """Replicas sent the prefix that ``key`` names, most recent first."""
        return self._owners.get(key, ())

    def choose(self, keys: Sequence[bytes], prompt_len: int, loads: Mapping[str, int | None]) -> str | None:
        """The candidate (a key of ``loads``) to send a prompt of ``keys`` to for its prefix.

        Of the candidates at most ``imbalanced_threshold`` requests busier than the least loaded,
        the one holding the longest run of the prompt's leading blocks (ties: the less loaded, then
        the more recent). None: no such candidate holds its first block; the caller's default choice.
        """
        if not loads:
            return None
        least = min(load or 0 for load in loads.values())
        alive = {r for r, load in loads.items() if (load or 0) - least <= self.imbalanced_threshold}
        # NOTE: as the engine's match: the prompt's last token always runs, so a block ending on it
        # gains nothing.
        usable = keys[: max(0, (prompt_len - 1) // self.block_size)]
        best: tuple[str, ...] = ()
        for key in usable:
            held = tuple(r for r in self._owners.get(key, ()) if r in alive)
            if not held:
                break
            best, alive = held, set(held)
        if not best:
            return None
        return min(best, key=lambda r: loads[r] or 0)

    def record(self, keys: Sequence[bytes], replica: str) -> None:
        """``replica`` was sent a prompt of ``keys``: it holds those blocks now (most recent first)."""
        keys = keys[: self.max_blocks]
        # NOTE: touched from the last block to the first, as the engine's cache does: a parent is
        # always more recent than its children, so eviction takes leaves first and every remembered
        # key's parents are remembered too (``choose`` walks from the first block).
        for key in reversed(keys):
            owners = self._owners.get(key, ())
            if owners[:1] != (replica,):
                self._owners[key] = (replica, *(r for r in owners if r != replica))
            self._owners.move_to_end(key)
        while len(self._owners) > self.max_blocks:
            self._owners.popitem(last=False)

    def drop(self, replicas: Collection[str]) -> None:
        """Forget ``replicas`` (gone: stopped, scaled down, or dead), and keys no replica holds then."""
        gone = set(replicas)
        if not gone:
            return
        for key, owners in list(self._owners.items()):
            kept = tuple(r for r in owners if r not in gone)
            if not kept:
                del self._owners[key]
            elif len(kept) != len(owners):
                self._owners[key] = kept  # NOTE: an existing key keeps its place in the LRU order


def generation_request(pending_request: PendingRequest | None) -> GenerationRequest | None:
    """The ``GenerationRequest`` a handle call carries as its one argument (``ModelReplica.generate``);
    None for other calls on the same handle (info, embed, classify)."""
    if pending_request is None or not pending_request.args:
        return None
    first = pending_request.args[0]
    return first if isinstance(first, GenerationRequest) else None


class PrefixAffinityRouter(FIFOMixin, LocalityMixin, MultiplexMixin, RequestRouter):
    """Serve's request router of a generating model: ``PrefixAffinity``'s choice first, then Serve's.

    NOTE: FIFOMixin, as Serve's default router has it: the base router hands a replica it found to
    the pending call with the same ``internal_request_id`` only, and every call a replica makes
    while serving one request (``n`` > 1, a list of prompts) carries that request's id, so all but
    one of them waited forever. In FIFO order a replica chosen for one call's prefix may go to an
    older pending call instead; under such a burst the affinity is a preference, not a rule.

    ``request_router_kwargs`` (``RequestRouterConfig``) reach ``initialize_state``: ``block_size``,
    ``imbalanced_threshold`` and ``max_blocks`` of ``PrefixAffinity``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._affinity = PrefixAffinity()
        self._kept: OrderedDict[str, tuple[GenerationRequest, list[bytes]]] = OrderedDict()

    def initialize_state(self, **kwargs: Any) -> None:
        self._affinity = PrefixAffinity(**kwargs)

    @property
    def affinity(self) -> PrefixAffinity:
        return self._affinity

    def _keys(self, request: GenerationRequest, *, keep: bool) -> list[bytes]:
        """The request's block keys, hashed once per request (``keep``: until it is recorded)."""
        kept = self._kept.get(request.request_id)
        # NOTE: the request object itself is kept and compared: another call may reuse the id.
        if kept is not None and kept[0] is request:
            if not keep:
                del self._kept[request.request_id]
            return kept[1]
        keys = self._affinity.keys(request)
        if keep:
            self._kept[request.request_id] = (request, keys)
            while len(self._kept) > _KEYS_KEPT:
                self._kept.popitem(last=False)
        return keys

    def _default_choice(self, pending_request: PendingRequest | None) -> list[list[RunningReplica]]:
        """Serve's own choice (``PowerOfTwoChoicesRequestRouter.choose_replicas``, rewritten on the
        public mixins): two random replicas of those locality or multiplexing prefers; Serve sends
        to the less loaded of them."""
        if pending_request is not None and pending_request.metadata.multiplexed_model_id:
            ids = self.apply_multiplex_routing(pending_request=pending_request)
        else:
            ids = self.apply_locality_routing(pending_request=pending_request)
        replicas = self.curr_replicas
        pool = [replicas[i] for i in ids if i in replicas]
        return [random.sample(pool, min(2, len(pool)))] if pool else []

    async def choose_replicas(
        self,
        candidate_replicas: list[RunningReplica],
        pending_request: PendingRequest | None = None,
    ) -> list[list[RunningReplica]]:
        """Ranks of replicas to try in order: the prefix's holder alone, then Serve's default pair
        (the holder may turn out full). Other calls, one replica, a prompt shorter than a block, no
        holder: the default pair only."""
        default = self._default_choice(pending_request)
        request = generation_request(pending_request)
        if request is None or len(candidate_replicas) < 2:
            return default
        keys = self._keys(request, keep=True)
        if not keys:
            return default
        # NOTE: replicas Serve knows to be full are left out (their cached queue length is at
        # max_ongoing_requests); the rest are compared on that cache, without probing.
        available = {r.replica_id.unique_id: r for r in self.select_available_replicas(candidate_replicas)}
        cache = self.replica_queue_len_cache
        loads = {name: cache.get(r.replica_id) for name, r in available.items()}
        chosen = self._affinity.choose(keys, len(request.prompt_token_ids), loads)
        if chosen is None:
            return default
        holder = available[chosen]
        rest = [[r for r in rank if r is not holder] for rank in default]
        return [[holder], *(rank for rank in rest if rank)]

    def on_request_routed(self, pending_request: PendingRequest, replica_id: ReplicaID, result: Any) -> None:
        """The replica took the request: it holds the prompt's blocks now.

        NOTE: Serve calls this once a replica accepts (its rejection protocol, on by default outside
        Ray Client); without it nothing is learnt and every call takes the default choice.
        """
        request = generation_request(pending_request)
        if request is not None:
            self._affinity.record(self._keys(request, keep=False), replica_id.unique_id)

    def update_replicas(self, replicas: list[RunningReplica]) -> None:
        """Serve's replica set changed: forget the replicas that left."""
        before = {replica_id.unique_id for replica_id in self.curr_replicas}
        super().update_replicas(replicas)
        gone = before - {replica_id.unique_id for replica_id in self.curr_replicas}
        if gone:
            self._affinity.drop(gone)
            logger.info("prefix routing: forgot %d replica(s) that left", len(gone))

    def on_replica_actor_died(self, replica_id: ReplicaID) -> None:
        super().on_replica_actor_died(replica_id)
        self._affinity.drop([replica_id.unique_id])


__all__ = [
    "BLOCK_SIZE",
    "IMBALANCED_THRESHOLD",
    "MAX_BLOCKS",
    "PrefixAffinity",
    "PrefixAffinityRouter",
    "generation_request",
]
