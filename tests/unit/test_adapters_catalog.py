"""LoRA models in the catalog (issue 17): an adapter runs on its base's deployment; the catalog
refuses what cannot run one; a fine-tuned causal LM becomes an adapter entry, or a merged copy
where its base cannot run adapters."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from llmaas.config.catalog import Catalog, ModelSpec
from llmaas.deployments.handles import adapter_ref
from llmaas.finetune.serving import catalog_entry
from llmaas.plan import plan_catalog
from llmaas.preflight import check_catalog
from llmaas.tokenization import load_pool

BASE = {"id": "base", "source": {"demo": "tiny-llama-chat"}, "sampling": {"max_tokens": 64}}


def _adapter_dir(tmp_path: Path) -> Path:
    path = tmp_path / "adapter"
    path.mkdir()
    (path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    return path


def _catalog(*models: dict[str, Any]) -> Catalog:
    return Catalog.model_validate({"app_name": "llm", "models": list(models)})


def test_an_adapter_is_served_by_its_bases_deployment(tmp_path: Path):
    path = _adapter_dir(tmp_path)
    lora = {"id": "ft:base:k::job-1", "adapter_of": "base", "source": {"path": str(path)}, "parent": "base"}
    catalog = _catalog(BASE, lora)
    spec = catalog.get("ft:base:k::job-1")
    assert spec is not None and catalog.base_of(spec).id == "base"
    assert catalog.deployment_of(spec) == catalog.deployment_of(catalog.models[0])
    plan = plan_catalog(catalog)
    assert plan.app_names() == ["llm", "llm-model-base"], "no deployment of its own"
    assert plan.model_apps()["ft:base:k::job-1"] == "llm-model-base"
    assert plan.deployment("model-base").models == ("base", "ft:base:k::job-1")
    single = plan_catalog(catalog, shape="single")
    assert [d.name for d in single.deployments if d.kind == "model"] == ["model-base"]
    ref = adapter_ref(spec)
    assert ref is not None and ref.name == spec.id and ref.path == str(path)
    assert adapter_ref(catalog.models[0]) is None
    assert check_catalog(catalog) == []


def test_an_adapter_speaks_its_bases_tokens(tmp_path: Path, chat_model_path: Path):
    lora = {"id": "lora", "adapter_of": "base", "source": {"path": str(_adapter_dir(tmp_path))}}
    catalog = _catalog(BASE, lora).model_copy(update={"cache_dir": str(chat_model_path.parent)})
    pool = load_pool(catalog)
    assert pool.get("lora") is pool.get("base")


@pytest.mark.parametrize(
    ("base", "message"),
    [
        ({}, "'missing' is not a model of the catalog"),
        ({"tensor_parallel_size": 2}, "cannot run adapters: it is tensor-parallel"),
        ({"quantization": "int8-weight-only", "dtype": "float32"}, "its weights are quantized"),
        ({"task": "embed", "source": {"demo": "all-minilm-l6-v2"}}, "must be a generate model"),
    ],
)
def test_what_cannot_run_an_adapter_is_refused(tmp_path: Path, base: dict[str, Any], message: str):
    path = str(_adapter_dir(tmp_path))
    target = "missing" if not base else "base"
    with pytest.raises(ValidationError, match=message):
        _catalog({**BASE, **base}, {"id": "lora", "adapter_of": target, "source": {"path": path}})
    with pytest.raises(ValidationError, match=r"source\.path is its PEFT adapter directory"):
        ModelSpec.model_validate({"id": "lora", "adapter_of": "base", "source": {"demo": "tiny-gpt2"}})


def test_a_directory_without_an_adapter_is_a_preflight_problem(tmp_path: Path):
    catalog = _catalog(BASE, {"id": "lora", "adapter_of": "base", "source": {"path": str(tmp_path)}})
    assert check_catalog(catalog) == [
        f"model 'lora': source.path {str(tmp_path)!r} holds no adapter_config.json; "
        "point it at a PEFT LoRA adapter directory"
    ]


def test_a_fine_tuned_causal_lm_is_an_adapter_entry_or_a_merged_copy(tmp_path: Path):
    base = ModelSpec.model_validate(BASE)
    adapter = catalog_entry("ft:base:k::j", base, _adapter_dir(tmp_path), "causal_lm", "k")
    assert adapter["adapter_of"] == "base" and adapter["parent"] == "base" and adapter["owner"] == "k"
    assert adapter["sampling"]["max_tokens"] == 64
    assert "resources" not in adapter and "batching" not in adapter
    merged_dir = tmp_path / "merged"
    merged_dir.mkdir()
    (merged_dir / "config.json").write_text("{}")
    merged = catalog_entry("ft:base:k::j", base, merged_dir, "causal_lm", "k")
    assert "adapter_of" not in merged and merged["batching"] == base.batching.model_dump(mode="json")
    _catalog(BASE, adapter)  # both are valid catalog entries beside their base
    _catalog(BASE, merged)
