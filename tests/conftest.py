"""Shared fixtures: where demo models are cached (built once per machine, reused across runs)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MODEL_CACHE = REPO / ".models"


@pytest.fixture(scope="session")
def model_cache() -> Path:
    MODEL_CACHE.mkdir(exist_ok=True)
    return MODEL_CACHE


@pytest.fixture(scope="session")
def chat_model_path(model_cache: Path) -> Path:
    from llmaas.config.catalog import ModelSource
    from llmaas.models import resolve_model_path

    return resolve_model_path(ModelSource(demo="tiny-llama-chat"), model_cache)


@pytest.fixture(scope="session")
def gpt2_model_path(model_cache: Path) -> Path:
    from llmaas.config.catalog import ModelSource
    from llmaas.models import resolve_model_path

    return resolve_model_path(ModelSource(demo="tiny-gpt2"), model_cache)


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    from llmaas.models import minilm_path as locate

    return locate()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A PostgreSQL server for the session (Debian's package; .ci/run installs it)."""
    from tests.postgres import available, postgres_server

    reason = available()
    if reason:
        pytest.skip(reason)
    with postgres_server() as url:
        yield url
