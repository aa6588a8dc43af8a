"""Capacity: can a catalog ever fit the Ray cluster that ``cluster.yaml`` describes?

Serve's autoscaler asks for replicas and the Ray autoscaler adds nodes within ``cluster.yaml``'s
bounds (node types, their resources, ``max_workers``), but neither refuses a catalog that can
never fit: a TP=4 replica on 2-GPU nodes is an infeasible placement group that waits forever, and
replicas beyond the cluster's maximum size stay pending while the deploy looks healthy enough.
This module reads the launcher file and says so before anything is deployed, naming the model,
the node types and the numbers, and it derives autoscaling bounds left to the cluster
(``max_replicas: null``) from the same arithmetic.

A replica's demand is what the deployment plan (``llmaas.plan``) asks Serve for: one bundle per
tensor-parallel rank, ``CPU`` + ``GPU`` (when above 0) + custom resources + ``memory`` (where
``memory_bytes`` is set), all bundles on one node (STRICT_PACK). Only the launcher's
``resources`` are read: a node type that leaves them to autodetection cannot be checked, and
is refused with the line to write.

A ``fine_tuning`` section adds its training jobs: ``max_concurrent_jobs`` of ``num_workers``
bundles each (``fine_tuning.resources``; Ray Train packs them, PACK: a job's workers may span
nodes). They are counted beside every serving replica at its maximum; where they do not all fit,
that is a warning, not a failure: jobs queue for free resources and never take a replica's. A job
that could never run (a worker fits no node type, or its workers the whole cluster) is a failure.
"""

from __future__ import annotations

import copy
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from pydantic import ConfigDict, Field, model_validator

from llmaas.config.base import BaseConfig
from llmaas.config.catalog import Catalog, ModelSpec, ReplicaConfig
from llmaas.config.fine_tuning import JobResources
from llmaas.naming import deployment_name, pool_deployment_name
from llmaas.plan import DeploymentPlan, model_deployment, plan_catalog

Resources = dict[str, float]

# NOTE: Ray accounts resources in units of 1/10000; rounding to that keeps sums of fractional
# demands (0.25 + 0.25 + 0.5) from failing a comparison by a float's last bit.
_RESOURCE_DIGITS = 4
# NOTE: a bound for with_capacity_defaults' loop; no real cluster holds more replicas of one model.
_MAX_DERIVED_REPLICAS = 10_000
_REQUIRED_RESOURCES = ("CPU", "GPU")


class LauncherView(BaseConfig):
    """A view of a file that belongs to another tool: keys llmaas does not model are ignored.

    ``cluster.yaml`` is the Ray launcher's (``node_config``, ``auth``, ``setup_commands``, ...), and
    Ray's own ``validate_config`` checks those keys; an llmaas-side error for each of them would
    only make the file harder to share with ``ray up``.
    """

    model_config = ConfigDict(extra="ignore")


class NodeType(LauncherView):
    """One entry of ``available_node_types``: what one node offers, and how many may run."""

    name: str = Field(description="The key under available_node_types.")
    resources: dict[str, float] = Field(
        description="What one node advertises to Ray: CPU, GPU, custom resources (memory in bytes)."
    )
    min_workers: int = Field(default=0, ge=0, description="Nodes of this type kept running.")
    max_workers: int = Field(
        ge=0, description="Worker nodes of this type at most (for the head type: besides the head)."
    )

    @model_validator(mode="after")
    def _checks(self) -> NodeType:
        missing = [key for key in _REQUIRED_RESOURCES if key not in self.resources]
        if missing:
            raise ValueError(
                f"node type {self.name!r}: resources names no {' or '.join(missing)}: write both, e.g. "
                f"resources: {{CPU: 8, GPU: 1}} (GPU: 0 on a CPU-only type), so that capacity can be checked"
            )
        negative = {key: value for key, value in self.resources.items() if value < 0}
        if negative:
            raise ValueError(f"node type {self.name!r}: resources {_fmt(negative)} are negative")
        if self.min_workers > self.max_workers:
            raise ValueError(
                f"node type {self.name!r}: min_workers ({self.min_workers}) is above max_workers "
                f"({self.max_workers}): raise max_workers or lower min_workers"
            )
        return self

    @property
    def size_key(self) -> tuple[float, float, float]:
        """Orders node types from small to large: GPUs first, then CPUs, then everything else."""
        return _size_key(self.resources)

    def describe(self) -> str:
        return f"{self.name}: {_fmt(self.resources, braces=False)}"


