"""The app builder: from a catalog to a bound Serve application (Router -> Tokenizer -> models).

``build_app`` is what Serve config files name as ``import_path``
(``llmaas.deployments.builder:build_app``, with ``args: {catalog: FILE}``).
"""

from __future__ import annotations

from typing import Any

from pydantic import Field
from ray import serve
from ray.serve import Application

from llmaas.config.base import BaseConfig
from llmaas.config.catalog import Catalog, ComponentConfig, ModelSpec, deployment_name
from llmaas.deployments.gateway import GatewayReplica
from llmaas.deployments.model_replica import ModelReplica
from llmaas.deployments.router import Router
from llmaas.deployments.tokenizer import Tokenizer
from llmaas.engine import Engine
from llmaas.preflight import check_catalog


class AppArgs(BaseConfig):
    """Arguments of ``build_app`` (``args:`` in a Serve config)."""

    catalog: str | None = Field(default=None, description="Catalog YAML; default: the embedded one.")


def model_deployment_options(spec: ModelSpec) -> dict[str, Any]:
    """Serve options for one model, computed from its catalog entry."""
    res = spec.resources
    per_worker: dict[str, float] = {"CPU": res.num_cpus, **res.custom}
    if res.num_gpus:
        per_worker["GPU"] = res.num_gpus
    actor_options: dict[str, Any] = {"num_cpus": res.num_cpus, "num_gpus": res.num_gpus}
    if res.custom:
        actor_options["resources"] = dict(res.custom)
    if res.memory_bytes:
        actor_options["memory"] = res.memory_bytes
    options: dict[str, Any] = {
        "name": deployment_name(spec.id),
        "max_ongoing_requests": spec.max_ongoing_requests,
        "max_queued_requests": spec.batching.max_queued_requests,
        "ray_actor_options": actor_options,
        "health_check_period_s": 10,
        "health_check_timeout_s": 30,
        "graceful_shutdown_timeout_s": 30,
    }
    if spec.tensor_parallel_size > 1:
        # NOTE: the replica takes bundle 0, TP peers bundles 1..N-1, all on one node.
        options["placement_group_bundles"] = [dict(per_worker) for _ in range(spec.tensor_parallel_size)]
        options["placement_group_strategy"] = "STRICT_PACK"
    autoscaling = spec.replicas.autoscaling
    if autoscaling is not None:
        options["autoscaling_config"] = {
            "min_replicas": autoscaling.min_replicas,
            "max_replicas": autoscaling.max_replicas,
            "initial_replicas": autoscaling.initial_replicas,
            "target_ongoing_requests": autoscaling.target_ongoing_requests,
            "upscale_delay_s": autoscaling.upscale_delay_s,
            "downscale_delay_s": autoscaling.downscale_delay_s,
        }
    else:
        options["num_replicas"] = spec.replicas.num_replicas or 1
    return options


def _component_options(name: str, config: ComponentConfig) -> dict[str, Any]:
    return {
        "name": name,
        "num_replicas": config.num_replicas,
        "max_ongoing_requests": config.max_ongoing_requests,
        "ray_actor_options": {"num_cpus": config.num_cpus},
    }


def _deployment(cls: type, options: dict[str, Any]) -> Any:
    return serve.deployment(cls, **options)


def build_from_catalog(catalog: Catalog, *, engine_cls: type[Engine] | None = None) -> Application:
    """Bind the graph for ``catalog``. ``engine_cls`` replaces every model's engine (tests)."""
    problems = check_catalog(catalog)
    if problems:
        raise ValueError("the catalog cannot be deployed:\n- " + "\n- ".join(problems))
    models = {
        spec.id: _deployment(ModelReplica, model_deployment_options(spec)).bind(
            spec, str(catalog.cache_path), engine_cls=engine_cls
        )
        for spec in catalog.models
    }
    tokenizer = _deployment(Tokenizer, _component_options("tokenizer", catalog.tokenizer)).bind(catalog)
    gateway = None
    if catalog.gateway is not None:
        gateway = _deployment(
            GatewayReplica,
            {
                "name": "gateway",
                "num_replicas": 1,  # NOTE: one replica: the limits' counters live in one place
                "max_ongoing_requests": 100_000,
                "ray_actor_options": {"num_cpus": catalog.gateway.num_cpus},
            },
        ).bind(catalog.gateway)
    router = _deployment(Router, _component_options("router", catalog.router))
    return router.bind(catalog, tokenizer, models, gateway)


def build_app(args: dict[str, Any]) -> Application:
    """Serve's entry point: ``import_path: llmaas.deployments.builder:build_app``."""
    from llmaas.catalogs import default_catalog

    parsed = AppArgs.model_validate(args or {})
    catalog = Catalog.from_file(parsed.catalog) if parsed.catalog else default_catalog()
    return build_from_catalog(catalog)
