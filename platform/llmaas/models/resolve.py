"""From a catalog source to a local model directory, building demo models on first use."""

from __future__ import annotations

from pathlib import Path

from filelock import FileLock

from llmaas.config.catalog import ModelSource
from llmaas.models.demo import RECIPES, Progress, _quiet_progress, build_demo, minilm_path


class ModelSourceError(ValueError):
    """A source that does not point at a usable model directory."""


def demo_dir(name: str, cache_dir: Path) -> Path:
    recipe = RECIPES[name]
    return Path(cache_dir).expanduser() / f"{name}-v{recipe.version}"


def is_prepared(source: ModelSource, cache_dir: Path) -> bool:
    if source.demo is None or source.demo not in RECIPES:
        return True
    return (demo_dir(source.demo, cache_dir) / "config.json").exists()


def resolve_model_path(source: ModelSource, cache_dir: Path, progress: Progress = _quiet_progress) -> Path:
    """A directory that ``from_pretrained`` loads. Safe to call from many processes at once."""
    if source.path is not None:
        path = Path(source.path).expanduser()
        if not (path / "config.json").exists():
            raise ModelSourceError(
                f"source.path {str(path)!r} holds no config.json: point it at a Hugging Face model directory"
            )
        return path
    assert source.demo is not None
    if source.demo == "all-minilm-l6-v2":
        return minilm_path()
    target = demo_dir(source.demo, cache_dir)
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if not (target / "config.json").exists():
            build_demo(source.demo, target, progress)
    return target