class ClusterSpec(LauncherView):
    """The capacity part of a Ray cluster launcher config (``ray up`` format).

    Read with ``ClusterSpec.from_file("cluster.yaml")`` or ``from_dict``; ``~/ray_bootstrap_config.yaml``
    on a running head node is the same format and reads the same way.
    """

    cluster_name: str = Field(description="cluster_name in the launcher file.")
    max_workers: int = Field(ge=0, description="Worker nodes in all, of every type (the head not counted).")
    head_node_type: str = Field(description="The node type the head runs as.")
    node_types: list[NodeType] = Field(min_length=1, description="available_node_types, in file order.")

    @model_validator(mode="before")
    @classmethod
    def _from_launcher(cls, data: Any) -> Any:
        if isinstance(data, dict) and "available_node_types" in data and "node_types" not in data:
            return _translate_launcher(data)
        return data

    @model_validator(mode="after")
    def _head_and_minimums(self) -> ClusterSpec:
        names = [node.name for node in self.node_types]
        if self.head_node_type not in names:
            raise ValueError(
                f"head_node_type {self.head_node_type!r} is not one of available_node_types "
                f"({', '.join(names)})"
            )
        min_sum = sum(node.min_workers for node in self.node_types)
        if min_sum > self.max_workers:
            raise ValueError(
                f"the node types' min_workers add up to {min_sum}, above the global max_workers "
                f"({self.max_workers}): raise max_workers or lower min_workers"
            )
        return self

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClusterSpec:
        """A parsed launcher file (``yaml.safe_load(open("cluster.yaml"))``)."""
        return cls.model_validate(data)

    @property
    def head(self) -> NodeType:
        return next(node for node in self.node_types if node.name == self.head_node_type)

    @property
    def workers(self) -> list[NodeType]:
        """The node types that are not the head's (the head's type may also have workers)."""
        return [node for node in self.node_types if node.name != self.head_node_type]

    def max_nodes(self) -> dict[str, int]:
        """Nodes of each type at the cluster's largest, the global max_workers included.

        Where the global cap is below the sum of the per-type maximums, the largest types are
        counted first (the selection that offers the most; the same choice the packer makes).
        """
        counts = {node.name: 0 for node in self.node_types}
        counts[self.head_node_type] = 1
        left = self.max_workers
        for node in sorted(self.node_types, key=lambda n: n.size_key, reverse=True):
            take = min(node.max_workers, left)
            counts[node.name] += take
            left -= take
        return counts

    def max_totals(self) -> Resources:
        """Every resource summed over ``max_nodes()``."""
        by_name = {node.name: node for node in self.node_types}
        totals: Resources = {}
        for name, count in self.max_nodes().items():
            for key, value in by_name[name].resources.items():
                totals[key] = _round(totals.get(key, 0.0) + value * count)
        return totals


def _translate_launcher(data: dict[str, Any]) -> dict[str, Any]:
    """``available_node_types: {name: {...}}`` -> ``node_types: [{name, ...}]``, with the launcher's defaults.

    The launcher fills a node type's missing ``max_workers`` with the global one (0 for the head's
    type); missing ``resources`` it autodetects from the instance type, which llmaas cannot, so
    that is an error naming the line to write.
    """
    types = data["available_node_types"]
    if not isinstance(types, dict) or not types:
        raise ValueError("available_node_types must map node type names to their settings")
    if "max_workers" not in data:
        raise ValueError(
            "cluster.yaml sets no top-level max_workers: the launcher would fall back to its provider's "
            "default (2 on AWS); write max_workers: N (worker nodes in all) so capacity can be checked"
        )
    head = data.get("head_node_type")
    node_types: list[dict[str, Any]] = []
    for name, entry in types.items():
        if not isinstance(entry, dict):
            raise ValueError(
                f"node type {name!r}: expected a mapping of settings, got {type(entry).__name__}"
            )
        if not entry.get("resources"):
            instance = (entry.get("node_config") or {}).get("InstanceType", "its instance type")
            raise ValueError(
                f"node type {name!r} has no resources: the launcher would autodetect them from "
                f"{instance}, but llmaas needs them written to check capacity; add e.g. "
                f"resources: {{CPU: 8, GPU: 1}} under available_node_types.{name}"
            )
        default_max = 0 if name == head else data["max_workers"]
        node_types.append(
            {
                "name": name,
                "resources": entry["resources"],
                "min_workers": entry.get("min_workers", 0),
                "max_workers": entry.get("max_workers", default_max),
            }
        )
    return {**data, "node_types": node_types}


