"""Prefix-aware routing (``llmaas.routing``): the choice alone, then Serve's router around it on fake
replicas (no Ray cluster: Serve's router runs on an event loop with replicas it is handed)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
from ray.serve._private.common import DeploymentHandleSource, DeploymentID, RequestMetadata
from ray.serve.config import RequestRouterConfig
from ray.serve.request_router import PendingRequest, ReplicaID, RequestRouter, RunningReplica

from llmaas.config.catalog import ModelSpec
from llmaas.engine.prefix_cache import PrefixCache
from llmaas.engine.types import GenerationRequest, SamplingParams
from llmaas.plan import model_deployment
from llmaas.routing import PrefixAffinity, PrefixAffinityRouter, generation_request

BLOCK = 4
DEPLOYMENT = DeploymentID(name="model-m", app_name="llm")
LOADS0 = {"r1": 0, "r2": 0, "r3": 0}


def _request(tokens: Sequence[int], salt: str | None = None, request_id: str = "q") -> GenerationRequest:
    return GenerationRequest(
        request_id=request_id, prompt_token_ids=list(tokens), sampling=SamplingParams(), cache_salt=salt
    )


def _prompt(prefix: int, length: int = 4 * BLOCK + 1) -> list[int]:
    """A prompt whose blocks all belong to ``prefix`` (different prefixes share no block)."""
    return [prefix * 1000 + i for i in range(length)]


def _keys(affinity: PrefixAffinity, tokens: Sequence[int], salt: str | None = None) -> list[bytes]:
    return affinity.keys(_request(tokens, salt))


def _choose(affinity: PrefixAffinity, tokens: Sequence[int], loads: Mapping[str, int | None]) -> str | None:
    return affinity.choose(_keys(affinity, tokens), len(tokens), loads)


# --- the choice --------------------------------------------------------------------------------


def test_keys_are_the_engine_cache_keys():
    affinity = PrefixAffinity(block_size=BLOCK)
    tokens = _prompt(1, 3 * BLOCK + 2)
    cache = PrefixCache(block_size=BLOCK, capacity_tokens=64)
    assert _keys(affinity, tokens, "tenant") == cache.keys(tokens, "tenant")
    assert len(_keys(affinity, tokens)) == 3


def test_a_prompt_goes_where_its_prefix_went():
    affinity = PrefixAffinity(block_size=BLOCK)
    assert _choose(affinity, _prompt(1), LOADS0) is None  # nothing known: the caller's default
    affinity.record(_keys(affinity, _prompt(1)), "r2")
    # the same prompt, and a longer one that starts with it
    assert _choose(affinity, _prompt(1), LOADS0) == "r2"
    assert _choose(affinity, _prompt(1, 9 * BLOCK), LOADS0) == "r2"
    # a prompt sharing only the first two blocks
    assert _choose(affinity, [*_prompt(1)[: 2 * BLOCK], *_prompt(7)], LOADS0) == "r2"
    # no shared first block, or another salt: no match
    assert _choose(affinity, [0, *_prompt(1)], LOADS0) is None
    keys = _keys(affinity, _prompt(1), "tenant-b")
    assert affinity.choose(keys, len(_prompt(1)), LOADS0) is None
    # a holder that is no candidate (another deployment's, or gone) is not chosen
    assert _choose(affinity, _prompt(1), {"r1": 0, "r3": 0}) is None


def test_the_longest_run_wins_and_ties_go_to_the_less_loaded():
    affinity = PrefixAffinity(block_size=BLOCK)
    base = _prompt(1)
    affinity.record(_keys(affinity, base[: 2 * BLOCK]), "r1")
    affinity.record(_keys(affinity, base), "r3")
    assert affinity.holders(_keys(affinity, base)[0]) == ("r3", "r1")
    assert _choose(affinity, base, LOADS0) == "r3"  # 4 blocks beat 2
    # both hold the first two blocks: the less loaded of them takes a prompt that shares only those
    two = [*base[: 2 * BLOCK], *_prompt(9)]
    assert _choose(affinity, two, {"r1": 3, "r2": 0, "r3": 1}) == "r3"
    assert _choose(affinity, two, {"r1": 0, "r2": 0, "r3": 1}) == "r1"


def test_a_block_the_prompt_ends_in_is_not_a_match():
    affinity = PrefixAffinity(block_size=BLOCK)
    affinity.record(_keys(affinity, _prompt(1, BLOCK)), "r1")
    # a one-block prompt: its last token must run, so its cached block would not be used
    assert _choose(affinity, _prompt(1, BLOCK), LOADS0) is None
    assert _choose(affinity, _prompt(1, BLOCK + 1), LOADS0) == "r1"


def test_an_imbalanced_holder_gives_way():
    affinity = PrefixAffinity(block_size=BLOCK, imbalanced_threshold=4)
    base = _prompt(1)
    affinity.record(_keys(affinity, base), "r1")
    assert _choose(affinity, base, {"r1": 6, "r2": 2, "r3": 3}) == "r1"  # 4 busier: still balanced
    assert _choose(affinity, base, {"r1": 7, "r2": 2, "r3": 3}) is None  # 5 busier: the default
    # a less busy replica holding a shorter run of the prompt is better than none
    affinity.record(_keys(affinity, base[: 2 * BLOCK]), "r3")
    assert _choose(affinity, base, {"r1": 7, "r2": 2, "r3": 3}) == "r3"
    # unknown loads count as idle
    assert _choose(affinity, base, {"r1": None, "r2": None, "r3": 9}) == "r1"


def test_memory_is_bounded_and_evicts_whole_old_prefixes():
    affinity = PrefixAffinity(block_size=BLOCK, max_blocks=8)
    affinity.record(_keys(affinity, _prompt(1)), "r1")  # 4 blocks
    affinity.record(_keys(affinity, _prompt(2)), "r2")
    affinity.record(_keys(affinity, _prompt(1)), "r1")  # prefix 1 is the more recent now
    affinity.record(_keys(affinity, _prompt(3, 2 * BLOCK + 1)), "r3")  # 2 more: 2 of prefix 2 go
    assert len(affinity) == 8
    assert _choose(affinity, _prompt(1), LOADS0) == "r1"
    assert _choose(affinity, _prompt(3), LOADS0) == "r3"
    # the leaves went first, so what is left of prefix 2 is still its first blocks
    assert _choose(affinity, _prompt(2), LOADS0) == "r2"
    assert [bool(affinity.holders(k)) for k in _keys(affinity, _prompt(2))] == [True, True, False, False]


def test_dropping_a_replica_forgets_its_blocks_only():
    affinity = PrefixAffinity(block_size=BLOCK)
    affinity.record(_keys(affinity, _prompt(1)), "r1")
    affinity.record(_keys(affinity, _prompt(2)), "r2")
    affinity.record(_keys(affinity, _prompt(2)[: 2 * BLOCK]), "r1")
    affinity.drop(["r1"])
    assert len(affinity) == 4
    assert _choose(affinity, _prompt(1), LOADS0) is None
    assert all(affinity.holders(k) == ("r2",) for k in _keys(affinity, _prompt(2)))


def test_settings_are_checked():
    with pytest.raises(ValueError, match="block_size"):
        PrefixAffinity(block_size=0)
    with pytest.raises(ValueError, match="imbalanced_threshold"):
        PrefixAffinity(imbalanced_threshold=-1)
    with pytest.raises(TypeError):
        PrefixAffinity(blocksize=16)  # type: ignore[call-arg]


# --- Serve's router around it ----------------------------------------------------------------


class FakeReplica:
    """What Serve's router reads of a ``RunningReplica``."""

    def __init__(self, name: str, load: int = 0, max_ongoing: int = 32) -> None:
        self.replica_id = ReplicaID(unique_id=name, deployment_id=DEPLOYMENT)
        self.node_id = "node"
        self.availability_zone = None
        self.multiplexed_model_ids: set[str] = set()
        self.max_ongoing_requests = max_ongoing
        self.load = load

    async def get_queue_len(self, *, deadline_s: float) -> int:
        return self.load


