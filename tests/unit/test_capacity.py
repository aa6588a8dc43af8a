"""Capacity: catalogs checked against the Ray launcher's cluster.yaml (no Ray cluster needed)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from llmaas.capacity import (
    ClusterSpec,
    capacity_summary,
    check_capacity,
    replica_demand,
    with_capacity_defaults,
)
from llmaas.config.catalog import AutoscalingConfig, Catalog, ModelSpec

REPO = Path(__file__).resolve().parents[2]
CLUSTER_YAML = REPO / "cluster.yaml"


def _cluster(types: dict[str, dict[str, Any]] | None = None, max_workers: int = 10) -> ClusterSpec:
    """A launcher-format dict: a CPU head (CPU 8 unless given) plus ``types`` as worker node types."""
    nodes = {"head": {"resources": {"CPU": 8, "GPU": 0}, "node_config": {"InstanceType": "m5.2xlarge"}}}
    nodes.update(types or {})
    return ClusterSpec.from_dict(
        {
            "cluster_name": "t",
            "max_workers": max_workers,
            "provider": {"type": "aws", "region": "us-west-2"},
            "head_node_type": "head",
            "available_node_types": nodes,
        }
    )


def _gpu_type(gpus: int, cpus: int, max_workers: int, **custom: float) -> dict[str, Any]:
    return {"resources": {"CPU": cpus, "GPU": gpus, **custom}, "max_workers": max_workers, "node_config": {}}


def _model(model_id: str, *, tp: int = 1, gpus: float = 1, cpus: float = 4, **fields: Any) -> dict[str, Any]:
    return {
        "id": model_id,
        "source": {"path": f"/models/{model_id}"},
        "tensor_parallel_size": tp,
        "resources": {"num_cpus": cpus, "num_gpus": gpus, **fields.pop("resources", {})},
        **fields,
    }


def _catalog(*models: dict[str, Any], **fields: Any) -> Catalog:
    return Catalog.model_validate({"models": list(models), **fields})


def _autoscaling_left_to_cluster(min_replicas: int) -> AutoscalingConfig:
    """``max_replicas: None`` (from the cluster's capacity), built without validation.

    NOTE: the schema change that makes max_replicas ``int | None`` lands separately; model_construct
    builds the value either way, so these tests run before and after it.
    """
    return AutoscalingConfig.model_construct(min_replicas=min_replicas, max_replicas=None)


# --- the committed cluster.yaml -------------------------------------------------------------


def test_committed_cluster_yaml_passes_rays_own_validation():
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load(CLUSTER_YAML.read_text())
    validate_config(copy.deepcopy(raw))
    # what `ray up` does: fill the provider's defaults, then validate again
    validate_config(prepare_config(copy.deepcopy(raw)))


def test_committed_cluster_yaml_reads_as_node_types_with_bounds():
    cluster = ClusterSpec.from_file(CLUSTER_YAML)
    assert cluster.head_node_type == "head"
    assert cluster.head.resources == {"CPU": 4, "GPU": 0}
    assert {n.name: (n.resources["GPU"], n.resources["CPU"], n.max_workers) for n in cluster.workers} == {
        "gpu-1x": (1, 8, 8),
        "gpu-4x": (4, 48, 4),
        "gpu-8x": (8, 96, 2),
    }
    # the global max_workers (12) caps the 14 the types allow; the largest types count first
    assert cluster.max_workers == 12
    assert cluster.max_nodes() == {"head": 1, "gpu-1x": 6, "gpu-4x": 4, "gpu-8x": 2}
    assert cluster.max_totals() == {"CPU": 4 + 6 * 8 + 4 * 48 + 2 * 96, "GPU": 6 + 16 + 16}


def test_the_head_takes_no_gpu_model_but_the_components_and_the_default_catalog_fit():
    from llmaas.catalogs import default_catalog

    cluster = ClusterSpec.from_file(CLUSTER_YAML)
    assert check_capacity(default_catalog(), cluster) == []
    # a GPU model never lands on the head; one 1-GPU replica per gpu-1x node at most
    gpu_only_on_1x = _catalog(_model("m", replicas={"num_replicas": 38}))
    assert check_capacity(gpu_only_on_1x, cluster) == []
    assert check_capacity(_catalog(_model("m", replicas={"num_replicas": 39})), cluster) != []


# --- one replica that fits no node type -------------------------------------------------------


def test_tp4_model_on_1_and_2_gpu_nodes_is_refused_naming_model_types_and_numbers():
    cluster = _cluster({"gpu-1x": _gpu_type(1, 8, 4), "gpu-2x": _gpu_type(2, 16, 4)})
    problems = check_capacity(_catalog(_model("llama-70b", tp=4)), cluster)
    assert len(problems) == 1
    message = problems[0]
    assert message.startswith("model 'llama-70b': one replica needs 4 x {GPU: 1, CPU: 4} on one node")
    assert "tensor_parallel_size=4" in message
    assert "the largest node type offers GPU 2" in message
    assert "gpu-1x: GPU 1, CPU 8" in message and "gpu-2x: GPU 2, CPU 16" in message
    assert "head: GPU 0, CPU 8" in message
    assert "add a node type with at least GPU 4, CPU 16" in message


def test_tp4_model_fits_a_4_gpu_node_type():
    cluster = _cluster({"gpu-2x": _gpu_type(2, 16, 4), "gpu-4x": _gpu_type(4, 48, 1)})
    assert check_capacity(_catalog(_model("llama-70b", tp=4)), cluster) == []


def test_tp_bundles_must_fit_one_node_in_cpus_too():
    # GPUs are enough on gpu-4x, but 4 ranks x 16 CPUs do not fit its 48
    cluster = _cluster({"gpu-4x": _gpu_type(4, 48, 2)})
    problems = check_capacity(_catalog(_model("big", tp=4, cpus=16)), cluster)
    assert len(problems) == 1 and "the largest node type offers CPU 48" in problems[0]


def test_custom_resources_are_part_of_the_demand():
    model = _model("a100-only", resources={"custom": {"accelerator_a100": 1}})
    without = _cluster({"gpu-1x": _gpu_type(1, 8, 4)})
    problems = check_capacity(_catalog(model), without)
    assert len(problems) == 1 and "the largest node type offers accelerator_a100 0" in problems[0]
    with_it = _cluster({"a100": _gpu_type(8, 96, 1, accelerator_a100=2)})
    assert check_capacity(_catalog(model), with_it) == []
    # two units on the one node: a third replica has nowhere to go
    problems = check_capacity(_catalog({**model, "replicas": {"num_replicas": 3}}), with_it)
    assert len(problems) == 1 and "model 'a100-only' 2 of 3" in problems[0]


def test_replica_demand_is_what_the_builder_asks_serve_for():
    from llmaas.plan import model_deployment

    tp4 = ModelSpec.model_validate(_model("m", tp=4, cpus=2, resources={"custom": {"a100": 1}}))
    assert replica_demand(tp4) == model_deployment(tp4, "app").serve_options()["placement_group_bundles"]
    cpu = ModelSpec.model_validate(_model("c", gpus=0, cpus=1.5))
    actor = model_deployment(cpu, "app").serve_options()["ray_actor_options"]
    assert replica_demand(cpu) == [{"CPU": actor["num_cpus"]}] and actor["num_gpus"] == 0


def test_memory_bytes_is_in_every_tp_bundle_and_in_the_capacity_count():
    from llmaas.plan import model_deployment

    gib = 2**30
    spec = ModelSpec.model_validate(_model("m", tp=2, cpus=2, resources={"memory_bytes": 20 * gib}))
    options = model_deployment(spec, "app").serve_options()
    assert options["placement_group_bundles"] == [{"CPU": 2, "GPU": 1, "memory": 20 * gib}] * 2
    assert options["ray_actor_options"]["memory"] == 20 * gib
    # one node of 2 GPUs and 32 GiB holds no TP=2 replica of 2 x 20 GiB; 48 GiB does
    small = _cluster({"gpu-2x": _gpu_type(2, 16, 4, memory=32 * gib)})
    problems = check_capacity(
        _catalog(_model("m", tp=2, cpus=2, resources={"memory_bytes": 20 * gib})), small
    )
    assert len(problems) == 1 and "the largest node type offers memory 32GiB" in problems[0]
    big = _cluster({"gpu-2x": _gpu_type(2, 16, 1, memory=48 * gib)})
    catalog = _catalog(_model("m", tp=2, cpus=2, resources={"memory_bytes": 20 * gib}))
    assert check_capacity(catalog, big) == []
    # two replicas need two nodes: memory, not GPUs or CPUs, is what runs out on one
    two = _catalog(
        _model("m", tp=2, cpus=2, resources={"memory_bytes": 20 * gib}, replicas={"num_replicas": 2})
    )
    problems = check_capacity(two, _cluster({"gpu-4x": _gpu_type(4, 48, 1, memory=48 * gib)}))
    assert len(problems) == 1 and "model 'm' 1 of 2" in problems[0]
    # node types that do not declare memory cannot be checked: say what to write
    problems = check_capacity(catalog, _cluster({"gpu-2x": _gpu_type(2, 16, 4)}))
    assert len(problems) == 1 and "no node type in cluster.yaml declares its memory" in problems[0]


# --- all replicas together -------------------------------------------------------------------


def test_sum_of_max_replicas_over_the_cluster_is_refused_with_numbers():
    cluster = _cluster({"gpu-1x": _gpu_type(1, 8, 2)}, max_workers=10)
    catalog = _catalog(
        _model("a", replicas={"autoscaling": {"min_replicas": 1, "max_replicas": 2}}),
        _model("b", replicas={"num_replicas": 1}),
    )
    problems = check_capacity(catalog, cluster)
    assert len(problems) == 1
    message = problems[0]
    assert message.startswith("the catalog's maximum replicas")
    assert "it asks for GPU 3, CPU 12.5 in all" in message  # 3 GPU replicas + router + tokenizer
    assert "gpu-1x x 2 (GPU 1, CPU 8 each)" in message and "GPU 2, CPU 24 in all" in message
    assert "model 'a' 1 of 2" in message and "model 'b' 1 of 1" in message
    assert "Not placed: model 'a' 1" in message
    assert "lower replicas.autoscaling.max_replicas (or num_replicas) of model 'a'" in message
    # the same catalog with one replica less fits
    fits = _catalog(
        _model("a", replicas={"autoscaling": {"min_replicas": 1, "max_replicas": 1}}), _model("b")
    )
    assert check_capacity(fits, cluster) == []


def test_a_small_replica_does_not_take_the_node_a_big_one_needs():
    # a 1-GPU replica opening the only 8-GPU node would leave the TP=8 replica nowhere to go
    cluster = _cluster({"gpu-1x": _gpu_type(1, 8, 2), "gpu-8x": _gpu_type(8, 96, 1)})
    catalog = _catalog(
        _model("small", replicas={"autoscaling": {"min_replicas": 1, "max_replicas": 2}}),
        _model("big", tp=8, replicas={"autoscaling": {"min_replicas": 0, "max_replicas": 1}}),
    )
    assert check_capacity(catalog, cluster) == []
    # the same when the big replica sorts after the small one (fewer GPUs, but more CPUs)
    big = {"resources": {"CPU": 64, "GPU": 8}, "node_config": {}, "max_workers": 1}
    cluster = _cluster({"small": _gpu_type(2, 8, 1), "big": big})
    catalog = _catalog(_model("gpu-heavy", gpus=2, cpus=4), _model("cpu-heavy", gpus=1, cpus=62))
    assert check_capacity(catalog, cluster) == []


def test_global_max_workers_caps_the_node_types():
    types = {"gpu-1x": _gpu_type(1, 8, 4), "gpu-2x": _gpu_type(2, 16, 4)}
    catalog = _catalog(_model("m", replicas={"num_replicas": 4}))
    assert check_capacity(catalog, _cluster(types, max_workers=2)) == []  # two gpu-2x
    problems = check_capacity(catalog, _cluster(types, max_workers=1))
    assert len(problems) == 1 and "model 'm' 2 of 4" in problems[0] and "max_workers=1" in problems[0]


def test_min_replicas_that_cannot_fit_mean_the_app_never_becomes_healthy():
    cluster = _cluster({"gpu-1x": _gpu_type(1, 8, 1)})
    catalog = _catalog(_model("a", replicas={"autoscaling": {"min_replicas": 2, "max_replicas": 3}}))
    problems = check_capacity(catalog, cluster)
    assert len(problems) == 1
    assert "minimum replicas" in problems[0] and "could never become healthy" in problems[0]
    assert "lower min_replicas or num_replicas of model 'a'" in problems[0]


def test_router_tokenizer_and_gateway_cpus_are_counted():
    head_only = _cluster({"head": {"resources": {"CPU": 2, "GPU": 0}, "node_config": {}}}, max_workers=0)
    model = _model("cpu-model", gpus=0, cpus=1)
    # 1 + router 0.25 x 2 + tokenizer 0.25 x 2 = 2: exactly the head
    assert (
        check_capacity(_catalog(model, router={"num_replicas": 2}, tokenizer={"num_replicas": 2}), head_only)
        == []
    )
    problems = check_capacity(
        _catalog(model, router={"num_replicas": 3}, tokenizer={"num_replicas": 2}), head_only
    )
    # the model first (the biggest), then the router's replicas, then the tokenizer's
    assert len(problems) == 1 and "router 3 of 3" in problems[0] and "tokenizer 1 of 2" in problems[0]
    assert "Not placed: tokenizer 1" in problems[0]
    with_gateway = _catalog(model, router={"num_replicas": 2}, tokenizer={"num_replicas": 2}, gateway={})
    problems = check_capacity(with_gateway, head_only)
    assert len(problems) == 1 and "gateway 0 of 1" in problems[0]


def test_a_router_bigger_than_every_node_is_refused():
    problems = check_capacity(_catalog(_model("m", gpus=0, cpus=1), router={"num_cpus": 16}), _cluster())
    assert len(problems) == 1 and problems[0].startswith("router: one replica needs {CPU: 16}")
    assert "lower router.num_cpus" in problems[0]


def test_the_embedded_default_catalog_on_a_small_cpu_only_cluster():
    from llmaas.catalogs import default_catalog

    def cpu_cluster(head_cpus: int, workers: int) -> ClusterSpec:
        return ClusterSpec.from_dict(
            {
                "cluster_name": "laptop",
                "max_workers": workers,
                "provider": {"type": "local", "head_ip": "127.0.0.1"},
                "head_node_type": "head",
                "available_node_types": {
                    "head": {"resources": {"CPU": head_cpus, "GPU": 0}, "node_config": {}},
                    "cpu": {"resources": {"CPU": 1, "GPU": 0}, "node_config": {}, "max_workers": workers},
                },
            }
        )

    # 1 (chat) + 0.5 (embedding) + 0.25 (router) + 0.25 (tokenizer)
    assert check_capacity(default_catalog(), cpu_cluster(2, 0)) == []
    assert check_capacity(default_catalog(), cpu_cluster(1, 1)) == []
    problems = check_capacity(default_catalog(), cpu_cluster(1, 0))
    assert len(problems) == 1 and "could never become healthy" in problems[0]
    assert "model 'smollm2-135m-instruct' 1 of 1" in problems[0]
    assert "model 'all-minilm-l6-v2' 0 of 1" in problems[0]


# --- max_replicas left to the cluster --------------------------------------------------------


def _left_to_cluster(model: dict[str, Any], min_replicas: int) -> ModelSpec:
    spec = ModelSpec.model_validate({**model, "replicas": {}})
    replicas = spec.replicas.model_copy(update={"autoscaling": _autoscaling_left_to_cluster(min_replicas)})
    return spec.model_copy(update={"replicas": replicas})


def test_max_replicas_left_to_the_cluster_is_what_fits_after_the_others_minimums():
    cluster = _cluster({"gpu-1x": _gpu_type(1, 8, 5)})
    fixed = ModelSpec.model_validate(_model("fixed", replicas={"num_replicas": 2}))
    elastic = _left_to_cluster(_model("elastic"), min_replicas=1)
    catalog = _catalog(_model("placeholder")).model_copy(update={"models": [fixed, elastic]})

    # before the defaults: the model counts its minimum only
    assert check_capacity(catalog, cluster) == []
    filled = with_capacity_defaults(catalog, cluster)
    elastic_bounds = filled.models[1].replicas.autoscaling
    assert elastic_bounds is not None and elastic_bounds.max_replicas == 3  # 5 GPUs - 2 fixed
    assert filled.models[0] == fixed  # explicit bounds are left alone
    original = catalog.models[1].replicas.autoscaling
    assert original is not None and original.max_replicas is None  # a copy, not an edit
    assert check_capacity(filled, cluster) == []


def test_max_replicas_left_to_the_cluster_is_at_least_min_and_one():
    cluster = _cluster({"gpu-1x": _gpu_type(1, 8, 1)})
    crowd = ModelSpec.model_validate(_model("crowd", replicas={"num_replicas": 1}))
    catalog = _catalog(_model("placeholder")).model_copy(
        update={"models": [crowd, _left_to_cluster(_model("late"), min_replicas=0)]}
    )
    late = with_capacity_defaults(catalog, cluster).models[1].replicas.autoscaling
    assert late is not None and late.max_replicas == 1


# --- the reading of cluster.yaml -------------------------------------------------------------


def test_a_node_type_without_resources_is_a_clear_error():
    with pytest.raises(ValidationError) as info:
        _cluster({"gpu-1x": {"node_config": {"InstanceType": "g5.2xlarge"}, "max_workers": 2}})
    text = str(info.value)
    assert "node type 'gpu-1x' has no resources" in text
    assert "autodetect them from g5.2xlarge" in text and "resources: {CPU: 8, GPU: 1}" in text


def test_a_node_type_must_name_both_cpu_and_gpu():
    with pytest.raises(ValidationError, match="node type 'gpu-1x': resources names no GPU"):
        _cluster({"gpu-1x": {"resources": {"CPU": 8}, "node_config": {}, "max_workers": 2}})


def test_missing_global_max_workers_and_bad_bounds_are_errors():
    data = yaml.safe_load(CLUSTER_YAML.read_text())
    no_cap = {k: v for k, v in data.items() if k != "max_workers"}
    with pytest.raises(ValidationError, match="sets no top-level max_workers"):
        ClusterSpec.from_dict(no_cap)
    inverted = copy.deepcopy(data)
    inverted["available_node_types"]["gpu-1x"]["min_workers"] = 9
    with pytest.raises(ValidationError, match="min_workers \\(9\\) is above max_workers \\(8\\)"):
        ClusterSpec.from_dict(inverted)
    wrong_head = {**data, "head_node_type": "nope"}
    with pytest.raises(ValidationError, match="head_node_type 'nope' is not one of"):
        ClusterSpec.from_dict(wrong_head)


def test_per_type_max_workers_default_like_the_launcher():
    cluster = _cluster({"gpu": {"resources": {"CPU": 8, "GPU": 1}, "node_config": {}}}, max_workers=3)
    assert {n.name: n.max_workers for n in cluster.node_types} == {"head": 0, "gpu": 3}


def test_capacity_summary_lists_types_and_totals():
    summary = capacity_summary(ClusterSpec.from_file(CLUSTER_YAML))
    assert summary["cluster_name"] == "llmaas" and summary["max_workers"] == 12
    assert [t["name"] for t in summary["node_types"]] == ["head", "gpu-1x", "gpu-4x", "gpu-8x"]
    assert summary["node_types"][0]["head"] is True and summary["node_types"][3]["max_workers"] == 2
    assert summary["max_totals"]["GPU"] == 38


# --- with pools present: every rule -----------------------------------------------------------

_POOL = {
    "small": {"max_models_per_replica": 2, "resources": {"num_cpus": 2}, "replicas": {"num_replicas": 1}}
}


def _pooled(model_id: str) -> dict[str, Any]:
    return {"id": model_id, "source": {"path": f"/models/{model_id}"}, "pool": "small"}


def test_a_pooled_model_before_an_autoscaling_one_gets_capacity_defaults():
    """The issue's catalog: a pooled model listed before an autoscaling model with no max_replicas."""
    cluster = _cluster({"gpu-1x": _gpu_type(1, 8, 3)}, max_workers=3)
    catalog = _catalog(
        _pooled("p1"), _model("auto", replicas={"autoscaling": {"min_replicas": 1}}), pools=_POOL
    )
    assert check_capacity(catalog, cluster) == []
    fitted = with_capacity_defaults(catalog, cluster)
    auto = fitted.get("auto")
    assert auto is not None and auto.replicas.autoscaling is not None
    assert auto.replicas.autoscaling.max_replicas == 3  # one per gpu-1x node
    assert fitted.get("p1") == catalog.get("p1") and fitted.pools == catalog.pools


def test_a_pool_left_to_the_cluster_gets_its_bound_too():
    cluster = _cluster({}, max_workers=0)  # the head alone: CPU 8
    pools = {"small": {"resources": {"num_cpus": 2}, "replicas": {"autoscaling": {"min_replicas": 1}}}}
    catalog = _catalog(_pooled("p1"), pools=pools, router={"num_cpus": 1}, tokenizer={"num_cpus": 1})
    fitted = with_capacity_defaults(catalog, cluster)
    autoscaling = fitted.pools["small"].replicas.autoscaling
    assert autoscaling is not None and autoscaling.max_replicas == 3  # (8 - 1 - 1) // 2


def test_with_pools_a_replica_that_fits_no_node_is_refused():
    cluster = _cluster({"gpu-1x": _gpu_type(1, 8, 2)})
    catalog = _catalog(_pooled("p1"), _model("big", tp=2), pools=_POOL)
    problems = check_capacity(catalog, cluster)
    assert len(problems) == 1 and problems[0].startswith("model 'big': one replica needs 2 x")
    huge = {"small": {**_POOL["small"], "resources": {"num_cpus": 64}}}
    problems = check_capacity(_catalog(_pooled("p1"), _model("m"), pools=huge), cluster)
    assert len(problems) == 1 and problems[0].startswith("pool 'small' (models 'p1'): one replica needs")
    assert "lower pools.small.resources" in problems[0]


def test_with_pools_minimums_that_cannot_fit_are_refused():
    cluster = _cluster({"gpu-1x": _gpu_type(1, 8, 2)}, max_workers=2)
    catalog = _catalog(_pooled("p1"), _model("m", replicas={"num_replicas": 3}), pools=_POOL)
    problems = check_capacity(catalog, cluster)
    assert len(problems) == 1 and problems[0].startswith("the catalog's minimum replicas")
    assert "Not placed: model 'm' 1 replica" in problems[0]
    # the pool's replicas count: 3 of 3 CPUs each do not fit the head's 8
    pools = {"small": {**_POOL["small"], "resources": {"num_cpus": 3}, "replicas": {"num_replicas": 3}}}
    problems = check_capacity(_catalog(_pooled("p1"), pools=pools), _cluster({}, max_workers=0))
    assert len(problems) == 1 and "pool 'small' (models 'p1') 2 of 3" in problems[0]


def test_with_pools_maximums_that_cannot_fit_are_refused():
    cluster = _cluster({"gpu-1x": _gpu_type(1, 8, 2)}, max_workers=2)
    auto = {"autoscaling": {"min_replicas": 1, "max_replicas": 3}}
    catalog = _catalog(_pooled("p1"), _model("m", replicas=auto), pools=_POOL)
    problems = check_capacity(catalog, cluster)
    assert len(problems) == 1 and problems[0].startswith("the catalog's maximum replicas")
    assert "model 'm' 2 of 3" in problems[0]


def test_the_issue_catalog_passes_llmaas_check_against_the_committed_cluster(tmp_path: Path, capsys):
    from llmaas.cli import main

    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(
        yaml.safe_dump(
            {
                "models": [
                    {"id": "p1", "source": {"demo": "tiny-gpt2"}, "pool": "small"},
                    {
                        "id": "auto",
                        "source": {"demo": "tiny-llama-chat"},
                        "replicas": {"autoscaling": {"min_replicas": 0}},
                        "resources": {"num_cpus": 4, "num_gpus": 1},
                    },
                ],
                "pools": {"small": {"max_models_per_replica": 2}},
            }
        )
    )
    assert main(["check", "--catalog", str(catalog), "--cluster", str(CLUSTER_YAML)]) == 0
    out = capsys.readouterr().out
    assert "ok  auto" in out and "replicas=0..38" in out  # one per GPU of the cluster at its largest


# --- fine-tuning jobs ------------------------------------------------------------------------


def _tuning(
    num_workers: int = 1, cpus: float = 4, gpus: float = 1, jobs: int = 1, **more: Any
) -> dict[str, Any]:
    resources = {"num_workers": num_workers, "cpus_per_worker": cpus, "gpus_per_worker": gpus, **more}
    return {"max_concurrent_jobs": jobs, "resources": resources}


def test_training_jobs_are_counted_beside_serving_at_its_max():
    from llmaas.capacity import check_training

    cluster = _cluster({"gpu-1x": _gpu_type(1, 8, 3)})
    serving = _model("a", replicas={"autoscaling": {"min_replicas": 1, "max_replicas": 2}})
    fits = check_training(_catalog(serving, fine_tuning=_tuning()), cluster)
    assert fits is not None and fits.problems == [] and fits.beside_max == 1 and fits.warning() is None
    assert (
        "1 job x 1 x {GPU: 1, CPU: 4}" in fits.line()
        and "1 of 1 fit beside serving at its max" in fits.line()
    )
    # two jobs of one 1-GPU worker each: the third GPU node holds one, the other queues
    busy = check_training(_catalog(serving, fine_tuning=_tuning(jobs=2)), cluster)
    assert busy is not None and busy.problems == [] and busy.beside_max == 1
    warning = busy.warning()
    assert warning is not None and "1 of the 2 concurrent training jobs" in warning
    assert "queue" in warning and "never takes a serving replica's resources" in warning
    assert check_training(_catalog(serving), cluster) is None  # no fine_tuning section: nothing counted


def test_a_job_spreads_its_workers_over_nodes_but_a_worker_must_fit_one():
    from llmaas.capacity import check_training

    cluster = _cluster({"gpu-1x": _gpu_type(1, 8, 2)})
    spread = check_training(
        _catalog(_model("m", gpus=0, cpus=1), fine_tuning=_tuning(num_workers=2)), cluster
    )
    assert spread is not None and spread.problems == [] and spread.beside_max == 1  # PACK: two nodes
    too_big = check_training(_catalog(_model("m", gpus=0, cpus=1), fine_tuning=_tuning(gpus=2)), cluster)
    assert too_big is not None and too_big.beside_max == 0 and too_big.warning() is None
    [problem] = too_big.problems
    assert problem.startswith("fine-tuning: one training worker needs {GPU: 2, CPU: 4}")
    assert "fine_tuning.resources" in problem and "gpu-1x" in problem
    many = check_training(_catalog(_model("m", gpus=0, cpus=1), fine_tuning=_tuning(num_workers=3)), cluster)
    assert many is not None and len(many.problems) == 1 and "3 x {GPU: 1, CPU: 4}" in many.problems[0]
    assert "fine_tuning.resources.num_workers" in many.problems[0]


def test_a_training_worker_asks_for_custom_resources_that_only_a_node_type_has():
    from llmaas.capacity import check_training

    cluster = _cluster({"gpu-1x": _gpu_type(1, 8, 2), "big": _gpu_type(0, 8, 1, fast_disk=1)})
    model = _model("m", gpus=0, cpus=1)
    fits = check_training(_catalog(model, fine_tuning=_tuning(gpus=0, custom={"fast_disk": 1})), cluster)
    assert fits is not None and fits.problems == [] and fits.beside_max == 1
    none = check_training(_catalog(model, fine_tuning=_tuning(gpus=0, custom={"fast_disk": 2})), cluster)
    assert none is not None and none.problems and "fast_disk: 2" in none.problems[0]


def test_llmaas_check_prints_the_jobs_and_warns_or_fails(tmp_path: Path, capsys):
    from llmaas.cli import main

    cluster = tmp_path / "cluster.yaml"
    nodes = {
        "head": {"resources": {"CPU": 8, "GPU": 0}, "node_config": {}},
        "gpu-1x": _gpu_type(1, 8, 2),
    }
    cluster.write_text(
        yaml.safe_dump(
            {
                "cluster_name": "t",
                "max_workers": 2,
                "provider": {"type": "aws", "region": "us-west-2"},
                "head_node_type": "head",
                "available_node_types": nodes,
            }
        )
    )

    def check(tuning: dict[str, Any]) -> int:
        catalog = tmp_path / "catalog.yaml"
        model = _model("m", source={"demo": "tiny-llama-chat"}, replicas={"num_replicas": 1})
        catalog.write_text(yaml.safe_dump({"models": [model], "fine_tuning": tuning}))
        return main(["check", "--catalog", str(catalog), "--cluster", str(cluster)])

    assert check(_tuning()) == 0
    seen = capsys.readouterr()
    assert "ok  fine-tuning" in seen.out and "1 of 1 fit beside serving at its max" in seen.out
    assert "warning" not in seen.err
    assert check(_tuning(jobs=2)) == 0  # serving at its max leaves one GPU node: one job runs, one queues
    seen = capsys.readouterr()
    assert "1 of 2 fit" in seen.out and "warning: fine-tuning:" in seen.err and "queue" in seen.err
    assert check(_tuning(gpus=4)) == 2
    seen = capsys.readouterr()
    assert "Traceback" not in seen.err and "one training worker needs {GPU: 4, CPU: 4}" in seen.err
    assert "fine_tuning.resources" in seen.err