def replica_demand(spec: ModelSpec) -> list[Resources]:
    """The bundles one replica of ``spec`` needs: one per tensor-parallel rank, all on one node."""
    return [dict(b) for b in model_deployment(spec, app="").bundles]


def check_capacity(catalog: Catalog, cluster: ClusterSpec) -> list[str]:
    """Every reason ``catalog`` can never fit ``cluster``, naming the model, node types, numbers and fix.

    1. A replica (all its TP bundles, STRICT_PACK: one node) that fits no node type.
    2. The minimum replicas (``min_replicas``, or a fixed ``num_replicas``) plus the router,
       tokenizer and gateway replicas that cannot all be placed on the cluster at its largest:
       the app could never become healthy.
    3. Otherwise, the maximum replicas (``max_replicas`` or ``num_replicas``) that cannot all be
       placed. A model whose ``max_replicas`` is left to the cluster (None) counts its minimum
       here: run this on the catalog as written, before ``with_capacity_defaults``.

    The placement is a conservative heuristic, deterministic: first-fit decreasing of replica
    groups (a TP replica's bundles together) onto node instances opened on demand within each
    type's and the global ``max_workers``, tried a few ways (every minimum first, then the
    replicas autoscaling may add, or all at once; opening the smallest node type that fits, or the
    largest). A catalog fits when one of the ways places every replica; otherwise the way that
    placed the most is reported. It does not foresee the Ray autoscaler's own choices, and for a
    rare fragmented mix it can report "does not fit" where an exact packing exists; it never
    reports a fit where a replica could not be placed.
    """
    problems: list[str] = []
    feasible: list[_Demand] = []
    for demand in _demands(catalog):
        if any(_fits(node.resources, demand.total) for node in cluster.node_types):
            feasible.append(demand)
        else:
            problems.append(_no_node_message(demand, cluster))
    minimums = [(d, d.min_replicas) for d in feasible]
    minimum = _best_pack(cluster, [[minimums]])
    if minimum.unplaced:
        problems.append(_over_capacity_message(cluster, minimum, "minimum"))
        return problems
    # NOTE: minimums first, then the replicas autoscaling may add, is tried first: where nothing
    # fits, what is reported unplaced is then a model's growth, not a fixed replica that sorted later.
    growth = [(d, d.max_or_min - d.min_replicas) for d in feasible]
    maximum = _best_pack(cluster, [[minimums, growth], [[(d, d.max_or_min) for d in feasible]]])
    if maximum.unplaced:
        problems.append(_over_capacity_message(cluster, maximum, "maximum"))
    return problems


def with_capacity_defaults(catalog: Catalog, cluster: ClusterSpec) -> Catalog:
    """A copy of ``catalog`` where every ``autoscaling.max_replicas: null`` is what the cluster can hold.

    That is the number of the deployment's replicas (a model's, or a pool's) placed on the
    cluster at its largest after the router, tokenizer, gateway and every other deployment's
    minimum replicas (at least its own ``min_replicas``, ``initial_replicas`` and 1, so that Serve
    accepts the bounds). Each gets the whole slack, so two such deployments compete for it at run
    time: the bound says how far one may grow, not a reservation.
    """
    demands = _demands(catalog)
    bounds: dict[str, int] = {}
    for this in demands:
        if this.plan.autoscaling_config is None or this.max_replicas is not None:
            continue
        base = [(d, d.min_replicas) for d in demands if d is not this]
        fitted = max(_room_for(cluster, base, this, prefer_large) for prefer_large in (False, True))
        bounds[this.plan.name] = max(fitted, this.min_replicas, this.plan.replicas.initial, 1)

    def bounded(replicas: ReplicaConfig, name: str) -> ReplicaConfig:
        if name not in bounds or replicas.autoscaling is None:
            return replicas
        autoscaling = replicas.autoscaling.model_copy(update={"max_replicas": bounds[name]})
        return replicas.model_copy(update={"autoscaling": autoscaling})

    models = [
        spec
        if spec.pool is not None
        else spec.model_copy(update={"replicas": bounded(spec.replicas, deployment_name(spec.id))})
        for spec in catalog.models
    ]
    pools = {
        name: pool.model_copy(update={"replicas": bounded(pool.replicas, pool_deployment_name(name))})
        for name, pool in catalog.pools.items()
    }
    return catalog.model_copy(update={"models": models, "pools": pools})


