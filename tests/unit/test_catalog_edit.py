"""The admin API's catalog changes: one model added, replaced, patched or removed, always validated."""

from __future__ import annotations

import pytest

from llmaas.catalog_edit import CatalogEdit, patch_model, put_model, remove_model
from llmaas.config.catalog import Catalog, ModelSpec, PoolConfig
from llmaas.errors import CatalogEditError, CatalogModelNotFound
from llmaas.openai.errors import to_openai_error

BASE = Catalog.model_validate(
    {
        "app_name": "ops",
        "models": [
            {"id": "a", "source": {"demo": "tiny-gpt2"}, "replicas": {"num_replicas": 2}},
            {"id": "b", "source": {"demo": "tiny-llama-chat"}, "sampling": {"max_tokens": 9}},
        ],
    }
)


def spec(catalog: Catalog, model_id: str) -> ModelSpec:
    found = catalog.get(model_id)
    assert found is not None
    return found


def _error(exc: pytest.ExceptionInfo[CatalogEditError]) -> tuple[int, str]:
    """The status and message a client of the admin API sees for the error."""
    seen = to_openai_error(exc.value)
    return seen.status, seen.message


def test_put_adds_a_model_or_replaces_one_and_keeps_the_rest() -> None:
    added = put_model(BASE, "c", {"source": {"demo": "tiny-gpt2"}})
    assert [m.id for m in added.models] == ["a", "b", "c"] and added.app_name == "ops"
    replaced = put_model(BASE, "b", {"source": {"demo": "tiny-gpt2"}})
    assert spec(replaced, "b").source.demo == "tiny-gpt2"
    assert spec(replaced, "b").sampling.max_tokens == 256, "a put replaces the whole entry"
    assert spec(replaced, "a") == spec(BASE, "a")


def test_patch_merges_into_the_entry() -> None:
    resized = patch_model(BASE, "a", {"replicas": {"num_replicas": 3}})
    assert spec(resized, "a").replicas.num_replicas == 3 and spec(resized, "a").source.demo == "tiny-gpt2"
    autoscaled = patch_model(
        BASE, "a", {"replicas": {"num_replicas": None, "autoscaling": {"min_replicas": 0, "max_replicas": 2}}}
    )
    assert spec(autoscaled, "a").scales_to_zero and spec(autoscaled, "a").replicas.num_replicas is None
    assert spec(patch_model(BASE, "b", {"sampling": {"temperature": 0.0}}), "b").sampling.max_tokens == 9


def test_remove_drops_the_model() -> None:
    assert [m.id for m in remove_model(BASE, "a").models] == ["b"]


def test_invalid_changes_are_400_or_404_naming_the_problem() -> None:
    with pytest.raises(CatalogEditError) as exc:
        patch_model(BASE, "a", {"replicas": {"autoscaling": {"max_replicas": 3}}})
    status, message = _error(exc)
    assert status == 400 and "num_replicas" in message and "autoscaling" in message
    with pytest.raises(CatalogEditError) as exc:
        put_model(BASE, "c", {"source": {"demo": "tiny-gpt2"}, "tensor_parallel_size": 3})
    assert _error(exc)[0] == 400 and "tensor_parallel_size" in _error(exc)[1]
    with pytest.raises(CatalogEditError) as exc:
        put_model(BASE, "c", {"source": {"demo": "tiny-gpt2"}, "tensor_parallel_size": 2})
    assert _error(exc)[0] == 400 and "AutoTP" in _error(exc)[1]
    with pytest.raises(CatalogEditError) as exc:
        put_model(BASE, "c", {"id": "d", "source": {"demo": "tiny-gpt2"}})
    assert _error(exc)[0] == 400
    with pytest.raises(CatalogModelNotFound) as exc:
        patch_model(BASE, "zz", {})
    assert _error(exc) == (404, "the catalog holds no model 'zz' (it holds a, b)")
    seen = to_openai_error(exc.value)
    assert (seen.type, seen.code) == ("not_found_error", "model_not_found")
    with pytest.raises(CatalogEditError) as exc:
        remove_model(remove_model(BASE, "a"), "b")
    assert _error(exc)[0] == 400 and "last model" in _error(exc)[1]


def test_pools_are_validated() -> None:
    with pytest.raises(ValueError, match="pool 'nope' is not in the catalog's pools"):
        Catalog.model_validate({"models": [{"id": "a", "source": {"demo": "tiny-gpt2"}, "pool": "nope"}]})
    with pytest.raises(ValueError, match="a pooled model runs unsharded"):
        Catalog.model_validate(
            {
                "pools": {"p": {}},
                "models": [
                    {"id": "a", "source": {"demo": "tiny-llama-chat"}, "pool": "p", "tensor_parallel_size": 2}
                ],
            }
        )
    joined = patch_model(BASE.model_copy(update={"pools": {"p": PoolConfig()}}), "b", {"pool": "p"})
    assert [m.id for m in joined.pool_members("p")] == ["b"] and joined.deployment_of(
        spec(joined, "b")
    ) == "pool-p"


def test_an_edit_is_a_value_that_applies_itself() -> None:
    put = CatalogEdit(op="put", model_id="c", body={"source": {"demo": "tiny-gpt2"}})
    assert put.apply(BASE) == put_model(BASE, "c", {"source": {"demo": "tiny-gpt2"}})
    patch = CatalogEdit(op="patch", model_id="a", body={"replicas": {"num_replicas": 3}})
    assert patch.apply(BASE) == patch_model(BASE, "a", {"replicas": {"num_replicas": 3}})
    assert CatalogEdit(op="delete", model_id="a").apply(BASE) == remove_model(BASE, "a")
    with pytest.raises(CatalogModelNotFound):
        CatalogEdit(op="delete", model_id="zz").apply(BASE)
    with pytest.raises(ValueError, match="op"):
        CatalogEdit.model_validate({"op": "rename", "model_id": "a"})
