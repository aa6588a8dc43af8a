"""The app builder: Serve options computed from the catalog (binding needs no running cluster)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from llmaas.config.catalog import Catalog, ModelSpec
from llmaas.deployments import build_app, build_from_catalog, model_deployment_options


def _spec(**fields) -> ModelSpec:
    return ModelSpec.model_validate({"id": "org/m:1", "source": {"demo": "tiny-llama-chat"}, **fields})


def test_tp_replica_gets_one_strict_pack_bundle_per_rank():
    options = model_deployment_options(
        _spec(tensor_parallel_size=4, resources={"num_cpus": 2, "num_gpus": 1, "custom": {"a100": 1}})
    )
    assert options["name"] == "model-org_m_1"
    assert options["placement_group_strategy"] == "STRICT_PACK"
    assert options["placement_group_bundles"] == [{"CPU": 2, "GPU": 1, "a100": 1}] * 4
    assert options["ray_actor_options"] == {"num_cpus": 2, "num_gpus": 1, "resources": {"a100": 1}}


def test_single_rank_replica_has_no_placement_group_and_fixed_replicas():
    options = model_deployment_options(_spec(replicas={"num_replicas": 3}, batching={"max_batch_size": 8}))
    assert "placement_group_bundles" not in options
    assert options["num_replicas"] == 3
    assert options["max_ongoing_requests"] == 16
    assert options["max_queued_requests"] == 256


def test_autoscaling_bounds_pass_through():
    options = model_deployment_options(
        _spec(replicas={"autoscaling": {"min_replicas": 0, "max_replicas": 5, "target_ongoing_requests": 4}})
    )
    assert "num_replicas" not in options
    assert options["autoscaling_config"]["min_replicas"] == 0
    assert options["autoscaling_config"]["max_replicas"] == 5
    assert options["autoscaling_config"]["target_ongoing_requests"] == 4


def test_build_app_from_args(tmp_path: Path):
    assert build_app({}) is not None  # the embedded default
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text("models:\n  - id: m\n    source: {demo: tiny-llama-chat}\n")
    assert build_app({"catalog": str(catalog)}) is not None
    with pytest.raises(ValidationError):
        build_app({"catalogue": str(catalog)})


def test_undeployable_catalog_is_refused_before_binding():
    catalog = Catalog.model_validate(
        {"models": [{"id": "g", "source": {"demo": "tiny-gpt2"}, "tensor_parallel_size": 2}]}
    )
    with pytest.raises(ValueError, match="not supported by DeepSpeed AutoTP"):
        build_from_catalog(catalog)
