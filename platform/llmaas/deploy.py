"""Declarative deploys: the running platform converges to a catalog, the way ``serve deploy`` does.

A catalog becomes the applications of its deployment plan (``llmaas.plan``: a front application
named by ``app_name`` and one per model or pool), all through Serve's declarative API; the plan's
docstring says why that split lets Serve roll only the models whose entries changed, resize
without restarts, and tell the router about added and removed models live.

Serve deletes any declaratively deployed application that a new config leaves out: that is how
a removed model goes, and why a deploy carries over other applications' configs as they are.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from llmaas.config.base import BaseConfig
from llmaas.config.catalog import Catalog, ModelSpec
from llmaas.naming import is_model_app
from llmaas.plan import plan_catalog
from llmaas.preflight import check_catalog


class CatalogChange(BaseConfig):
    """What a deploy changes, by model id."""

    added: list[str] = Field(default_factory=list)
    removed: list[str] = Field(default_factory=list)
    updated: list[str] = Field(default_factory=list, description="New weights or parameters: replicas roll.")
    resized: list[str] = Field(default_factory=list, description="New replica counts: no restart.")
    other: bool = Field(default=False, description="Router, tokenizer, gateway or pool settings changed.")

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.updated or self.resized or self.other)

    def lines(self) -> list[str]:
        if self.empty:
            return ["no change"]
        verbs = ("added", "removed", "updated", "resized")
        out = [f"{verb} {model}" for verb in verbs for model in getattr(self, verb)]
        if self.other:
            out.append("changed router, tokenizer, gateway or pool settings")
        return out


def _entry(spec: ModelSpec) -> dict[str, Any]:
    return spec.model_dump(mode="json", exclude={"replicas"})


def diff(old: Catalog | None, new: Catalog) -> CatalogChange:
    """The change from ``old`` (None: nothing deployed) to ``new``."""
    before = {m.id: m for m in old.models} if old else {}
    after = {m.id: m for m in new.models}
    change = CatalogChange(
        added=[m for m in after if m not in before],
        removed=[m for m in before if m not in after],
    )
    for model_id in after.keys() & before.keys():
        if _entry(after[model_id]) != _entry(before[model_id]):
            change.updated.append(model_id)
        elif after[model_id].replicas != before[model_id].replicas:
            change.resized.append(model_id)
    change.updated.sort()
    change.resized.sort()
    if old is not None:
        change.other = old.model_dump(exclude={"models"}) != new.model_dump(exclude={"models"})
    return change


def model_apps(catalog: Catalog) -> dict[str, str]:
    """Model id -> the Serve application that serves it (its own, or its pool's)."""
    return plan_catalog(catalog).model_apps()


def app_configs(catalog: Catalog, route_prefix: str = "/") -> list[dict[str, Any]]:
    """The catalog as Serve config entries (``applications:`` of ``serve deploy``): front, then models."""
    return plan_catalog(catalog).serve_config(route_prefix)


def _client() -> Any:
    from ray.serve.context import _get_global_client

    client = _get_global_client()
    if client is None:
        raise ValueError("Serve is not running on this Ray cluster: start the platform with `llmaas serve`")
    return client


def _details() -> dict[str, Any]:
    details: dict[str, Any] = _client().get_serve_details()
    return details


def deployed_catalog(app_name: str) -> Catalog | None:
    """The catalog that ``llmaas deploy`` last gave ``app_name`` (None: not deployed that way)."""
    app = _details().get("applications", {}).get(app_name) or {}
    overrides = (app.get("deployed_app_config") or {}).get("deployments") or []
    router: dict[str, Any] = next((d for d in overrides if d.get("name") == "router"), {})
    data = (router.get("user_config") or {}).get("catalog")
    return Catalog.model_validate(data) if isinstance(data, dict) else None


def apply_catalog(catalog: Catalog, route_prefix: str | None = None) -> CatalogChange:
    """Converge the running application named by ``catalog.app_name`` to it; return the change.

    ``route_prefix`` defaults to the application's current one, "/" for a new application.

    Needs a connected Ray with Serve started. Returns once the controller took the config; the
    replicas roll after that (``llmaas.launch.wait_running`` follows them).
    """
    from ray.serve.schema import ServeDeploySchema

    problems = check_catalog(catalog)
    if problems:  # NOTE: refused here, with the platform's messages, before Serve sees anything
        raise ValueError("the catalog cannot be deployed:\n- " + "\n- ".join(problems))
    details = _details()
    previous = deployed_catalog(catalog.app_name)
    others = [
        app["deployed_app_config"]
        for name, app in details.get("applications", {}).items()
        if name != catalog.app_name
        and not is_model_app(catalog.app_name, name)
        and app.get("deployed_app_config")
    ]
    if route_prefix is None:
        current = details.get("applications", {}).get(catalog.app_name) or {}
        route_prefix = current.get("route_prefix") or "/"
    applications = [*others, *app_configs(catalog, route_prefix)]
    config = ServeDeploySchema.model_validate({"applications": applications})
    _client().deploy_apps(config)
    return diff(previous, catalog)
