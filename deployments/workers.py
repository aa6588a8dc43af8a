"""Tensor-parallel peer ranks: Ray actors in the replica's placement group, run in lockstep."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import RayActorError
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from llmaas.config.catalog import ModelSpec
from llmaas.engine.errors import EngineError
from llmaas.engine.runner import ShardRunner, StepInput
from llmaas.plan import worker_actor_options

logger = logging.getLogger("ray.serve")


class TPWorker:
    """Rank 1..N-1 of a replica: holds a shard and runs whatever step rank 0 sends."""

    def __init__(self, spec: ModelSpec, model_path: str, rank: int) -> None:
        self.runner = ShardRunner(spec, Path(model_path), rank=rank)

    def load(self, master_addr: str, master_port: int) -> dict[str, Any]:
        return self.runner.load(master_addr, master_port)

    def step(self, step: StepInput) -> None:
        self.runner.step(step, return_logits=False)

    def ping(self) -> int:
        return self.runner.rank

    @ray.method(concurrency_group="watch")
    def sentinel(self) -> None:
        """Never returns: its reference fails the moment this worker's process dies."""
        threading.Event().wait()


class RayPeerGroup:
    """The ``PeerGroup`` of a replica, made of ``TPWorker`` actors in its placement group.

    NOTE: bundle 0 of the placement group is the replica itself (Serve puts it there); rank i
    takes bundle i, so STRICT_PACK keeps every rank on one node.
    """

    def __init__(self, spec: ModelSpec, model_path: Path) -> None:
        placement_group = ray.util.get_current_placement_group()
        if placement_group is None:
            raise EngineError(
                f"model {spec.id!r} has tensor_parallel_size={spec.tensor_parallel_size} but its replica "
                "has no placement group; deploy it through llmaas.deployments.build_app"
            )
        # NOTE: each rank takes what the deployment plan gives rank 0 (and its bundle holds).
        options = worker_actor_options(spec.resources)
        # NOTE: the "watch" group gives ``sentinel`` a thread of its own; steps keep the default one.
        actor: Any = ray.remote(concurrency_groups={"watch": 1})(TPWorker)  # type: ignore[call-overload]
        self.workers: list[Any] = [
            actor.options(
                name=None,
                **options,
                scheduling_strategy=PlacementGroupSchedulingStrategy(
                    placement_group=placement_group, placement_group_bundle_index=rank
                ),
                max_restarts=0,
            ).remote(spec, str(model_path), rank)
            for rank in range(1, spec.tensor_parallel_size)
        ]
        self._on_lost: Callable[[str], None] | None = None
        self._closing = False
        self._lost = threading.Event()

    def load(self, master_addr: str, master_port: int) -> list[Any]:
        return [w.load.remote(master_addr, master_port) for w in self.workers]

    def step(self, step: StepInput) -> list[Any]:
        return [w.step.remote(step) for w in self.workers]

    def wait(self, handles: list[Any], timeout_s: float | None = None) -> None:
        try:
            ray.get(handles, timeout=timeout_s)
        except Exception as exc:
            raise EngineError(f"a tensor-parallel rank failed: {type(exc).__name__}: {exc}") from exc

    def check_alive(self) -> None:
        try:
            ray.get([w.ping.remote() for w in self.workers], timeout=10)
        except RayActorError as exc:
            self._report_lost(f"{type(exc).__name__}: {str(exc).strip()[:200]}")
            raise

    def watch(self, on_lost: Callable[[str], None]) -> None:
        """Call ``on_lost`` as soon as a worker dies: a daemon thread waits on each worker's sentinel.

        NOTE: without it a step stays blocked inside the collective the dead rank never joins,
        and its requests wait until Serve's health checks (three failures) and drain timeout
        kill the replica, about a minute later.
        """
        self._on_lost = on_lost
        sentinels = {w.sentinel.remote(): rank for rank, w in enumerate(self.workers, start=1)}
        threading.Thread(
            target=self._wait_sentinels, args=(sentinels,), name="llmaas-tp-watch", daemon=True
        ).start()

    def _wait_sentinels(self, sentinels: dict[Any, int]) -> None:
        ready, _ = ray.wait(list(sentinels), num_returns=1, timeout=None)
        try:
            ray.get(ready[0])
            reason = f"rank {sentinels[ready[0]]} stopped"
        except Exception as exc:
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            reason = f"rank {sentinels[ready[0]]}: {type(exc).__name__}: {first_line[:200]}"
        self._report_lost(reason)

    def _report_lost(self, reason: str) -> None:
        if self._closing or self._lost.is_set():
            return
        self._lost.set()
        logger.error("tensor-parallel peer lost: %s", reason)
        if self._on_lost is not None:
            self._on_lost(reason)

    def shutdown(self) -> None:
        self._closing = True
        for worker in self.workers:
            ray.kill(worker)
