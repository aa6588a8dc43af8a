"""Tensor-parallel peer ranks: Ray actors in the replica's placement group, run in lockstep."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import ray
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from llmaas.config.catalog import ModelSpec
from llmaas.engine.errors import EngineError
from llmaas.engine.runner import ShardRunner, StepInput


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
        resources = spec.resources
        actor: Any = ray.remote(TPWorker)
        self.workers: list[Any] = [
            actor.options(
                name=None,
                num_cpus=resources.num_cpus,
                num_gpus=resources.num_gpus,
                resources=dict(resources.custom) or None,
                scheduling_strategy=PlacementGroupSchedulingStrategy(
                    placement_group=placement_group, placement_group_bundle_index=rank
                ),
                max_restarts=0,
            ).remote(spec, str(model_path), rank)
            for rank in range(1, spec.tensor_parallel_size)
        ]

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
        ray.get([w.ping.remote() for w in self.workers], timeout=10)

    def shutdown(self) -> None:
        for worker in self.workers:
            ray.kill(worker)
