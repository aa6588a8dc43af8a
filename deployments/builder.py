"""The app builder: binds the deployments that ``llmaas.plan`` lays out (Router -> Tokenizer -> models).

Every Serve option comes from the plan (``DeploymentPlan.serve_options``); this module only
chooses the class of each deployment and binds it with its arguments. Two shapes:

- ``build_app`` (``import_path: llmaas.deployments.builder:build_app``, ``args: {catalog: FILE}``)
  and ``build_from_catalog``: one application holding the router, the tokenizer and every model;
- ``build_front``, ``build_model`` and ``build_pool``: what ``llmaas deploy`` (``llmaas.deploy``)
  gives Serve's declarative API, one application for the front and one per model or pool (see
  ``llmaas.plan`` for why).

Which engine serves a model is the catalog's (``engine: {cls: ...}`` on a model, e.g. the fake
engine in tests), so every path here takes it the same way.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field
from ray import serve
from ray.serve import Application

from llmaas.config.base import BaseConfig
from llmaas.config.catalog import Catalog, ModelSpec
from llmaas.deployments.catalog_admin import CatalogAdmin
from llmaas.deployments.fine_tuning import FineTuningReplica
from llmaas.deployments.gateway import GatewayReplica
from llmaas.deployments.model_replica import ModelReplica
from llmaas.deployments.pool import pool_class
from llmaas.deployments.router import Router
from llmaas.deployments.tokenizer import Tokenizer
from llmaas.plan import (
    DeploymentPlan,
    FrontArgs,
    ModelArgs,
    PoolArgs,
    front_args,
    front_deployments,
    model_deployment,
    plan_catalog,
    pool_deployment,
)
from llmaas.preflight import check_catalog, check_model


class AppArgs(BaseConfig):
    """Arguments of ``build_app`` (``args:`` in a Serve config)."""

    catalog: str | None = Field(default=None, description="Catalog YAML; default: the embedded one.")


def _deployment(cls: type, plan: DeploymentPlan) -> Any:
    return serve.deployment(cls, **plan.serve_options())


def _bind_model(spec: ModelSpec, plan: DeploymentPlan, cache_dir: str) -> Application:
    return _deployment(ModelReplica, plan).bind(spec, cache_dir)


def _bind_pool(plan: DeploymentPlan, members: list[ModelSpec], cache_dir: str) -> Application:
    cls = pool_class(plan.max_models_per_replica or 1)
    return _deployment(cls, plan).bind({spec.id: spec for spec in members}, cache_dir)


def _bind_front(
    front: FrontArgs,
    plans: list[DeploymentPlan],
    models: dict[str, Application],
    catalog: Catalog | None = None,
) -> Application:
    """The router over the tokenizer, the gateway and the catalog admin (where planned) and ``models``.

    Without ``catalog`` the router and tokenizer start from their ``user_config``.
    """
    by_kind = {plan.kind: plan for plan in plans}
    tokenizer = _deployment(Tokenizer, by_kind["tokenizer"]).bind(catalog)
    gateway = None
    if "gateway" in by_kind and front.gateway is not None:
        gateway = _deployment(GatewayReplica, by_kind["gateway"]).bind(front.gateway)
    admin = None
    if "catalog-admin" in by_kind:
        admin = _deployment(CatalogAdmin, by_kind["catalog-admin"]).bind(front.app_name)
    fine_tuning = None
    if "fine-tuning" in by_kind and front.fine_tuning is not None and admin is not None:
        fine_tuning = _deployment(FineTuningReplica, by_kind["fine-tuning"]).bind(
            front.fine_tuning, front.gateway, front.app_name, admin
        )
    router = _deployment(Router, by_kind["router"])
    return router.bind(catalog, tokenizer, models, gateway, admin=admin, fine_tuning=fine_tuning)


def _refuse(problems: list[str]) -> None:
    if problems:
        raise ValueError("the catalog cannot be deployed:\n- " + "\n- ".join(problems))


def build_from_catalog(catalog: Catalog) -> Application:
    """One application for ``catalog`` (the ``single`` shape of its plan)."""
    _refuse(check_catalog(catalog))
    plan = plan_catalog(catalog, shape="single")
    cache_dir = str(catalog.cache_path)
    bound: dict[str, Application] = {}
    for deployment in plan.deployments:
        if deployment.kind == "model":
            spec = catalog.get(deployment.models[0])
            assert spec is not None  # NOTE: the plan names only the catalog's models
            model = _bind_model(spec, deployment, cache_dir)
            bound.update({model_id: model for model_id in deployment.models})  # the base, its adapters
        elif deployment.kind == "pool":
            members = [m for m in catalog.models if m.id in deployment.models]
            pool = _bind_pool(deployment, members, cache_dir)
            bound.update({model_id: pool for model_id in deployment.models})
    fronts = [d for d in plan.deployments if d.kind not in ("model", "pool")]
    return _bind_front(
        front_args(catalog), fronts, {spec.id: bound[spec.id] for spec in catalog.models}, catalog
    )


def build_app(args: dict[str, Any]) -> Application:
    """Serve's entry point: ``import_path: llmaas.deployments.builder:build_app``."""
    from llmaas.catalogs import default_catalog

    parsed = AppArgs.model_validate(args or {})
    return build_from_catalog(Catalog.from_file(parsed.catalog) if parsed.catalog else default_catalog())


def build_front(args: dict[str, Any]) -> Application:
    """The front application of ``llmaas deploy``; its catalog arrives as ``user_config``."""
    front = FrontArgs.model_validate(args)
    return _bind_front(front, front_deployments(front, front.app_name, None, admin=True), {})


def build_pool(args: dict[str, Any]) -> Application:
    """One multiplexed pool's application of ``llmaas deploy``."""
    parsed = PoolArgs.model_validate(args)
    catalog = Catalog(models=parsed.models, pools={parsed.name: parsed.pool}, cache_dir=parsed.cache_dir)
    _refuse(check_catalog(catalog))
    plan = pool_deployment(parsed.name, parsed.pool, parsed.models, app="")
    return _bind_pool(plan, parsed.models, parsed.cache_dir)


def build_model(args: dict[str, Any]) -> Application:
    """One model's application of ``llmaas deploy``."""
    parsed = ModelArgs.model_validate(args)
    _refuse(check_model(parsed.model))
    return _bind_model(parsed.model, model_deployment(parsed.model, app=""), parsed.cache_dir)


__all__ = [
    "AppArgs",
    "build_app",
    "build_from_catalog",
    "build_front",
    "build_model",
    "build_pool",
]
