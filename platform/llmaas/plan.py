"""The deployment plan: one typed function from a catalog to every Serve deployment it runs.

``plan_catalog(catalog)`` says, for each deployment, its Serve application and name, the
import path and args of its application, its actor options, its placement-group bundles and
strategy, its replica bounds (min / initial / max), its multiplexing, its request router, and
the resources each replica takes. Everything that turns a catalog into Serve options reads it:

- the app builder (``llmaas.deployments.builder``) binds each deployment with ``serve_options()``;
- ``llmaas deploy`` (``llmaas.deploy``) sends ``serve_config()`` to Serve's declarative API;
- the capacity check (``llmaas.capacity``) packs each deployment's ``bundles`` x replica bounds;
- ``llmaas serve``, ``deploy`` and ``status`` (``llmaas.launch``, ``llmaas.status``) wait on
  ``targets()`` and label deployments with ``labels()``;
- tensor-parallel peer ranks (``llmaas.deployments.workers``) take ``worker_actor_options``.

Nothing else computes Serve options (ray-project/ray's ``get_deployment_options`` in spirit).

Two shapes over the same deployments:
- ``split`` (``llmaas serve``, ``llmaas deploy``): a front application (router, tokenizer,
  gateway, catalog admin) and one application per model or pool. Serve versions an application
  by its import path and args and restarts all of it when they change, so one application per
  model rolls only that model; replica counts travel as deployment overrides, which Serve
  applies without a restart; the router and tokenizer take the catalog as ``user_config``.
- ``single`` (``build_app``, for a hand-written Serve config or ``serve.run``): every
  deployment in one application. Its catalog cannot change live (no catalog admin).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from llmaas.autoscaling import policy_config
from llmaas.config.base import BaseConfig
from llmaas.config.catalog import (
    Catalog,
    ComponentConfig,
    ModelSpec,
    PoolConfig,
    ReplicaConfig,
    Task,
    TokenizerConfig,
    WorkerResources,
)
from llmaas.config.fine_tuning import FineTuningConfig
from llmaas.config.gateway import GatewayConfig
from llmaas.naming import (
    CATALOG_ADMIN,
    FINE_TUNING,
    GATEWAY,
    ROUTER,
    TOKENIZER,
    deployment_name,
    model_app_name,
    pool_app_name,
    pool_deployment_name,
)

Resources = dict[str, float]
Shape = Literal["split", "single"]
Kind = Literal["router", "tokenizer", "gateway", "catalog-admin", "fine-tuning", "model", "pool"]

FRONT_IMPORT_PATH = "llmaas.deployments.builder:build_front"
MODEL_IMPORT_PATH = "llmaas.deployments.builder:build_model"
POOL_IMPORT_PATH = "llmaas.deployments.builder:build_pool"
APP_IMPORT_PATH = "llmaas.deployments.builder:build_app"

#: Serve's checks of a model or pool replica (a replica that loads weights takes a while to drain).
REPLICA_CHECKS: dict[str, float] = {
    "health_check_period_s": 10,
    "health_check_timeout_s": 30,
    "graceful_shutdown_timeout_s": 30,
}
#: the gateway's replica count: its limits' counters live in one place
GATEWAY_REPLICAS = 1
GATEWAY_MAX_ONGOING = 100_000
#: The request router of a generating model whose prefix cache routes. NOTE: an import path, not
#: the class: the plan stays free of Ray (Serve imports it where the deployment is built).
PREFIX_ROUTER = "llmaas.routing.PrefixAffinityRouter"


# --- the args of each application's builder ---------------------------------------------------


class FrontArgs(BaseConfig):
    """Arguments of ``build_front``: what the router, tokenizer and gateway deployments are sized by.

    The catalog itself reaches them as ``user_config`` (see ``catalog_user_config``).
    """

    router: ComponentConfig = Field(default_factory=ComponentConfig)
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
    gateway: GatewayConfig | None = None
    app_name: str = Field(default="llmaas", description="The platform's front application (catalog admin).")
    fine_tuning: FineTuningConfig | None = None


class ModelArgs(BaseConfig):
    """Arguments of ``build_model``: one catalog entry; its replica counts come as overrides."""

    model: ModelSpec
    cache_dir: str


class PoolArgs(BaseConfig):
    """Arguments of ``build_pool``: the pool and its models (their replica counts unused)."""

    name: str
    pool: PoolConfig
    models: list[ModelSpec]
    cache_dir: str


# --- the plan ----------------------------------------------------------------------------------


class ReplicaBounds(BaseModel):
    """How many replicas a deployment runs: at least ``min``, ``initial`` at first, at most ``max``.

    ``max`` None: an autoscaling model whose catalog leaves ``max_replicas`` to the cluster
    (``llmaas.capacity.with_capacity_defaults`` fills it in); Serve is told ``max(1, min)``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    min: int = Field(ge=0)
    initial: int = Field(ge=0)
    max: int | None = Field(default=None, ge=1)

    @property
    def max_or_min(self) -> int:
        """The most replicas the catalog as written asks for (its minimum where it leaves max open)."""
        return self.min if self.max is None else self.max

    @classmethod
    def of(cls, replicas: ReplicaConfig) -> ReplicaBounds:
        autoscaling = replicas.autoscaling
        if autoscaling is None:
            fixed = replicas.num_replicas or 1
            return cls(min=fixed, initial=fixed, max=fixed)
        initial = autoscaling.initial_replicas
        return cls(
            min=autoscaling.min_replicas,
            initial=autoscaling.min_replicas if initial is None else initial,
            max=autoscaling.max_replicas,
        )

    @classmethod
    def fixed(cls, count: int) -> ReplicaBounds:
        return cls(min=count, initial=count, max=count)