def capacity_summary(cluster: ClusterSpec) -> dict[str, Any]:
    """What a CLI prints about a cluster: node types, their bounds, and the totals at the largest."""
    return {
        "cluster_name": cluster.cluster_name,
        "head_node_type": cluster.head_node_type,
        "max_workers": cluster.max_workers,
        "node_types": [
            {
                "name": node.name,
                "head": node.name == cluster.head_node_type,
                "resources": dict(node.resources),
                "min_workers": node.min_workers,
                "max_workers": node.max_workers,
            }
            for node in cluster.node_types
        ],
        "max_nodes": cluster.max_nodes(),
        "max_totals": cluster.max_totals(),
    }


def training_worker(resources: JobResources) -> Resources:
    """One training worker's bundle: CPU, custom resources, GPU (when above 0) and memory (when set)."""
    worker: Resources = {"CPU": resources.cpus_per_worker, **resources.custom}
    if resources.gpus_per_worker > 0:
        worker["GPU"] = resources.gpus_per_worker
    if resources.memory_bytes_per_worker is not None:
        worker["memory"] = float(resources.memory_bytes_per_worker)
    return worker


@dataclass(frozen=True)
class TrainingCapacity:
    """Fine-tuning's jobs on a cluster: one job's demand, and how many fit beside serving at its maximum."""

    worker: Resources
    num_workers: int
    max_concurrent_jobs: int
    beside_max: int  # jobs that fit beside every serving replica at its maximum (at most max_concurrent_jobs)
    problems: list[str] = field(default_factory=list)  # why a job could never run

    @property
    def job(self) -> Resources:
        return _sum([self.worker] * self.num_workers)

    def line(self) -> str:
        """``llmaas check``'s line, like a model's."""
        jobs = self.max_concurrent_jobs
        shape = f"{jobs} job{'s' if jobs > 1 else ''} x {self.num_workers} x {_fmt(self.worker)}"
        fit = (
            "does not fit" if self.problems else f"{self.beside_max} of {jobs} fit beside serving at its max"
        )
        return f"{'fine-tuning':<32} {'training':<9} {shape} ({_fmt(self.job, braces=False)} a job); {fit}"

    def warning(self) -> str | None:
        """Why not every concurrent job fits beside serving at its maximum (jobs queue then), or None."""
        if self.problems or self.beside_max >= self.max_concurrent_jobs:
            return None
        return (
            f"fine-tuning: with every serving replica at its maximum (max_replicas, or num_replicas), "
            f"{self.beside_max} of the {self.max_concurrent_jobs} concurrent training jobs "
            f"(fine_tuning.max_concurrent_jobs; {_fmt(self.job, braces=False)} each) fit the cluster at its "
            "largest. The others queue until replicas scale down or nodes are added; a job never takes a "
            "serving replica's resources. To run them all at once, raise max_workers in cluster.yaml, or "
            "lower max_replicas or fine_tuning.max_concurrent_jobs"
        )


def check_training(catalog: Catalog, cluster: ClusterSpec) -> TrainingCapacity | None:
    """The catalog's training jobs counted against ``cluster`` beside its serving replicas at their
    maximum (pass the catalog after ``with_capacity_defaults``); None without a fine_tuning section."""
    config = catalog.fine_tuning
    if config is None:
        return None
    worker = training_worker(config.resources)
    count = config.resources.num_workers
    problems: list[str] = []
    if not any(_fits(node.resources, worker) for node in cluster.node_types):
        problems.append(_no_node_for_training(worker, cluster))
    elif max(_jobs_placed(cluster, [], worker, count, 1, large) for large in (False, True)) < 1:
        problems.append(
            f"fine-tuning: one training job needs {count} x {_fmt(worker)} "
            f"({_fmt(_sum([worker] * count), braces=False)} in all; fine_tuning.resources: num_workers x "
            "cpus_per_worker, gpus_per_worker, memory_bytes_per_worker), more than the cluster holds at its "
            f"largest with nothing else on it ({_fmt(cluster.max_totals(), braces=False)}; "
            f"max_workers={cluster.max_workers}), so a job would wait forever. Fix: lower "
            "fine_tuning.resources.num_workers or what a worker takes, or raise max_workers in cluster.yaml"
        )
    beside = 0
    if not problems:
        serving = [(d, d.max_or_min) for d in _demands(catalog)]
        beside = max(
            _jobs_placed(cluster, serving, worker, count, config.max_concurrent_jobs, large)
            for large in (False, True)
        )
    return TrainingCapacity(worker, count, config.max_concurrent_jobs, beside, problems)


