"""The KubeRay manifest: Serve's own schema, the real builder, the catalog, and cluster.yaml's node types."""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from llmaas.capacity import ClusterSpec, check_capacity
from llmaas.config.catalog import Catalog

REPO = Path(__file__).resolve().parents[2]
MANIFEST = REPO / "deploy" / "kuberay" / "rayservice.yaml"
DOCKERFILE = REPO / "deploy" / "kuberay" / "Dockerfile"
CLUSTER_YAML = REPO / "cluster.yaml"


def _documents() -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(MANIFEST.read_text()) if doc]


def _one(kind: str) -> dict[str, Any]:
    found = [doc for doc in _documents() if doc["kind"] == kind]
    assert len(found) == 1, f"expected one {kind} in {MANIFEST.name}, found {len(found)}"
    return found[0]


def _service() -> dict[str, Any]:
    return _one("RayService")


def _serve_config() -> dict[str, Any]:
    return yaml.safe_load(_service()["spec"]["serveConfigV2"])


def _app() -> dict[str, Any]:
    (app,) = _serve_config()["applications"]
    return app


def _catalog() -> Catalog:
    config_map = _one("ConfigMap")
    return Catalog.from_yaml(config_map["data"][Path(_app()["args"]["catalog"]).name])


def _pods() -> dict[str, dict[str, Any]]:
    """Pod specs by group: 'head' and every worker group's name."""
    cluster = _service()["spec"]["rayClusterConfig"]
    pods = {"head": cluster["headGroupSpec"]["template"]["spec"]}
    pods.update({group["groupName"]: group["template"]["spec"] for group in cluster["workerGroupSpecs"]})
    return pods


def _ray_resources(group: dict[str, Any]) -> dict[str, float]:
    """What Ray advertises for a group's pods: rayStartParams first, else the container's limits."""
    (container,) = group["template"]["spec"]["containers"]
    limits = container["resources"]["limits"]
    params = group.get("rayStartParams") or {}
    return {
        "CPU": float(params.get("num-cpus", limits["cpu"])),
        "GPU": float(params.get("num-gpus", limits.get("nvidia.com/gpu", 0))),
    }


def test_documents_are_a_rayservice_its_catalog_configmap_and_the_weights_volume():
    kinds = {(doc["apiVersion"], doc["kind"]) for doc in _documents()}
    assert kinds == {("ray.io/v1", "RayService"), ("v1", "ConfigMap"), ("v1", "PersistentVolumeClaim")}


def test_serve_config_validates_as_rays_own_schema():
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema.model_validate(_serve_config())
    (app,) = schema.applications
    assert app.route_prefix == "/"
    assert app.import_path == "llmaas.deployments.builder:build_app"


def test_import_path_names_the_real_builder_and_its_args_validate():
    from llmaas.deployments.builder import AppArgs, build_app

    module_name, _, attribute = _app()["import_path"].partition(":")
    assert getattr(importlib.import_module(module_name), attribute) is build_app
    args = AppArgs.model_validate(_app()["args"])
    assert args.catalog is not None and Path(args.catalog).is_absolute()


def test_the_app_is_named_as_the_catalog_says():
    # handles look the app up by the catalog's app_name
    assert _app()["name"] == _catalog().app_name


def test_the_catalog_fits_cluster_yaml_node_types():
    catalog = _catalog()
    assert {m.id for m in catalog.models} >= {"llama-3.1-8b-instruct", "llama-3.1-70b-instruct"}
    assert check_capacity(catalog, ClusterSpec.from_file(CLUSTER_YAML)) == []


def test_every_pod_mounts_the_catalog_and_the_model_directories():
    catalog_file = Path(_app()["args"]["catalog"])
    config_map = _one("ConfigMap")["metadata"]["name"]
    claim = _one("PersistentVolumeClaim")["metadata"]["name"]
    model_paths = [Path(m.source.path) for m in _catalog().models if m.source.path]
    assert model_paths, "the manifest's catalog should show a model loaded from a path"
    for name, pod in _pods().items():
        volumes = {volume["name"]: volume for volume in pod["volumes"]}
        (container,) = pod["containers"]
        mounts = {Path(mount["mountPath"]): mount["name"] for mount in container["volumeMounts"]}
        # the router and tokenizer load every model's tokenizer wherever they run: every pod needs both
        catalog_volume = volumes[mounts[catalog_file.parent]]
        assert catalog_volume["configMap"]["name"] == config_map, name
        for path in model_paths:
            volume = next(volumes[v] for m, v in mounts.items() if path.is_relative_to(m))
            assert volume["persistentVolumeClaim"]["claimName"] == claim, name


def test_worker_groups_mirror_cluster_yaml_gpu_node_types():
    cluster = ClusterSpec.from_file(CLUSTER_YAML)
    expected = {
        node.name: (node.resources["GPU"], node.resources["CPU"], node.min_workers, node.max_workers)
        for node in cluster.workers
    }
    groups = _service()["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    actual = {
        group["groupName"]: (
            _ray_resources(group)["GPU"],
            _ray_resources(group)["CPU"],
            group["minReplicas"],
            group["maxReplicas"],
        )
        for group in groups
    }
    assert actual == expected
    for group in groups:
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]


def test_head_mirrors_cluster_yaml_head_and_autoscaling_is_on():
    cluster = ClusterSpec.from_file(CLUSTER_YAML)
    ray_cluster = _service()["spec"]["rayClusterConfig"]
    assert ray_cluster["enableInTreeAutoscaling"] is True
    head = ray_cluster["headGroupSpec"]
    assert _ray_resources(head) == {
        "CPU": cluster.head.resources["CPU"],
        "GPU": cluster.head.resources["GPU"],
    }


def test_ray_version_matches_the_image_and_the_installed_ray():
    import ray

    assert _service()["spec"]["rayClusterConfig"]["rayVersion"] == ray.__version__
    base = re.search(r"^FROM rayproject/ray:(\S+)", DOCKERFILE.read_text(), re.MULTILINE)
    assert base is not None and base.group(1).startswith(f"{ray.__version__}-")
    images = {c["image"] for pod in _pods().values() for c in pod["containers"]}
    assert len(images) == 1, f"every pod should run the same llmaas image, found {images}"


@pytest.mark.parametrize("group", ["gpu-1x", "gpu-4x", "gpu-8x"])
def test_gpu_groups_request_what_they_limit(group: str):
    # Kubernetes refuses extended resources (GPUs) whose request differs from the limit
    (container,) = _pods()[group]["containers"]
    resources = container["resources"]
    assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"] > 0
