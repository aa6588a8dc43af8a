"""The admin API's logic without Ray: admin keys only, key management, and catalog changes handed
to the catalog-admin deployment (control plane), which applies one at a time."""

from __future__ import annotations

import asyncio
import pickle
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from llmaas.admin import AdminService
from llmaas.catalog_edit import CatalogEdit
from llmaas.config.catalog import Catalog
from llmaas.config.gateway import GatewayConfig
from llmaas.deploy import CatalogChange, diff
from llmaas.deployments.catalog_admin import CatalogAdmin
from llmaas.deployments.handles import HandleCatalogAdmin
from llmaas.errors import CatalogEditError, CatalogModelNotFound, CatalogNotDeclarative, Forbidden
from llmaas.gateway.client import GatewayClient
from llmaas.gateway.keys import KeyRequest
from llmaas.gateway.service import Gateway
from llmaas.openai.errors import OpenAIError, to_openai_error
from llmaas.openai.frontend import Caller
from tests.unit.test_frontend import Handle

CATALOG = Catalog.model_validate(
    {
        "app_name": "ops",
        "models": [
            {"id": "a", "source": {"demo": "tiny-gpt2"}},
            {"id": "b", "source": {"demo": "tiny-gpt2"}, "replicas": {"num_replicas": 2}},
        ],
    }
)


async def _body(data: bytes) -> AsyncIterator[bytes]:
    yield data


# ---- AdminService ----------------------------------------------------------------------------------
def test_without_a_gateway_admin_routes_are_404():
    admin = AdminService(CATALOG, None)
    with pytest.raises(OpenAIError) as caught:
        asyncio.run(admin.list_keys(Caller()))
    assert (caught.value.status, caught.value.code, caught.value.type) == (
        404,
        "no_gateway",
        "not_found_error",
    )


def test_with_auth_off_admin_routes_are_403():
    admin = AdminService(CATALOG, GatewayClient(Handle(object()), auth=False, ledger=True))
    with pytest.raises(Forbidden) as caught:
        asyncio.run(admin.get_catalog(Caller()))
    assert caught.value.code == "auth_disabled" and to_openai_error(caught.value).status == 403


def test_keys_and_usage_need_an_admin_key(tmp_path: Path):
    async def main() -> None:
        gateway = Gateway(GatewayConfig(database=f"sqlite:///{tmp_path / 'gw.db'}"))
        await gateway.start()
        user = await gateway.create_key(KeyRequest(name="u"))
        ops = await gateway.create_key(KeyRequest(name="ops", admin=True))
        admin = AdminService(CATALOG, GatewayClient(Handle(gateway), auth=True, ledger=True))
        as_user, as_admin = Caller(f"Bearer {user.secret}"), Caller(f"Bearer {ops.secret}")
        with pytest.raises(Forbidden) as refused:
            await admin.list_keys(as_user)
        assert refused.value.code == "not_admin"

        made = await admin.create_key(as_admin, _body(b'{"name": "team-a", "rpm": 10}'))
        assert made["name"] == "team-a" and made["secret"] and "key_hash" not in made
        with pytest.raises(OpenAIError) as bad:
            await admin.create_key(as_admin, _body(b'{"name": "x", "rpm": 0}'))
        assert (bad.value.status, bad.value.param) == (400, "rpm")
        listed = await admin.list_keys(as_admin)
        assert listed["object"] == "list" and {k["name"] for k in listed["data"]} == {"u", "ops", "team-a"}
        assert await admin.revoke_key(as_admin, made["id"]) == {"id": made["id"], "revoked": True}
        with pytest.raises(OpenAIError) as again:
            await admin.revoke_key(as_admin, made["id"])
        assert again.value.status == 404 and again.value.code == "key_not_found"
        assert again.value.message == f"No active key has the id {made['id']!r}."
        assert (await admin.usage(as_admin, 0.0)) == {"object": "list", "data": []}
        assert (await admin.get_catalog(as_admin)) == CATALOG.model_dump(mode="json")
        await gateway.stop()

    asyncio.run(main())


def _open_admin(change: Any = None) -> AdminService:
    gateway = GatewayClient(Handle(object()), auth=False, ledger=False)

    async def admitted(*_: Any, **__: Any) -> None:
        return None

    gateway.authorize = admitted  # type: ignore[method-assign]  # an admin caller
    return AdminService(CATALOG, gateway, change=change, app_name="ops")


def test_a_catalog_change_is_handed_over_as_an_edit():
    edits: list[CatalogEdit] = []

    async def change(edit: CatalogEdit) -> CatalogChange:
        edits.append(edit)
        return CatalogChange(resized=[edit.model_id])

    admin = _open_admin(change)
    body = _body(b'{"replicas": {"num_replicas": 3}}')
    assert asyncio.run(admin.change_model(Caller(), "patch", "b", body)) == {
        "added": [],
        "removed": [],
        "updated": [],
        "resized": ["b"],
        "other": False,
    }
    asyncio.run(admin.change_model(Caller(), "delete", "a"))
    assert edits == [
        CatalogEdit(op="patch", model_id="b", body={"replicas": {"num_replicas": 3}}),
        CatalogEdit(op="delete", model_id="a"),
    ]
    with pytest.raises(OpenAIError) as caught:
        asyncio.run(admin.change_model(Caller(), "put", "c", _body(b"[1]")))
    assert (caught.value.status, caught.value.message) == (
        400,
        "the body must be a JSON object, not an array",
    )
    assert len(edits) == 2


