"""One model's change to a catalog, as the admin API takes it: add or replace, patch, remove.

Each returns a whole new, validated catalog (the platform then converges to it, as
``llmaas deploy`` does); a change that leaves an invalid catalog raises ``CatalogEditError``
naming the field, ``CatalogModelNotFound`` for a model the catalog does not hold. ``CatalogEdit``
is one such change as a value, which crosses a Serve handle to the catalog-admin deployment.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from llmaas.config.base import describe_errors
from llmaas.config.catalog import Catalog, ModelSpec
from llmaas.errors import CatalogEditError, CatalogModelNotFound
from llmaas.preflight import check_catalog


def _validated(data: dict[str, Any]) -> Catalog:
    try:
        catalog = Catalog.model_validate(data)
    except ValidationError as exc:
        raise CatalogEditError(
            "the change leaves an invalid catalog: " + "; ".join(describe_errors(exc, Catalog))
        ) from exc
    problems = check_catalog(catalog)
    if problems:
        raise CatalogEditError("the change leaves a catalog that cannot be deployed: " + "; ".join(problems))
    return catalog


def _missing(catalog: Catalog, model_id: str) -> CatalogModelNotFound:
    served = ", ".join(m.id for m in catalog.models)
    return CatalogModelNotFound(f"the catalog holds no model {model_id!r} (it holds {served})")


def _merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """``patch`` over ``base``, nested mappings merged key by key (JSON merge patch, RFC 7386)."""
    out = dict(base)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def put_model(catalog: Catalog, model_id: str, body: dict[str, Any]) -> Catalog:
    """The catalog with ``model_id`` added, or replaced by ``body`` (a whole catalog entry)."""
    if body.get("id", model_id) != model_id:
        raise CatalogEditError(
            f"the body's id {body['id']!r} differs from the path's {model_id!r}", param="id"
        )
    entry = {**body, "id": model_id}
    models = [m.model_dump(mode="json") for m in catalog.models]
    index = next((i for i, m in enumerate(models) if m["id"] == model_id), None)
    if index is None:
        models.append(entry)
    else:
        models[index] = entry
    return _validated({**catalog.model_dump(mode="json"), "models": models})


def patch_model(catalog: Catalog, model_id: str, patch: dict[str, Any]) -> Catalog:
    """The catalog with ``patch`` merged into ``model_id``'s entry (e.g. ``{"replicas": {...}}``)."""
    spec: ModelSpec | None = catalog.get(model_id)
    if spec is None:
        raise _missing(catalog, model_id)
    if patch.get("id", model_id) != model_id:
        raise CatalogEditError("a model's id cannot change: remove it and add the new one", param="id")
    return put_model(catalog, model_id, _merge(spec.model_dump(mode="json", exclude_unset=True), patch))


def remove_model(catalog: Catalog, model_id: str) -> Catalog:
    if catalog.get(model_id) is None:
        raise _missing(catalog, model_id)
    models = [m.model_dump(mode="json") for m in catalog.models if m.id != model_id]
    if not models:
        raise CatalogEditError(f"{model_id!r} is the catalog's last model; a catalog serves at least one")
    return _validated({**catalog.model_dump(mode="json"), "models": models})


class CatalogEdit(BaseModel):
    """One model's change, as the admin API takes it: ``put`` (add or replace the entry ``body``),
    ``patch`` (merge ``body`` into the entry) or ``delete``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    op: Literal["put", "patch", "delete"] = Field(description="What happens to the model's entry.")
    model_id: str = Field(description="The model the change is about.")
    body: dict[str, Any] = Field(
        default_factory=dict, description="The entry (put) or the merge patch (patch); unused by delete."
    )

    def apply(self, catalog: Catalog) -> Catalog:
        """``catalog`` with this change made: a new, validated catalog (raises ``CatalogEditError``)."""
        if self.op == "put":
            return put_model(catalog, self.model_id, self.body)
        if self.op == "patch":
            return patch_model(catalog, self.model_id, self.body)
        return remove_model(catalog, self.model_id)
