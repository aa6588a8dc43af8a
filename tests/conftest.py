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


@pytest.fixture(scope="session")
def smollm2_model_path(model_cache: Path) -> Path:
    """SmolLM2-135M-Instruct (the default chat model), prepared once into .models/ (20-50 s at first)."""
    from tests.models_fixtures import smollm2_dir

    return smollm2_dir(model_cache)


@pytest.fixture(scope="session")
def tiny_gguf_file(model_cache: Path) -> Path:
    """A tiny seeded Llama GGUF file (a ``source: {gguf: ...}`` fixture), written once per cache."""
    from tests.models_fixtures import write_tiny_gguf

    path = model_cache / "tiny-llama-q8.gguf"
    if not path.exists():
        partial = path.with_suffix(".partial")
        write_tiny_gguf(partial)
        partial.rename(path)
    return path