def _jobs_placed(
    cluster: ClusterSpec,
    base: list[tuple[_Demand, int]],
    worker: Resources,
    num_workers: int,
    jobs: int,
    prefer_large: bool,
) -> int:
    """Jobs of ``num_workers`` x ``worker`` placed whole (up to ``jobs``) after ``base`` is packed."""
    packer = _Packer(cluster, prefer_large=prefer_large)
    packer.pack(base)
    placed = 0
    while placed < jobs:
        trial = copy.deepcopy(packer)  # NOTE: a job's workers are placed all or none
        if not all(trial.place(worker) for _ in range(num_workers)):
            break
        packer, placed = trial, placed + 1
    return placed


def _no_node_for_training(worker: Resources, cluster: ClusterSpec) -> str:
    types = "; ".join(node.describe() for node in cluster.node_types)
    declared = any("memory" in node.resources for node in cluster.node_types)
    hint = (
        " (no node type in cluster.yaml declares its memory: add memory: BYTES to their resources)"
        if "memory" in worker and not declared
        else ""
    )
    return (
        f"fine-tuning: one training worker needs {_fmt(worker)} (fine_tuning.resources: cpus_per_worker, "
        f"gpus_per_worker, memory_bytes_per_worker), but no node type offers it{hint} ({types}), so no job "
        f"could ever start. Fix: lower fine_tuning.resources, or add a node type with at least "
        f"{_fmt(worker, braces=False)} to available_node_types in cluster.yaml"
    )


# --- demands ---------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class _Demand:
    """One deployment's replica (from the deployment plan): its bundles and replica bounds."""

    plan: DeploymentPlan

    @property
    def label(self) -> str:
        return self.plan.label

    @property
    def fix(self) -> str:
        return self.plan.fix

    @property
    def bundles(self) -> tuple[Resources, ...]:
        return self.plan.bundles

    @property
    def min_replicas(self) -> int:
        return self.plan.replicas.min

    @property
    def max_replicas(self) -> int | None:
        return self.plan.replicas.max

    @property
    def total(self) -> Resources:
        return _sum(self.bundles)

    @property
    def max_or_min(self) -> int:
        return self.plan.replicas.max_or_min


_ORDER = {"pool": 0, "model": 1}


def _demands(catalog: Catalog) -> list[_Demand]:
    """The plan's deployments that take resources: pools, models (catalog order), then the rest.

    NOTE: the same plan the builder binds (``llmaas.plan``), so what is checked is what Serve asks for.
    """
    deployments = plan_catalog(catalog).deployments
    ordered = sorted(deployments, key=lambda d: _ORDER.get(d.kind, 2))
    return [_Demand(d) for d in ordered if any(value > 0 for value in d.total.values())]


# --- packing ---------------------------------------------------------------------------------


@dataclass
class _Node:
    type: NodeType
    free: Resources


@dataclass
class _PackResult:
    placed: Counter[str] = field(default_factory=Counter)
    unplaced: Counter[str] = field(default_factory=Counter)
    asked: list[tuple[_Demand, int]] = field(default_factory=list)

    def merge(self, other: _PackResult) -> None:
        self.placed.update(other.placed)
        self.unplaced.update(other.unplaced)

    @property
    def unplaced_count(self) -> int:
        return sum(self.unplaced.values())


