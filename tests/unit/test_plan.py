"""The deployment plan: every Serve option of a catalog, computed in one place (no Ray cluster)."""

from __future__ import annotations

from typing import Any

from ray.serve.schema import ServeDeploySchema

from llmaas.config.catalog import Catalog, ModelSpec
from llmaas.plan import (
    FRONT_IMPORT_PATH,
    MODEL_IMPORT_PATH,
    POOL_IMPORT_PATH,
    PREFIX_ROUTER,
    ModelArgs,
    model_deployment,
    plan_catalog,
    worker_actor_options,
    worker_bundle,
)


def _spec(**fields: Any) -> ModelSpec:
    return ModelSpec.model_validate({"id": "org/m:1", "source": {"demo": "tiny-llama-chat"}, **fields})


def _catalog(*models: dict[str, Any], **extra: Any) -> Catalog:
    return Catalog.model_validate({"app_name": "llm", "models": list(models), **extra})


A = {"id": "a", "source": {"demo": "tiny-gpt2"}}
B = {"id": "b/chat", "source": {"demo": "tiny-llama-chat"}, "replicas": {"num_replicas": 2}}
POOLED = [
    {"id": "s1", "source": {"demo": "tiny-gpt2"}, "pool": "small"},
    {"id": "s2", "source": {"demo": "tiny-gpt2"}, "pool": "small"},
]
POOLS = {"small": {"max_models_per_replica": 1, "replicas": {"num_replicas": 2}}}


def test_tp_replica_gets_one_strict_pack_bundle_per_rank():
    spec = _spec(tensor_parallel_size=4, resources={"num_cpus": 2, "num_gpus": 1, "custom": {"a100": 1}})
    options = model_deployment(spec, "llm-model-org_m_1").serve_options()
    assert options["name"] == "model-org_m_1"
    assert options["placement_group_strategy"] == "STRICT_PACK"
    assert options["placement_group_bundles"] == [{"CPU": 2, "GPU": 1, "a100": 1}] * 4
    assert options["ray_actor_options"] == {"num_cpus": 2, "num_gpus": 1, "resources": {"a100": 1}}
    # TP peers take what rank 0 takes
    assert worker_actor_options(spec.resources) == options["ray_actor_options"]


def test_memory_reaches_the_actor_and_every_bundle():
    spec = _spec(tensor_parallel_size=2, resources={"num_cpus": 1, "memory_bytes": 1024})
    plan = model_deployment(spec, "x")
    assert plan.bundles == ({"CPU": 1, "memory": 1024}, {"CPU": 1, "memory": 1024})
    assert plan.serve_options()["ray_actor_options"]["memory"] == 1024
    assert worker_bundle(spec.resources) == {"CPU": 1, "memory": 1024}
    assert plan.total == {"CPU": 2, "memory": 2048}


def test_single_rank_replica_has_no_placement_group_and_fixed_replicas():
    options = model_deployment(_spec(replicas={"num_replicas": 3}, batching={"max_batch_size": 8}), "x")
    serve_options = options.serve_options()
    assert "placement_group_bundles" not in serve_options
    assert serve_options["num_replicas"] == 3
    assert serve_options["max_ongoing_requests"] == 16
    assert serve_options["max_queued_requests"] == 256
    assert serve_options["health_check_period_s"] == 10
    assert (options.replicas.min, options.replicas.initial, options.replicas.max) == (3, 3, 3)


def test_autoscaling_bounds_pass_through_with_the_sequence_policy():
    plan = model_deployment(
        _spec(replicas={"autoscaling": {"min_replicas": 0, "max_replicas": 5, "target_ongoing_requests": 4}}),
        "x",
    )
    options = plan.serve_options()
    assert "num_replicas" not in options
    config = options["autoscaling_config"]
    assert (config["min_replicas"], config["max_replicas"], config["target_ongoing_requests"]) == (0, 5, 4)
    assert config["policy"]["policy_function"] == "llmaas.autoscaling:sequence_autoscaling_policy"
    assert (plan.replicas.min, plan.replicas.initial, plan.replicas.max) == (0, 0, 5)
    # an embedding model has no scheduler: Serve's own policy
    embed = model_deployment(
        ModelSpec.model_validate(
            {
                "id": "e",
                "task": "embed",
                "source": {"demo": "all-minilm-l6-v2"},
                "replicas": {"autoscaling": {}},
            }
        ),
        "x",
    )
    assert embed.autoscaling_config is not None and "policy" not in embed.autoscaling_config


