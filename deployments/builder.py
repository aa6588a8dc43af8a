"""The app builder: from a catalog to bound Serve applications (Router -> Tokenizer -> models).

Two shapes over the same deployments:
- ``build_app`` (``import_path: llmaas.deployments.builder:build_app``, ``args: {catalog: FILE}``)
  and ``build_from_catalog``: one application holding the router, the tokenizer and every model;
- ``build_front`` and ``build_model``: what ``llmaas deploy`` (``llmaas.deploy``) gives Serve's
  declarative API, one application for the router and tokenizer and one per model.

Why the second: Serve versions an application by its import path and ``args``, and rebuilds
and restarts all of it when they change. One application per model makes a new entry roll that
model's replicas only; replica counts and autoscaling bounds travel as the deployment's config
overrides, which Serve applies without a restart; and the router and tokenizer get the catalog
as ``user_config``, which Serve hands to their live replicas (``reconfigure``), so adding or
removing a model restarts neither.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field
from ray import serve
from ray.serve import Application

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
    deployment_name,
    pool_deployment_name,
)
from llmaas.config.gateway import GatewayConfig
from llmaas.deployments.gateway import GatewayReplica
from llmaas.deployments.model_replica import ModelReplica
from llmaas.deployments.pool import pool_class
from llmaas.deployments.router import Router
from llmaas.deployments.tokenizer import Tokenizer
from llmaas.engine import Engine
from llmaas.preflight import check_catalog, check_model


class AppArgs(BaseConfig):
    """Arguments of ``build_app`` (``args:`` in a Serve config)."""

    catalog: str | None = Field(default=None, description="Catalog YAML; default: the embedded one.")


class FrontArgs(BaseConfig):
    """Arguments of ``build_front``: what the router, tokenizer and gateway deployments are sized by.

    The catalog itself reaches them as ``user_config`` (see ``catalog_user_config``).
    """

    router: ComponentConfig = Field(default_factory=ComponentConfig)
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
    gateway: GatewayConfig | None = None


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


def catalog_user_config(catalog: Catalog, model_apps: dict[str, str] | None = None) -> dict[str, Any]:
    """The router's and the tokenizer's ``user_config``: the catalog, and which Serve application
    runs each model (left out: the router's own)."""
    return {"catalog": catalog.model_dump(mode="json"), "model_apps": model_apps or {}}


def _actor_options(res: WorkerResources) -> dict[str, Any]:
    actor_options: dict[str, Any] = {"num_cpus": res.num_cpus, "num_gpus": res.num_gpus}
    if res.custom:
        actor_options["resources"] = dict(res.custom)
    if res.memory_bytes:
        actor_options["memory"] = res.memory_bytes
    return actor_options


_REPLICA_CHECKS = {
    "health_check_period_s": 10,
    "health_check_timeout_s": 30,
    "graceful_shutdown_timeout_s": 30,
}


def model_deployment_options(spec: ModelSpec) -> dict[str, Any]:
    """Serve options for one model, computed from its catalog entry."""
    res = spec.resources
    per_worker: dict[str, float] = {"CPU": res.num_cpus, **res.custom}
    if res.num_gpus:
        per_worker["GPU"] = res.num_gpus
    options: dict[str, Any] = {
        "name": deployment_name(spec.id),
        "max_queued_requests": spec.batching.max_queued_requests,
        "ray_actor_options": _actor_options(res),
        **_REPLICA_CHECKS,
    }
    if spec.tensor_parallel_size > 1:
        # NOTE: the replica takes bundle 0, TP peers bundles 1..N-1, all on one node.
        options["placement_group_bundles"] = [dict(per_worker) for _ in range(spec.tensor_parallel_size)]
        options["placement_group_strategy"] = "STRICT_PACK"
    options.update(scaling_options(spec))
    return options


def pool_deployment_options(name: str, catalog: Catalog) -> dict[str, Any]:
    """Serve options for a multiplexed pool: its own resources and replicas, its models' queue."""
    members = catalog.pool_members(name)
    return {
        "name": pool_deployment_name(name),
        "max_queued_requests": max((m.batching.max_queued_requests for m in members), default=256),
        "ray_actor_options": _actor_options(catalog.pools[name].resources),
        **_REPLICA_CHECKS,
        **pool_scaling_options(name, catalog),
    }


def _scaling(
    replicas: ReplicaConfig, max_ongoing: int, target: float, policy: dict[str, str] | None = None
) -> dict[str, Any]:
    """The options of a deployment that Serve changes without restarting its replicas."""
    options: dict[str, Any] = {"max_ongoing_requests": max_ongoing}
    autoscaling = replicas.autoscaling
    if autoscaling is None:
        options["num_replicas"] = replicas.num_replicas or 1
        return options
    options["autoscaling_config"] = {
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
        options["autoscaling_config"]["policy"] = policy
    return options


def pool_scaling_options(name: str, catalog: Catalog) -> dict[str, Any]:
    """A pool's scaling options, on Serve's request counts (a pool's replicas run many engines)."""
    replicas = catalog.pools[name].replicas
    batch = max((m.batching.max_batch_size for m in catalog.pool_members(name)), default=16)
    target = (replicas.autoscaling and replicas.autoscaling.target_ongoing_requests) or max(1.0, 0.75 * batch)
    return _scaling(replicas, replicas.max_ongoing_requests or 2 * batch, target)


def scaling_options(spec: ModelSpec) -> dict[str, Any]:
    """A model's scaling options; a generating model scales on its scheduler's sequences."""
    # NOTE: the scheduler's sequences, not handle calls, drive it: see llmaas.autoscaling
    policy = policy_config() if spec.task is Task.GENERATE else None
    return _scaling(spec.replicas, spec.max_ongoing_requests, spec.target_sequences, policy)


def _component_options(
    name: str, config: ComponentConfig, user_config: dict[str, Any] | None
) -> dict[str, Any]:
    return {
        "name": name,
        "num_replicas": config.num_replicas,
        "max_ongoing_requests": config.max_ongoing_requests,
        "ray_actor_options": {"num_cpus": config.num_cpus},
        "user_config": user_config,
    }


def _deployment(cls: type, options: dict[str, Any]) -> Any:
    return serve.deployment(cls, **options)


def _bind_model(spec: ModelSpec, cache_dir: str, engine_cls: type[Engine] | None = None) -> Application:
    options = model_deployment_options(spec)
    return _deployment(ModelReplica, options).bind(spec, cache_dir, engine_cls=engine_cls)


def _bind_pool(name: str, catalog: Catalog) -> Application:
    members = {spec.id: spec for spec in catalog.pool_members(name)}
    cls = pool_class(catalog.pools[name].max_models_per_replica)
    return _deployment(cls, pool_deployment_options(name, catalog)).bind(members, str(catalog.cache_path))


def _bind_front(
    front: FrontArgs,
    models: dict[str, Application],
    user_config: dict[str, Any] | None,
    catalog: Catalog | None = None,
) -> Application:
    """The router over the tokenizer, the gateway (where configured) and ``models``.

    Without ``catalog`` the router and tokenizer start from their ``user_config``.
    """
    tokenizer = _deployment(Tokenizer, _component_options("tokenizer", front.tokenizer, user_config)).bind(
        catalog
    )
    gateway = None
    if front.gateway is not None:
        gateway = _deployment(
            GatewayReplica,
            {
                "name": "gateway",
                "num_replicas": 1,  # NOTE: one replica: the limits' counters live in one place
                "max_ongoing_requests": 100_000,
                "ray_actor_options": {"num_cpus": front.gateway.num_cpus},
            },
        ).bind(front.gateway)
    router = _deployment(Router, _component_options("router", front.router, user_config))
    return router.bind(catalog, tokenizer, models, gateway)


def _refuse(problems: list[str]) -> None:
    if problems:
        raise ValueError("the catalog cannot be deployed:\n- " + "\n- ".join(problems))


def front_args(catalog: Catalog) -> FrontArgs:
    return FrontArgs(router=catalog.router, tokenizer=catalog.tokenizer, gateway=catalog.gateway)


def build_from_catalog(catalog: Catalog, *, engine_cls: type[Engine] | None = None) -> Application:
    """One application for ``catalog``. ``engine_cls`` replaces every model's engine (tests)."""
    _refuse(check_catalog(catalog))
    cache_dir = str(catalog.cache_path)
    pools = {name: _bind_pool(name, catalog) for name in catalog.pools}
    models = {
        spec.id: pools[spec.pool] if spec.pool else _bind_model(spec, cache_dir, engine_cls)
        for spec in catalog.models
    }
    return _bind_front(front_args(catalog), models, catalog_user_config(catalog), catalog)


def build_app(args: dict[str, Any]) -> Application:
    """Serve's entry point: ``import_path: llmaas.deployments.builder:build_app``."""
    from llmaas.catalogs import default_catalog

    parsed = AppArgs.model_validate(args or {})
    return build_from_catalog(Catalog.from_file(parsed.catalog) if parsed.catalog else default_catalog())


def build_front(args: dict[str, Any]) -> Application:
    """The router application of ``llmaas deploy``; its catalog arrives as ``user_config``."""
    return _bind_front(FrontArgs.model_validate(args), {}, None)


def build_pool(args: dict[str, Any]) -> Application:
    """One multiplexed pool's application of ``llmaas deploy``."""
    parsed = PoolArgs.model_validate(args)
    catalog = Catalog(models=parsed.models, pools={parsed.name: parsed.pool}, cache_dir=parsed.cache_dir)
    _refuse(check_catalog(catalog))
    return _bind_pool(parsed.name, catalog)


def build_model(args: dict[str, Any]) -> Application:
    """One model's application of ``llmaas deploy``."""
    parsed = ModelArgs.model_validate(args)
    _refuse(check_model(parsed.model))
    return _bind_model(parsed.model, parsed.cache_dir)
