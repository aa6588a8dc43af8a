"""``llmaas deploy``'s config: what changes between catalogs, and how a catalog becomes Serve apps."""

from __future__ import annotations

from typing import Any

from ray.serve.schema import ServeDeploySchema

from llmaas.config.catalog import Catalog
from llmaas.deploy import app_configs, diff
from llmaas.naming import is_model_app, model_app_name
from llmaas.plan import FRONT_IMPORT_PATH, MODEL_IMPORT_PATH


def _catalog(*models: dict[str, Any], **extra: Any) -> Catalog:
    return Catalog.model_validate({"app_name": "llm", "models": list(models), **extra})


A = {"id": "a", "source": {"demo": "tiny-gpt2"}}
B = {"id": "b/chat", "source": {"demo": "tiny-llama-chat"}, "replicas": {"num_replicas": 2}}


def test_diff_names_added_removed_updated_and_resized_models() -> None:
    old = _catalog(A, B)
    new = _catalog(
        {**A, "sampling": {"max_tokens": 7}},
        {**B, "replicas": {"autoscaling": {"min_replicas": 0, "max_replicas": 3}}},
        {"id": "c", "source": {"demo": "tiny-gpt2"}},
    )
    change = diff(old, new)
    assert (change.added, change.removed, change.updated, change.resized) == (["c"], [], ["a"], ["b/chat"])
    assert not change.other
    back = diff(new, old)
    assert back.removed == ["c"] and back.updated == ["a"] and back.resized == ["b/chat"]
    assert diff(old, old).empty and diff(old, old).lines() == ["no change"]
    assert diff(None, old).added == ["a", "b/chat"]
    assert diff(old, _catalog(A, B, router={"num_replicas": 2})).other


def test_app_configs_are_a_front_app_and_one_app_per_model_that_serve_accepts() -> None:
    catalog = _catalog(A, B, gateway={"database": "sqlite:///tmp/x.db"})
    apps = app_configs(catalog, route_prefix="/p")
    ServeDeploySchema.model_validate({"applications": apps})  # Serve's own schema
    front, *models = apps
    assert (
        front["name"] == "llm" and front["route_prefix"] == "/p" and front["import_path"] == FRONT_IMPORT_PATH
    )
    assert front["args"]["gateway"]["database"] == "sqlite:///tmp/x.db"
    overrides = {d["name"]: d["user_config"] for d in front["deployments"]}
    assert set(overrides) == {"router", "tokenizer"}
    assert overrides["router"]["model_apps"] == {"a": "llm-model-a", "b/chat": "llm-model-b_chat"}
    assert Catalog.model_validate(overrides["router"]["catalog"]) == catalog
    assert [m["name"] for m in models] == ["llm-model-a", "llm-model-b_chat"]
    assert all(m["import_path"] == MODEL_IMPORT_PATH and m["route_prefix"] is None for m in models)
    b = models[1]
    # replica counts are overrides (applied live), never args (a change there restarts the app)
    assert "replicas" not in b["args"]["model"]
    assert b["deployments"] == [{"name": "model-b_chat", "max_ongoing_requests": 32, "num_replicas": 2}]
    assert (
        is_model_app("llm", "llm-model-a")
        and not is_model_app("llm", "llm")
        and not is_model_app("x", "llm-model-a")
    )
    assert model_app_name("llm", "b/chat") == "llm-model-b_chat"


def test_a_resize_changes_no_app_args_and_an_update_changes_only_that_model() -> None:
    old = app_configs(_catalog(A, B))
    resized = app_configs(_catalog(A, {**B, "replicas": {"num_replicas": 3}}))
    updated = app_configs(_catalog({**A, "description": "new"}, B))
    assert [a["args"] for a in old] == [a["args"] for a in resized]
    assert [a["import_path"] for a in old] == [a["import_path"] for a in resized]
    changed = [a["name"] for a, b in zip(old, updated, strict=True) if a["args"] != b["args"]]
    assert changed == ["llm-model-a"]


def test_a_multiplexed_pool_is_one_app_for_its_models() -> None:
    catalog = _catalog(
        A,
        {"id": "s1", "source": {"demo": "tiny-gpt2"}, "pool": "small"},
        {"id": "s2", "source": {"demo": "tiny-gpt2"}, "pool": "small"},
        pools={"small": {"max_models_per_replica": 1, "replicas": {"num_replicas": 2}}},
    )
    apps = app_configs(catalog)
    ServeDeploySchema.model_validate({"applications": apps})
    assert [a["name"] for a in apps] == ["llm", "llm-model-a", "llm-pool-small"]
    pool = apps[2]
    assert [m["id"] for m in pool["args"]["models"]] == ["s1", "s2"] and pool["args"]["name"] == "small"
    assert pool["deployments"] == [{"name": "pool-small", "max_ongoing_requests": 32, "num_replicas": 2}]
    router = {d["name"]: d for d in apps[0]["deployments"]}["router"]
    assert router["user_config"]["model_apps"] == {
        "a": "llm-model-a",
        "s1": "llm-pool-small",
        "s2": "llm-pool-small",
    }
    assert is_model_app("llm", "llm-pool-small")