def _pending(*args: Any) -> PendingRequest:
    return PendingRequest(
        args=list(args), kwargs={}, metadata=RequestMetadata(request_id="q", internal_request_id="i")
    )


def _names(ranks: list[list[RunningReplica]]) -> list[list[str]]:
    return [[r.replica_id.unique_id for r in rank] for rank in ranks]


class Harness:
    """A router over fake replicas, routing as Serve does: the least loaded of the first rank."""

    def __init__(self, *names: str, threshold: int = 4) -> None:
        self.router = PrefixAffinityRouter(
            deployment_id=DEPLOYMENT,
            handle_source=DeploymentHandleSource.UNKNOWN,
            use_replica_queue_len_cache=True,
        )
        self.router.initialize_state(block_size=BLOCK, imbalanced_threshold=threshold)
        self.replicas = {name: FakeReplica(name) for name in names}
        self.router.update_replicas(list(self.replicas.values()))  # type: ignore[arg-type]

    def load(self, **loads: int) -> None:
        for name, load in loads.items():
            self.replicas[name].load = load
            self.router.on_new_queue_len_info(self.replicas[name].replica_id, load)

    async def ranks(self, pending: PendingRequest) -> list[list[str]]:
        candidates = list(self.router.curr_replicas.values())
        return _names(await self.router.choose_replicas(candidates, pending))

    async def route(self, tokens: Sequence[int]) -> str:
        pending = _pending(_request(tokens))
        first = (await self.ranks(pending))[0]
        chosen = min(first, key=lambda name: self.replicas[name].load)
        self.router.on_request_routed(pending, self.replicas[chosen].replica_id, None)
        return chosen


def test_the_router_sends_a_shared_prefix_to_one_replica_and_spreads_the_rest():
    async def main() -> None:
        serve = Harness("r1", "r2", "r3")
        first = {prefix: await serve.route(_prompt(prefix)) for prefix in range(60)}
        assert set(first.values()) == {"r1", "r2", "r3"}  # new prefixes: Serve's random pairs
        for prefix in range(60):
            follow_up = [*_prompt(prefix), *_prompt(100 + prefix)]
            assert await serve.route(follow_up) == first[prefix]

    asyncio.run(main())


