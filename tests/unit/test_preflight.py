from __future__ import annotations

import json
from pathlib import Path

from llmaas.config.catalog import Catalog
from llmaas.preflight import check_catalog


def _catalog(models: list[dict]) -> Catalog:
    return Catalog.model_validate({"models": models})


def test_gpt2_cannot_be_tensor_parallel():
    problems = check_catalog(
        _catalog([{"id": "g", "source": {"demo": "tiny-gpt2"}, "tensor_parallel_size": 2}])
    )
    assert len(problems) == 1 and "'gpt2' is not supported by DeepSpeed AutoTP" in problems[0]


def test_llama_tp2_is_fine_and_default_catalog_passes():
    from llmaas.catalogs import default_catalog

    assert (
        check_catalog(
            _catalog([{"id": "l", "source": {"demo": "tiny-llama-chat"}, "tensor_parallel_size": 2}])
        )
        == []
    )
    assert check_catalog(default_catalog()) == []


def test_heads_must_divide(tmp_path: Path):
    (tmp_path / "config.json").write_text(
        json.dumps({"model_type": "llama", "num_attention_heads": 6, "num_key_value_heads": 6})
    )
    problems = check_catalog(
        _catalog([{"id": "x", "source": {"path": str(tmp_path)}, "tensor_parallel_size": 4}])
    )
    assert any("num_attention_heads=6" in p for p in problems)


def test_missing_directory_and_task_mismatch(tmp_path: Path):
    problems = check_catalog(_catalog([{"id": "x", "source": {"path": str(tmp_path / "nope")}}]))
    assert "holds no config.json" in problems[0]
    problems = check_catalog(
        _catalog([{"id": "e", "task": "generate", "source": {"demo": "all-minilm-l6-v2"}}])
    )
    assert "set task: embed" in problems[0]


def test_an_engine_class_that_does_not_import_is_refused_before_deploying():
    from llmaas.config.catalog import ModelSpec
    from llmaas.preflight import check_model

    spec = ModelSpec.model_validate(
        {"id": "m", "source": {"demo": "tiny-gpt2"}, "engine": {"cls": "llmaas.engine.fake:NoSuchEngine"}}
    )
    problems = check_model(spec)
    assert len(problems) == 1 and "model 'm'" in problems[0] and "NoSuchEngine" in problems[0]
    assert spec.engine is not None
    fake = spec.model_copy(
        update={"engine": spec.engine.model_copy(update={"cls": "llmaas.engine.fake:FakeEngine"})}
    )
    assert check_model(fake) == []


def test_quantization_without_torchao_names_the_extra(monkeypatch):
    import importlib.util

    from llmaas.config.catalog import ModelSpec
    from llmaas.preflight import check_model

    spec = ModelSpec.model_validate(
        {"id": "q", "source": {"demo": "tiny-llama-chat"}, "quantization": "int8-weight-only"}
    )
    assert check_model(spec) == []  # installed with the test extras
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "torchao" else real(name, *a)
    )
    problems = check_model(spec)
    assert len(problems) == 1 and "pip install 'llmaas[quant]'" in problems[0]