def test_split_plan_is_a_front_app_and_one_app_per_model_or_pool():
    catalog = _catalog(A, B, *POOLED, pools=POOLS, gateway={"database": "sqlite:///tmp/x.db"})
    plan = plan_catalog(catalog)
    assert plan.app_names() == ["llm", "llm-model-a", "llm-model-b_chat", "llm-pool-small"]
    front = plan.front
    assert front.import_path == FRONT_IMPORT_PATH
    assert [d.name for d in front.deployments] == ["router", "tokenizer", "gateway", "catalog-admin"]
    assert [app.import_path for app in plan.applications[1:]] == [MODEL_IMPORT_PATH] * 2 + [POOL_IMPORT_PATH]
    assert plan.model_apps() == {
        "a": "llm-model-a",
        "b/chat": "llm-model-b_chat",
        "s1": "llm-pool-small",
        "s2": "llm-pool-small",
    }
    assert plan.targets() == {
        "router": 1,
        "tokenizer": 1,
        "gateway": 1,
        "catalog-admin": 1,
        "model-a": 1,
        "model-b_chat": 2,
        "pool-small": 2,
    }
    assert plan.labels() == {"model-a": "a", "model-b_chat": "b/chat", "pool-small": "s1, s2"}
    pool = plan.deployment("pool-small")
    assert pool.max_models_per_replica == 1 and pool.models == ("s1", "s2")
    # router 0.25 + tokenizer 0.25 + gateway 0.1 + a 1 + b/chat 2 x 1 + pool 2 x 1 (the admin takes none)
    assert plan.cpus_needed() == 5.6
    ServeDeploySchema.model_validate({"applications": plan.serve_config("/")})


def test_single_plan_holds_every_deployment_in_one_app_without_a_catalog_admin():
    catalog = _catalog(A, B, *POOLED, pools=POOLS)
    plan = plan_catalog(catalog, shape="single")
    assert plan.app_names() == ["llm"]
    assert [d.name for d in plan.deployments] == [
        "router",
        "tokenizer",
        "model-a",
        "model-b_chat",
        "pool-small",
    ]
    assert set(plan.model_apps().values()) == {"llm"}
    router = plan.deployment("router")
    assert router.user_config is not None and router.user_config["model_apps"] == {}


def test_both_shapes_give_a_deployment_the_same_options():
    catalog = _catalog(A, B, *POOLED, pools=POOLS, gateway={"database": "sqlite:///tmp/x.db"})
    split = {d.name: d.serve_options() for d in plan_catalog(catalog).deployments}
    single = {d.name: d.serve_options() for d in plan_catalog(catalog, shape="single").deployments}
    for name, options in single.items():
        if name in ("router", "tokenizer"):  # the catalog and where each model runs differ
            options.pop("user_config"), split[name].pop("user_config")
        assert split[name] == options, name


def test_fine_tuning_is_a_front_deployment_that_takes_the_catalog_live():
    catalog = _catalog(A, fine_tuning={"storage_path": "/tmp/ft"})
    plan = plan_catalog(catalog)
    names = [d.name for d in plan.front.deployments]
    assert names == ["router", "tokenizer", "catalog-admin", "fine-tuning"]
    tuning = plan.deployment("fine-tuning")
    assert tuning.actor_options == {"num_cpus": 0} and tuning.replicas.max == 1
    # NOTE: it reads the deployed catalog like the router, so a deploy hands it the new one live
    assert tuning.override() == {"name": "fine-tuning", "user_config": plan.deployment("router").user_config}
    assert "fine-tuning" not in [d.name for d in plan_catalog(catalog, shape="single").deployments]
    assert "fine-tuning" not in [d.name for d in plan_catalog(_catalog(A)).front.deployments]


def test_generating_models_route_by_prefix_and_pools_and_encoders_do_not():
    catalog = _catalog(
        A,
        B,
        *POOLED,
        {"id": "e", "task": "embed", "source": {"demo": "all-minilm-l6-v2"}, "replicas": {"num_replicas": 2}},
        {**B, "id": "off", "prefix_cache": {"enabled": False, "routing": True}},
        {**B, "id": "unrouted", "prefix_cache": {"routing": False}},  # Serve's own router
        pools=POOLS,
    )
    plan = plan_catalog(catalog)
    router = plan.deployment("model-b_chat").serve_options()["request_router_config"]
    assert router == {
        "request_router_class": PREFIX_ROUTER,
        "request_router_kwargs": {"block_size": 16, "imbalanced_threshold": 8},
    }
    for name in ("pool-small", "model-e", "model-off", "model-unrouted"):
        assert "request_router_config" not in plan.deployment(name).serve_options(), name
    # NOTE: a one-replica model gets it too: `llmaas deploy` builds a model from args without its
    # replica counts, and an override of the router would restart the model when it scales past one
    assert plan.deployment("model-a").request_router == plan.deployment("model-b_chat").request_router
    # so the model's own application (args without replicas) binds what the plan says, and the
    # live override leaves it alone
    app = next(app for app in plan.applications if app.name == "llm-model-b_chat")
    built = model_deployment(ModelArgs.model_validate(app.args).model, "")
    assert built.serve_options()["request_router_config"] == router
    assert all("request_router_config" not in d for a in plan.serve_config() for d in a["deployments"])
    ServeDeploySchema.model_validate({"applications": plan.serve_config("/")})