def test_without_the_catalog_admin_a_change_is_409_not_declarative():
    with pytest.raises(CatalogNotDeclarative) as caught:
        asyncio.run(_open_admin().change_model(Caller(), "put", "c", _body(b"{}")))
    seen = to_openai_error(caught.value)
    assert (seen.status, seen.code) == (409, "not_declarative") and "'ops'" in seen.message


# ---- CatalogAdmin (the deployment's logic, deploy's functions handed in) ----------------------------
class Deployed:
    """Stands in for Serve's deployed state: ``llmaas.deploy``'s read and apply, counted."""

    def __init__(self, catalog: Catalog | None) -> None:
        self.catalog = catalog
        self.applied: list[Catalog] = []
        self.reads = 0

    def read(self, app_name: str) -> Catalog | None:
        assert app_name == "ops"
        self.reads += 1
        return self.catalog

    def apply(self, catalog: Catalog) -> CatalogChange:
        change = diff(self.catalog, catalog)
        self.catalog = catalog
        self.applied.append(catalog)
        return change


def _catalog_admin(deployed: Deployed) -> CatalogAdmin:
    return CatalogAdmin("ops", deployed_catalog=deployed.read, apply_catalog=deployed.apply)


def test_the_catalog_admin_applies_an_edit_to_the_deployed_catalog():
    deployed = Deployed(CATALOG)
    admin = _catalog_admin(deployed)
    added = asyncio.run(
        admin.change(CatalogEdit(op="put", model_id="c", body={"source": {"demo": "tiny-gpt2"}}))
    )
    assert added.added == ["c"] and [m.id for m in deployed.applied[-1].models] == ["a", "b", "c"]
    resized = asyncio.run(
        admin.change(CatalogEdit(op="patch", model_id="b", body={"replicas": {"num_replicas": 1}}))
    )
    assert resized.resized == ["b"] and not resized.updated


def test_concurrent_edits_are_applied_one_after_the_other_and_both_land():
    deployed = Deployed(CATALOG)
    admin = _catalog_admin(deployed)

    async def main() -> list[CatalogChange]:
        return await asyncio.gather(
            admin.change(CatalogEdit(op="put", model_id="c", body={"source": {"demo": "tiny-gpt2"}})),
            admin.change(CatalogEdit(op="put", model_id="d", body={"source": {"demo": "tiny-gpt2"}})),
        )

    first, second = asyncio.run(main())
    assert first.added == ["c"] and second.added == ["d"]
    assert deployed.catalog is not None and [m.id for m in deployed.catalog.models] == ["a", "b", "c", "d"]


def test_the_catalog_admin_refuses_what_it_cannot_change():
    nothing = Deployed(None)
    with pytest.raises(CatalogNotDeclarative):
        asyncio.run(_catalog_admin(nothing).change(CatalogEdit(op="delete", model_id="a")))
    deployed = Deployed(CATALOG)
    admin = _catalog_admin(deployed)
    with pytest.raises(CatalogModelNotFound):
        asyncio.run(admin.change(CatalogEdit(op="delete", model_id="zz")))
    with pytest.raises(CatalogEditError, match="tensor_parallel_size"):
        asyncio.run(admin.change(CatalogEdit(op="patch", model_id="a", body={"tensor_parallel_size": 3})))
    assert deployed.applied == [], "nothing invalid reaches Serve"


def test_the_catalog_admin_defaults_to_llmaas_deploy(monkeypatch: pytest.MonkeyPatch):
    from llmaas import deploy

    deployed = Deployed(CATALOG)
    monkeypatch.setattr(deploy, "deployed_catalog", deployed.read)
    monkeypatch.setattr(deploy, "apply_catalog", deployed.apply)
    change = asyncio.run(CatalogAdmin("ops").change(CatalogEdit(op="delete", model_id="a")))
    assert change.removed == ["a"] and deployed.reads == 1


# ---- across the handle ------------------------------------------------------------------------------
def test_an_edit_error_raised_in_the_deployment_reaches_the_router_as_itself():
    from ray.exceptions import RayTaskError

    async def failing(edit: CatalogEdit) -> CatalogChange:
        cause = CatalogModelNotFound(f"the catalog holds no model {edit.model_id!r} (it holds a, b)")
        # NOTE: what Serve hands the caller: the replica's error, pickled, inside a RayTaskError
        raise pickle.loads(pickle.dumps(RayTaskError("change", "traceback", cause))).as_instanceof_cause()

    handle: Any = SimpleNamespace(change=SimpleNamespace(remote=failing))
    with pytest.raises(CatalogModelNotFound) as caught:
        asyncio.run(HandleCatalogAdmin(handle).change(CatalogEdit(op="delete", model_id="zz")))
    assert type(caught.value) is CatalogModelNotFound
    assert to_openai_error(caught.value).body()["error"] == {
        "message": "the catalog holds no model 'zz' (it holds a, b)",
        "type": "not_found_error",
        "param": None,
        "code": "model_not_found",
    }
