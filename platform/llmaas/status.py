"""``llmaas status``: the application's deployments, their replicas and each model's load, at a glance.

Replica counts come from Serve (``serve.status()``); load (running and waiting sequences, KV
cache use, steps) from the model's engine ``health()`` through a handle. NOTE: a handle call
reaches one replica, so with several replicas the load columns show the replica that answered.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, Field

from llmaas.engine.types import EngineHealth
from llmaas.naming import is_model_app, is_model_deployment
from llmaas.plan import Plan, plan_catalog

HEALTH_TIMEOUT_S = 5.0


class DeploymentRow(BaseModel):
    """One deployment of the application, as ``llmaas status`` prints it."""

    name: str
    kind: str = Field(description="model, router or tokenizer")
    status: str
    replicas: dict[str, int] = Field(default_factory=dict, description="replica state -> count")
    message: str = ""
    health: EngineHealth | None = None
    health_error: str = ""
    app: str = Field(default="", description="the Serve application it runs in (models may have their own)")
    models: list[str] = Field(default_factory=list, description="the model ids it serves (from the plan)")

    @property
    def running_replicas(self) -> int:
        return self.replicas.get("RUNNING", 0)


class AppStatus(BaseModel):
    app: str
    status: str
    message: str = ""
    deployments: list[DeploymentRow] = Field(default_factory=list)


def _name(value: Any) -> str:
    """Serve's enums (``DeploymentStatus.HEALTHY``) as their bare names."""
    return str(getattr(value, "value", value)).split(".")[-1]


def _kind(deployment: str) -> str:
    return "model" if is_model_deployment(deployment) else deployment


def rows_from_serve(
    app: str, overview: Any, model_apps: Mapping[str, Any] | None = None, plan: Plan | None = None
) -> AppStatus:
    """Our view of ``serve.status().applications[app]`` (an ApplicationStatusOverview), with the
    applications that ``llmaas deploy`` runs its models in (``model_apps``, name -> overview),
    labelled with the models each deployment serves where the deployed ``plan`` is known."""
    overviews = {app: overview, **(model_apps or {})}
    deployments = [
        (name, dep, where) for where, o in overviews.items() for name, dep in o.deployments.items()
    ]
    served = {d.name: list(d.models) for d in plan.deployments} if plan is not None else {}
    rows = [
        DeploymentRow(
            name=name,
            kind=_kind(name),
            status=_name(dep.status),
            replicas={_name(state): int(count) for state, count in dep.replica_states.items()},
            message=dep.message or "",
            app=where,
            models=served.get(name, []),
        )
        for name, dep, where in sorted(deployments, key=lambda d: (_kind(d[0]) != "model", d[0]))
    ]
    states = [_name(o.status) for o in overviews.values()]
    worst = next((s for s in states if s != "RUNNING"), "RUNNING")
    messages = "; ".join(o.message for o in overviews.values() if o.message)
    return AppStatus(app=app, status=worst, message=messages, deployments=rows)


async def _health(app: str, row: DeploymentRow) -> None:
    from ray import serve

    try:
        handle = serve.get_deployment_handle(row.name, app_name=row.app or app)
        result = await asyncio.wait_for(handle.health.remote(), timeout=HEALTH_TIMEOUT_S)
        row.health = EngineHealth.model_validate(result)
    except Exception as exc:  # a loading or dead replica: say so, do not fail the report
        row.health_error = f"{type(exc).__name__}: {str(exc)[:120]}"


def collect(app: str) -> AppStatus | None:
    """The application's status from a connected Ray driver; None when Serve does not run ``app``."""
    from ray import serve

    from llmaas.deploy import deployed_catalog

    applications = serve.status().applications
    overview = applications.get(app)
    if overview is None:
        return None
    model_apps = {name: o for name, o in applications.items() if is_model_app(app, name)}
    catalog = deployed_catalog(app)
    status = rows_from_serve(app, overview, model_apps, plan_catalog(catalog) if catalog else None)
    models = [row for row in status.deployments if row.kind == "model" and row.running_replicas]

    async def gather() -> None:
        await asyncio.gather(*(_health(app, row) for row in models))

    asyncio.run(gather())
    return status


def _load(row: DeploymentRow) -> tuple[str, str, str, str]:
    health = row.health
    if health is None:
        return ("-", "-", "-", row.health_error and "unreachable")
    kv = "-" if health.kv_usage is None else f"{100 * health.kv_usage:.0f}%"
    return (str(health.running), str(health.waiting), kv, "ok" if health.healthy else health.detail)


def _prefix_cache(health: EngineHealth | None) -> str:
    """A model's prefix cache: on with its hit rate and fill, or off with why ("" when it has none)."""
    if health is None or not health.prefix_cache:
        return ""
    if health.prefix_cache != "on":
        return health.prefix_cache
    rate = health.prefix_cache_hit_rate
    hits = "no lookups yet" if rate is None else f"{100 * rate:.0f}% of prompt tokens cached"
    return f"on, {hits}, holds {health.prefix_cache_tokens}/{health.prefix_cache_capacity_tokens} tokens"


def _replicas(replicas: Mapping[str, int]) -> str:
    running = replicas.get("RUNNING", 0)
    others = ", ".join(f"{n} {s.lower()}" for s, n in sorted(replicas.items()) if s != "RUNNING" and n)
    return f"{running} running" + (f" ({others})" if others else "")


def render(status: AppStatus) -> str:
    """A table readable at a glance; problems spelled out under it."""
    header = ("DEPLOYMENT", "STATUS", "REPLICAS", "RUNNING", "WAITING", "KV", "ENGINE")
    rows = [header]
    for row in status.deployments:
        load = _load(row) if row.kind == "model" else ("", "", "", "")
        rows.append((row.name, row.status, _replicas(row.replicas), *load))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = [
        f"application {status.app}: {status.status}" + (f" ({status.message})" if status.message else "")
    ]
    lines += [
        "  " + "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows
    ]
    caches = [
        f"  {row.name}: {_prefix_cache(row.health)}"
        for row in status.deployments
        if _prefix_cache(row.health)
    ]
    if caches:
        lines += ["", "prefix cache:", *caches]
    problems = [
        f"  {row.name}: {row.message or row.health_error}"
        for row in status.deployments
        if (row.status != "HEALTHY" and row.message) or row.health_error
    ]
    if problems:
        lines += ["", "problems:", *problems]
    return "\n".join(lines)
