"""The app builder binds the plan's deployments (binding needs no running cluster)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from llmaas.config.catalog import Catalog
from llmaas.deployments import build_app, build_from_catalog


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


def test_every_builder_path_binds_from_the_plan():
    from llmaas.deployments.builder import build_front, build_model, build_pool
    from llmaas.plan import plan_catalog

    catalog = Catalog.model_validate(
        {
            "models": [
                {
                    "id": "m",
                    "source": {"demo": "tiny-gpt2"},
                    "engine": {"cls": "llmaas.engine.fake:FakeEngine"},
                },
                {"id": "p", "source": {"demo": "tiny-gpt2"}, "pool": "small"},
            ],
            "pools": {"small": {}},
        }
    )
    builders = {"build_front": build_front, "build_model": build_model, "build_pool": build_pool}
    for app in plan_catalog(catalog).applications:
        built = builders[app.import_path.rsplit(":", 1)[1]](app.args)
        assert built is not None