class _Packer:
    """Node instances of one cluster, opened on demand within its bounds, with what is still free."""

    def __init__(self, cluster: ClusterSpec, *, prefer_large: bool = False) -> None:
        self.cluster = cluster
        self.prefer_large = prefer_large
        self.nodes = [_Node(cluster.head, dict(cluster.head.resources))]
        self.left = {node.name: node.max_workers for node in cluster.node_types}
        self.workers_left = cluster.max_workers

    def place(self, need: Resources) -> bool:
        """Put one replica group on the first open node with room, else on a new node of a type that fits.

        The new node is of the smallest such type, or of the largest with ``prefer_large`` (which
        wins where the global max_workers, not the types' own, is the bound).
        """
        for node in self.nodes:
            if _fits(node.free, need):
                _take(node.free, need)
                return True
        if self.workers_left <= 0:
            return False
        candidates = [
            node
            for node in self.cluster.node_types
            if self.left[node.name] > 0 and _fits(node.resources, need)
        ]
        if not candidates:
            return False
        pick = max if self.prefer_large else min
        chosen = pick(candidates, key=lambda n: n.size_key)
        self.left[chosen.name] -= 1
        self.workers_left -= 1
        opened = _Node(chosen, dict(chosen.resources))
        _take(opened.free, need)
        self.nodes.append(opened)
        # NOTE: open nodes stay ordered small to large (stable: opening order within a type), so
        # CPU-only groups land on the head first and GPU groups on the smallest GPU node with room,
        # keeping big nodes whole for big groups.
        self.nodes.sort(key=lambda n: n.type.size_key)
        return True

    def pack(self, asked: list[tuple[_Demand, int]]) -> _PackResult:
        """First-fit decreasing: the biggest replica groups first, each model's replicas in catalog order."""
        result = _PackResult(asked=asked)
        groups = [demand for demand, count in asked for _ in range(count)]
        groups.sort(key=lambda d: (_size_key(d.total), len(d.bundles)), reverse=True)
        for demand in groups:
            if self.place(demand.total):
                result.placed[demand.label] += 1
            else:
                result.unplaced[demand.label] += 1
        return result


def _best_pack(cluster: ClusterSpec, orders: list[list[list[tuple[_Demand, int]]]]) -> _PackResult:
    """Pack each order (a list of phases) both ways: the first result placing everything, else the best."""
    results: list[_PackResult] = []
    for phases in orders:
        for prefer_large in (False, True):
            packer = _Packer(cluster, prefer_large=prefer_large)
            result = _PackResult()
            for phase in phases:
                result.merge(packer.pack(phase))
            result.asked = _combined(phases)
            if not result.unplaced:
                return result
            results.append(result)
    return min(results, key=lambda r: r.unplaced_count)


def _combined(phases: list[list[tuple[_Demand, int]]]) -> list[tuple[_Demand, int]]:
    """Replicas asked per demand over all phases, in first-seen order."""
    counts: dict[int, tuple[_Demand, int]] = {}
    for phase in phases:
        for demand, count in phase:
            previous = counts.get(id(demand), (demand, 0))[1]
            counts[id(demand)] = (demand, previous + count)
    return list(counts.values())


def _room_for(
    cluster: ClusterSpec, base: list[tuple[_Demand, int]], demand: _Demand, prefer_large: bool
) -> int:
    """Replicas of ``demand`` placed after ``base``, one at a time until one does not fit."""
    packer = _Packer(cluster, prefer_large=prefer_large)
    packer.pack(base)
    fitted = 0
    while fitted < _MAX_DERIVED_REPLICAS and packer.place(demand.total):
        fitted += 1
    return fitted


# --- messages --------------------------------------------------------------------------------


def _no_node_message(demand: _Demand, cluster: ClusterSpec) -> str:
    total = demand.total
    count = len(demand.bundles)
    if count > 1:
        shape = (
            f"{count} x {_fmt(demand.bundles[0])} on one node "
            f"(tensor_parallel_size={count}; {_fmt(total)} in all)"
        )
    else:
        shape = _fmt(total)
    short = {
        key: max(node.resources.get(key, 0.0) for node in cluster.node_types)
        for key, value in total.items()
        if value > max(node.resources.get(key, 0.0) for node in cluster.node_types)
    }
    undeclared = [key for key in short if not any(key in node.resources for node in cluster.node_types)]
    if "memory" in undeclared:
        # NOTE: Ray autodetects a node's memory, but what is not written cannot be checked
        return (
            f"{demand.label}: one replica needs memory {_num(total['memory'], 'memory')} "
            "(resources.memory_bytes), but no node type in cluster.yaml declares its memory. Fix: add "
            "memory: BYTES to the resources of the node types that may run it, or drop memory_bytes"
        )
    if short:
        offers = ", ".join(f"{key} {_num(value, key)}" for key, value in _ordered(short))
        why = f"the largest node type offers {offers}"
    else:
        why = "no single node type offers all of it at once"
    types = "; ".join(node.describe() for node in cluster.node_types)
    return (
        f"{demand.label}: one replica needs {shape}, but {why} ({types}). Fix: add a node type with at least "
        f"{_fmt(total, braces=False)} to available_node_types in cluster.yaml, or {demand.fix}"
    )


