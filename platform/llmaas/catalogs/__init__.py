"""Catalogs that ship with llmaas."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from llmaas.config.catalog import Catalog


def default_catalog_path() -> Path:
    return Path(str(resources.files("llmaas.catalogs").joinpath("default.yaml")))


def embedded_catalog_path(name: str) -> Path | None:
    """The catalog shipped as ``NAME.yaml`` (``default``, ``bench``), or None."""
    path = Path(str(resources.files("llmaas.catalogs").joinpath(f"{name}.yaml")))
    return path if name.isidentifier() and path.exists() else None


def default_catalog() -> Catalog:
    """The embedded default: a small chat model and a real embedding model, both CPU-only."""
    return Catalog.from_file(default_catalog_path())


__all__ = ["default_catalog", "default_catalog_path", "embedded_catalog_path"]