class DeploymentPlan(BaseModel):
    """One Serve deployment of the platform, as the builder binds it and capacity counts it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(description="The Serve deployment name.")
    app: str = Field(description="The Serve application it runs in.")
    kind: Kind
    models: tuple[str, ...] = Field(default=(), description="Model ids it serves (models and pools).")
    label: str = Field(description="How messages name it: model 'x', pool 'p' (models ...), router.")
    fix: str = Field(default="", description="What to lower when one replica fits no node.")
    actor_options: dict[str, Any] = Field(description="Serve's ray_actor_options of each replica.")
    bundles: tuple[Resources, ...] = Field(
        description="What one replica takes, one bundle per tensor-parallel rank (rank 0: the replica)."
    )
    placement_group: bool = Field(
        default=False, description="The bundles are a STRICT_PACK placement group (TP > 1)."
    )
    replicas: ReplicaBounds
    max_ongoing_requests: int
    max_queued_requests: int | None = None
    autoscaling_config: dict[str, Any] | None = Field(
        default=None, description="Serve's autoscaling_config; None: a fixed replicas.initial."
    )
    health_checks: bool = Field(default=False, description="Serve's REPLICA_CHECKS apply.")
    user_config: dict[str, Any] | None = None
    max_models_per_replica: int | None = Field(default=None, description="Multiplexed: models per replica.")
    request_router: dict[str, Any] | None = Field(
        default=None, description="Serve's request_router_config; None: Serve's default router."
    )

    @property
    def total(self) -> Resources:
        """What one replica takes in all (every rank's bundle)."""
        return _sum(self.bundles)

    def scaling_options(self) -> dict[str, Any]:
        """The options Serve changes without restarting replicas: a deploy's override."""
        options: dict[str, Any] = {"max_ongoing_requests": self.max_ongoing_requests}
        if self.autoscaling_config is None:
            options["num_replicas"] = self.replicas.initial
        else:
            options["autoscaling_config"] = dict(self.autoscaling_config)
        return options

    def serve_options(self) -> dict[str, Any]:
        """Everything ``serve.deployment(cls, **options)`` takes for this deployment."""
        options: dict[str, Any] = {"name": self.name, "ray_actor_options": dict(self.actor_options)}
        if self.max_queued_requests is not None:
            options["max_queued_requests"] = self.max_queued_requests
        if self.placement_group:
            # NOTE: the replica takes bundle 0, TP peers bundles 1..N-1, all on one node.
            options["placement_group_bundles"] = [dict(b) for b in self.bundles]
            options["placement_group_strategy"] = "STRICT_PACK"
        if self.health_checks:
            options.update(REPLICA_CHECKS)
        if self.user_config is not None:
            options["user_config"] = self.user_config
        if self.request_router is not None:
            options["request_router_config"] = {
                **self.request_router,
                "request_router_kwargs": dict(self.request_router.get("request_router_kwargs", {})),
            }
        options.update(self.scaling_options())
        return options

    def override(self) -> dict[str, Any]:
        """This deployment's entry in a declarative Serve config (what a deploy may change live)."""
        if self.kind in ("router", "tokenizer", "fine-tuning"):
            return {"name": self.name, "user_config": self.user_config}
        if self.kind in ("model", "pool"):
            return {"name": self.name, **self.scaling_options()}
        return {"name": self.name}


class ApplicationPlan(BaseModel):
    """One Serve application: what Serve builds (import path and args) and its deployments."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    route_prefix: str | None = Field(description="'/' for the front; None: reached through the router only.")
    import_path: str
    args: dict[str, Any]
    deployments: tuple[DeploymentPlan, ...]

    def serve_config(self, route_prefix: str | None = None) -> dict[str, Any]:
        """This application as an entry of ``applications:`` in a Serve config."""
        # NOTE: a deployment with nothing to change live (the gateway, the catalog admin) is left out
        overrides = [o for o in (d.override() for d in self.deployments) if len(o) > 1]
        prefix = self.route_prefix if self.route_prefix is None else (route_prefix or self.route_prefix)
        return {
            "name": self.name,
            "route_prefix": prefix,
            "import_path": self.import_path,
            "args": self.args,
            "deployments": overrides,
        }


class Plan(BaseModel):
    """Every Serve application and deployment of a catalog."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    app_name: str
    shape: Shape
    applications: tuple[ApplicationPlan, ...]

    @property
    def deployments(self) -> list[DeploymentPlan]:
        return [d for app in self.applications for d in app.deployments]

    @property
    def front(self) -> ApplicationPlan:
        return self.applications[0]

    def deployment(self, name: str) -> DeploymentPlan:
        return next(d for d in self.deployments if d.name == name)

    def model_apps(self) -> dict[str, str]:
        """Model id -> the Serve application that serves it (its own, or its pool's)."""
        return {model: d.app for d in self.deployments for model in d.models}

    def app_names(self) -> list[str]:
        return [app.name for app in self.applications]

    def targets(self) -> dict[str, int]:
        """Replicas each deployment starts with, by deployment name (what "all running" means)."""
        return {d.name: d.replicas.initial for d in self.deployments}

    def labels(self) -> dict[str, str]:
        """Deployment name -> the model (or the pool's models) it serves, for progress and status."""
        return {d.name: ", ".join(d.models) for d in self.deployments if d.models}

    def cpus_needed(self) -> float:
        """Logical CPUs the deployments ask Ray for at their initial sizes."""
        return round(sum(d.total.get("CPU", 0.0) * d.replicas.initial for d in self.deployments), 4)

    def serve_config(self, route_prefix: str = "/") -> list[dict[str, Any]]:
        """The catalog as ``applications:`` of a Serve config: the front first, then models and pools."""
        return [app.serve_config(route_prefix) for app in self.applications]


# --- planning ----------------------------------------------------------------------------------


def worker_actor_options(resources: WorkerResources) -> dict[str, Any]:
    """Ray actor options of each rank of a replica (rank 0 is the replica, 1..N-1 its TP peers)."""
    options: dict[str, Any] = {"num_cpus": resources.num_cpus, "num_gpus": resources.num_gpus}
    if resources.custom:
        options["resources"] = dict(resources.custom)
    if resources.memory_bytes:
        options["memory"] = resources.memory_bytes
    return options


def worker_bundle(resources: WorkerResources) -> Resources:
    """The placement-group bundle of one rank: the same resources as its actor options."""
    bundle: Resources = {"CPU": resources.num_cpus, **resources.custom}
    if resources.num_gpus:
        bundle["GPU"] = resources.num_gpus
    if resources.memory_bytes:
        bundle["memory"] = float(resources.memory_bytes)
    return bundle


def catalog_user_config(catalog: Catalog, model_apps: dict[str, str] | None = None) -> dict[str, Any]:
    """The router's and the tokenizer's ``user_config``: the catalog, and which Serve application
    runs each model (left out: the router's own)."""
    return {"catalog": catalog.model_dump(mode="json"), "model_apps": model_apps or {}}


def _autoscaling(
    replicas: ReplicaConfig, target: float, policy: dict[str, str] | None
) -> dict[str, Any] | None:
    autoscaling = replicas.autoscaling
    if autoscaling is None:
        return None
    config: dict[str, Any] = {
        "min_replicas": autoscaling.min_replicas,
        "max_replicas": autoscaling.max_or_default,
        "initial_replicas": autoscaling.initial_replicas,
        "target_ongoing_requests": target,
        "upscale_delay_s": autoscaling.upscale_delay_s,
        "downscale_delay_s": autoscaling.downscale_delay_s,
        "metrics_interval_s": autoscaling.metrics_interval_s,
        "look_back_period_s": autoscaling.look_back_period_s,
    }
    if policy is not None:
        config["policy"] = policy
    return config


def request_router(spec: ModelSpec) -> dict[str, Any] | None:
    """Serve's ``request_router_config`` of a model's own deployment: prefix-aware routing
    (``llmaas.routing``) for a generating model whose prefix cache is on and routes; None: Serve's
    default (embedding and classify models keep no prompt cache; pools route by model id).

    NOTE: not decided on the replica count, though one replica has nothing to choose between
    (the router then takes Serve's choice at once). ``llmaas deploy`` builds a model's
    application from args without its replica counts (they travel as live overrides), so its
    code-level options cannot see them; and Serve 2.60 folds an override's request_router_config
    into the application's code version (``get_app_code_version``), which every replica's version
    carries, so deciding it there would restart a model's replicas when it scales past one.
    """
    cache = spec.prefix_cache
    if spec.task is not Task.GENERATE or not (cache.enabled and cache.routing):
        return None
    return {
        "request_router_class": PREFIX_ROUTER,
        "request_router_kwargs": {
            "block_size": cache.block_size,
            # NOTE: a replica runs up to max_batch_size sequences at once; a prefix's holder may be
            # half a batch busier than the least loaded replica before its hit stops paying for
            # the wait
            "imbalanced_threshold": max(1, spec.batching.max_batch_size // 2),
        },
    }


def model_deployment(spec: ModelSpec, app: str, adapters: Sequence[ModelSpec] = ()) -> DeploymentPlan:
    """A model's own deployment: one replica = one bundle per tensor-parallel rank; it serves
    ``adapters`` (LoRA, ``adapter_of`` it) too."""
    # NOTE: a generating model scales on its scheduler's sequences, not on handle calls:
    # see llmaas.autoscaling
    policy = policy_config() if spec.task is Task.GENERATE else None
    return DeploymentPlan(
        name=deployment_name(spec.id),
        app=app,
        kind="model",
        models=(spec.id, *(adapter.id for adapter in adapters)),
        label=f"model {spec.id!r}",
        fix=f"lower tensor_parallel_size or resources of model {spec.id!r}",
        actor_options=worker_actor_options(spec.resources),
        bundles=tuple(worker_bundle(spec.resources) for _ in range(spec.tensor_parallel_size)),
        placement_group=spec.tensor_parallel_size > 1,
        replicas=ReplicaBounds.of(spec.replicas),
        max_ongoing_requests=spec.max_ongoing_requests,
        max_queued_requests=spec.batching.max_queued_requests,
        autoscaling_config=_autoscaling(spec.replicas, spec.target_sequences, policy),
        health_checks=True,
        request_router=request_router(spec),
    )


def pool_deployment(name: str, pool: PoolConfig, members: list[ModelSpec], app: str) -> DeploymentPlan:
    """A multiplexed pool: its own resources and replicas, scaled on Serve's request counts
    (a pool's replicas run many engines), its models' queue."""
    batch = max((m.batching.max_batch_size for m in members), default=16)
    autoscaling = pool.replicas.autoscaling
    target = (autoscaling and autoscaling.target_ongoing_requests) or max(1.0, 0.75 * batch)
    listing = ", ".join(repr(m.id) for m in members)
    return DeploymentPlan(
        name=pool_deployment_name(name),
        app=app,
        kind="pool",
        models=tuple(m.id for m in members),
        label=f"pool {name!r} (models {listing})",
        fix=f"lower pools.{name}.resources",
        actor_options=worker_actor_options(pool.resources),
        bundles=(worker_bundle(pool.resources),),
        replicas=ReplicaBounds.of(pool.replicas),
        max_ongoing_requests=pool.replicas.max_ongoing_requests or 2 * batch,
        max_queued_requests=max((m.batching.max_queued_requests for m in members), default=256),
        autoscaling_config=_autoscaling(pool.replicas, target, None),
        health_checks=True,
        max_models_per_replica=pool.max_models_per_replica,
    )


def _component(
    kind: Literal["router", "tokenizer"],
    config: ComponentConfig,
    app: str,
    user_config: dict[str, Any] | None,
) -> DeploymentPlan:
    return DeploymentPlan(
        name=kind,
        app=app,
        kind=kind,
        label=kind,
        fix=f"lower {kind}.num_cpus in the catalog",
        actor_options={"num_cpus": config.num_cpus},
        bundles=({"CPU": config.num_cpus},),
        replicas=ReplicaBounds.fixed(config.num_replicas),
        max_ongoing_requests=config.max_ongoing_requests,
        user_config=user_config,
    )


def front_deployments(
    front: FrontArgs, app: str, user_config: dict[str, Any] | None, *, admin: bool
) -> list[DeploymentPlan]:
    """The router, the tokenizer, the gateway (where configured) and the catalog admin (``admin``)."""
    deployments = [
        _component(ROUTER, front.router, app, user_config),
        _component(TOKENIZER, front.tokenizer, app, user_config),
    ]
    if front.gateway is not None:
        deployments.append(
            DeploymentPlan(
                name=GATEWAY,
                app=app,
                kind="gateway",
                label=GATEWAY,
                fix="lower gateway.num_cpus in the catalog",
                actor_options={"num_cpus": front.gateway.num_cpus},
                bundles=({"CPU": front.gateway.num_cpus},),
                replicas=ReplicaBounds.fixed(GATEWAY_REPLICAS),
                max_ongoing_requests=GATEWAY_MAX_ONGOING,
            )
        )
    if admin:
        # NOTE: catalog changes (the admin API) run here, not in the router: the control plane
        # stays out of the request path. It waits on Serve's controller, so it takes no CPU.
        deployments.append(
            DeploymentPlan(
                name=CATALOG_ADMIN,
                app=app,
                kind="catalog-admin",
                label=CATALOG_ADMIN,
                actor_options={"num_cpus": 0},
                bundles=({"CPU": 0.0},),
                replicas=ReplicaBounds.fixed(1),
                max_ongoing_requests=16,
            )
        )
    if admin and front.fine_tuning is not None:
        # NOTE: files, jobs and the job runner; training itself runs in Ray Train's workers, which
        # reserve fine_tuning.resources when a job starts, so this replica takes no CPU.
        deployments.append(
            DeploymentPlan(
                name=FINE_TUNING,
                app=app,
                kind="fine-tuning",
                label=FINE_TUNING,
                actor_options={"num_cpus": 0},
                bundles=({"CPU": 0.0},),
                replicas=ReplicaBounds.fixed(1),
                max_ongoing_requests=64,
                user_config=user_config,
            )
        )
    return deployments


def front_args(catalog: Catalog) -> FrontArgs:
    return FrontArgs(
        router=catalog.router,
        tokenizer=catalog.tokenizer,
        gateway=catalog.gateway,
        app_name=catalog.app_name,
        fine_tuning=catalog.fine_tuning,
    )


def plan_catalog(catalog: Catalog, *, shape: Shape = "split") -> Plan:
    """Every Serve application and deployment that ``catalog`` runs, in ``shape``."""
    split = shape == "split"
    name = catalog.app_name
    cache_dir = str(catalog.cache_path)
    # NOTE: an adapter is served by its base's deployment, in its base's application
    model_apps = {
        spec.id: (pool_app_name(name, spec.pool) if spec.pool else model_app_name(name, spec.id))
        if split
        else name
        for spec in map(catalog.base_of, catalog.models)
    }
    model_apps |= {spec.id: model_apps[catalog.base_of(spec).id] for spec in catalog.models}
    # NOTE: the router learns other applications' names only in the split shape; in one
    # application it reaches every model through the handles the builder binds.
    user_config = catalog_user_config(catalog, model_apps if split else None)
    front = front_args(catalog)
    front_plan = front_deployments(front, name, user_config, admin=split)
    pools = [
        pool_deployment(
            pool_name,
            pool,
            catalog.pool_members(pool_name),
            pool_app_name(name, pool_name) if split else name,
        )
        for pool_name, pool in catalog.pools.items()
    ]
    models = [
        (spec, model_deployment(spec, model_apps[spec.id], catalog.adapters_of(spec)))
        for spec in catalog.models
        if spec.pool is None and spec.adapter_of is None
    ]
    if not split:
        application = ApplicationPlan(
            name=name,
            route_prefix="/",
            import_path=APP_IMPORT_PATH,
            args={},
            deployments=(*front_plan, *(d for _, d in models), *pools),
        )
        return Plan(app_name=name, shape=shape, applications=(application,))
    applications = [
        ApplicationPlan(
            name=name,
            route_prefix="/",
            import_path=FRONT_IMPORT_PATH,
            args=front.model_dump(mode="json"),
            deployments=tuple(front_plan),
        )
    ]
    # NOTE: replica counts are left out of args (a change there rebuilds and restarts the
    # application) and given as the deployment's override, which Serve applies live.
    applications += [
        ApplicationPlan(
            name=deployment.app,
            route_prefix=None,
            import_path=MODEL_IMPORT_PATH,
            args=ModelArgs(model=spec, cache_dir=cache_dir).model_dump(
                mode="json", exclude={"model": {"replicas"}}
            ),
            deployments=(deployment,),
        )
        for spec, deployment in models
    ]
    applications += [
        ApplicationPlan(
            name=deployment.app,
            route_prefix=None,
            import_path=POOL_IMPORT_PATH,
            args=PoolArgs(
                name=pool_name,
                pool=catalog.pools[pool_name],
                models=catalog.pool_members(pool_name),
                cache_dir=cache_dir,
            ).model_dump(mode="json", exclude={"pool": {"replicas"}, "models": {"__all__": {"replicas"}}}),
            deployments=(deployment,),
        )
        for pool_name, deployment in zip(catalog.pools, pools, strict=True)
    ]
    return Plan(app_name=name, shape=shape, applications=tuple(applications))


def _sum(bundles: tuple[Resources, ...]) -> Resources:
    total: Resources = {}
    for bundle in bundles:
        for key, value in bundle.items():
            total[key] = round(total.get(key, 0.0) + value, 4)
    return total


__all__ = [
    "APP_IMPORT_PATH",
    "FRONT_IMPORT_PATH",
    "MODEL_IMPORT_PATH",
    "POOL_IMPORT_PATH",
    "PREFIX_ROUTER",
    "ApplicationPlan",
    "DeploymentPlan",
    "FrontArgs",
    "ModelArgs",
    "Plan",
    "PoolArgs",
    "ReplicaBounds",
    "catalog_user_config",
    "front_args",
    "front_deployments",
    "model_deployment",
    "plan_catalog",
    "pool_deployment",
    "request_router",
    "worker_actor_options",
    "worker_bundle",
]