def _over_capacity_message(cluster: ClusterSpec, result: _PackResult, which: str) -> str:
    asked_total: Resources = {}
    for demand, count in result.asked:
        for key, value in demand.total.items():
            asked_total[key] = _round(asked_total.get(key, 0.0) + value * count)
    placed = ", ".join(
        f"{demand.label} {result.placed[demand.label]} of {count} ({_shape(demand)} each)"
        for demand, count in result.asked
        if count
    )
    unplaced = ", ".join(
        f"{label} {count} replica{'s' if count > 1 else ''}" for label, count in result.unplaced.items()
    )
    by_name = {node.name: node for node in cluster.node_types}
    nodes = ", ".join(
        f"the head ({_fmt(by_name[name].resources, braces=False)})"
        if name == cluster.head_node_type and count == 1
        else f"{name} x {count} ({_fmt(by_name[name].resources, braces=False)} each)"
        for name, count in cluster.max_nodes().items()
        if count
    )
    models = ", ".join(label for label in result.unplaced)
    if which == "minimum":
        head = (
            "the catalog's minimum replicas (min_replicas, or num_replicas) do not fit the cluster at its "
            "largest, so the app could never become healthy"
        )
        fix = f"lower min_replicas or num_replicas of {models}"
    else:
        head = (
            "the catalog's maximum replicas (max_replicas, or num_replicas) do not fit the cluster "
            "at its largest"
        )
        fix = f"lower replicas.autoscaling.max_replicas (or num_replicas) of {models}"
    return (
        f"{head}: it asks for {_fmt(asked_total, braces=False)} in all; the cluster holds at most {nodes} "
        f"(max_workers={cluster.max_workers}; {_fmt(cluster.max_totals(), braces=False)} in all). "
        f"Placed: {placed}. Not placed: {unplaced}. Fix: {fix}, or raise max_workers of a node type "
        "that fits them (and the global max_workers) in cluster.yaml"
    )


def _shape(demand: _Demand) -> str:
    if len(demand.bundles) > 1:
        return f"{len(demand.bundles)} x {_fmt(demand.bundles[0])}"
    return _fmt(demand.total)


# --- resource arithmetic ---------------------------------------------------------------------


def _round(value: float) -> float:
    return round(value, _RESOURCE_DIGITS)


def _sum(bundles: tuple[Resources, ...] | list[Resources]) -> Resources:
    total: Resources = {}
    for bundle in bundles:
        for key, value in bundle.items():
            total[key] = _round(total.get(key, 0.0) + value)
    return total


def _fits(free: Resources, need: Resources) -> bool:
    return all(_round(free.get(key, 0.0) - value) >= 0 for key, value in need.items() if value > 0)


def _take(free: Resources, need: Resources) -> None:
    for key, value in need.items():
        free[key] = _round(free.get(key, 0.0) - value)


def _size_key(resources: Resources) -> tuple[float, float, float]:
    rest = sum(value for key, value in resources.items() if key not in ("GPU", "CPU", "memory"))
    return resources.get("GPU", 0.0), resources.get("CPU", 0.0), rest


def _ordered(resources: Resources) -> list[tuple[str, float]]:
    """GPU, CPU, then the rest by name: the order people read capacity in."""
    rank = {"GPU": 0, "CPU": 1}
    return sorted(resources.items(), key=lambda item: (rank.get(item[0], 2), item[0]))


def _num(value: float, key: str = "") -> str:
    """A resource amount as people write it: ``4``, ``0.5``, memory as ``20GiB``."""
    if key == "memory":
        for unit, size in (("GiB", 2**30), ("MiB", 2**20)):
            if value >= size and (value / size).is_integer():
                return f"{int(value // size)}{unit}"
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _fmt(resources: Resources, *, braces: bool = True) -> str:
    """``{GPU: 1, CPU: 4}`` (braces) or ``GPU 1, CPU 4`` (prose)."""
    separator = ": " if braces else " "
    text = ", ".join(f"{key}{separator}{_num(value, key)}" for key, value in _ordered(resources))
    return f"{{{text}}}" if braces else text


__all__ = [
    "ClusterSpec",
    "LauncherView",
    "NodeType",
    "Resources",
    "TrainingCapacity",
    "capacity_summary",
    "check_capacity",
    "check_training",
    "replica_demand",
    "training_worker",
    "with_capacity_defaults",
]