def test_the_holder_is_tried_first_then_serves_default_pair():
    async def main() -> None:
        serve = Harness("r1", "r2")
        await serve.route(_prompt(1))
        holder = serve.router.affinity.holders(serve.router.affinity.keys(_request(_prompt(1)))[-1])
        ranks = await serve.ranks(_pending(_request(_prompt(1))))
        assert ranks[0] == list(holder) and len(ranks) == 2 and ranks[1] != ranks[0]

    asyncio.run(main())


def test_an_imbalanced_holder_makes_way_for_the_least_loaded():
    async def main() -> None:
        serve = Harness("r1", "r2", threshold=4)
        holder = await serve.route(_prompt(1))
        other = "r2" if holder == "r1" else "r1"
        serve.load(**{holder: 9, other: 2})
        assert await serve.route(_prompt(1)) == other
        # now both hold it: the less loaded takes it
        serve.load(**{holder: 0, other: 3})
        assert await serve.route(_prompt(1)) == holder
        # a holder Serve knows to be full is passed over
        serve.replicas[holder].max_ongoing_requests = 3
        serve.load(**{holder: 3, other: 3})
        assert (await serve.ranks(_pending(_request(_prompt(1)))))[0] == [other]

    asyncio.run(main())


def test_replicas_that_leave_are_forgotten():
    async def main() -> None:
        serve = Harness("r1", "r2", "r3")
        routed = {prefix: await serve.route(_prompt(prefix)) for prefix in range(12)}
        gone = routed[0]
        serve.router.update_replicas([r for n, r in serve.replicas.items() if n != gone])  # type: ignore[misc]
        affinity = serve.router.affinity
        assert all(gone not in affinity.holders(k) for k in affinity._owners)
        assert len(affinity) == 4 * sum(1 for r in routed.values() if r != gone)
        # a dead actor likewise
        dead = next(r for r in routed.values() if r != gone)
        serve.router.on_replica_actor_died(serve.replicas[dead].replica_id)
        assert all(dead not in affinity.holders(k) for k in affinity._owners)

    asyncio.run(main())


def test_other_calls_and_one_replica_take_the_default():
    async def main() -> None:
        serve = Harness("r1", "r2")
        for call in (_pending(), _pending([[1, 2, 3, 4, 5]]), _pending("text")):  # info, embed, other
            assert generation_request(call) is None
            ranks = await serve.ranks(call)
            assert len(ranks) == 1 and sorted(ranks[0]) == ["r1", "r2"]
            serve.router.on_request_routed(call, serve.replicas["r1"].replica_id, None)
        assert len(serve.router.affinity) == 0
        # a prompt shorter than a block has nothing to match
        assert len((await serve.ranks(_pending(_request([1, 2]))))[0]) == 2
        # one replica: nothing to choose, but what it was sent is learnt
        single = Harness("r1")
        assert await single.ranks(_pending(_request(_prompt(1)))) == [["r1"]]
        assert await single.route(_prompt(1)) == "r1"
        assert len(single.router.affinity) == 4

    asyncio.run(main())


def test_the_plans_router_config_loads_in_serve():
    spec = ModelSpec.model_validate(
        {
            "id": "m",
            "source": {"demo": "tiny-llama-chat"},
            "prefix_cache": {"block_size": 32, "routing": True},
        }
    )
    options = model_deployment(spec, "app").serve_options()["request_router_config"]
    config = RequestRouterConfig(**options)
    cls = config.get_request_router_class()
    assert isinstance(cls, type)
    # NOTE: Serve pickles the router's module by value: a copy of the class, not the same object
    assert cls.__name__ == "PrefixAffinityRouter" and issubclass(cls, RequestRouter)
    affinity = PrefixAffinity(**config.request_router_kwargs)
    assert (affinity.block_size, affinity.imbalanced_threshold) == (32, 8)


def test_calls_that_share_a_parent_request_all_get_a_replica():
    """A replica's calls made while it serves one request (``n`` > 1, a list of prompts) carry
    that request's ``internal_request_id``: Serve's router must still route every one of them.
    (Without FIFOMixin the base router matches a found replica to the pending call by that id
    only, the second call of a parent is never indexed, and it waits forever.)"""

    async def main() -> list[str]:
        harness = Harness("r1", "r2")  # NOTE: Serve's router takes the running loop as it starts
        calls = [_pending(_request(_prompt(i), request_id=f"q{i}")) for i in range(6)]
        # NOTE: what a DeploymentHandle call awaits (Serve's private entry point, no public one)
        chosen = await asyncio.wait_for(
            asyncio.gather(*(harness.router._choose_replica_for_request(c) for c in calls)), timeout=10
        )
        return [replica.replica_id.unique_id for replica in chosen]

    assert set(asyncio.run(main())) <= {"r1", "r2"}
