"""From a catalog source to a local model directory, building or preparing demo models on first use."""

from __future__ import annotations

from pathlib import Path

from filelock import FileLock

from llmaas.config.catalog import ModelSource
from llmaas.models.demo import GGUF_DEMOS, RECIPES, Progress, _quiet_progress, build_demo, minilm_path
from llmaas.models.errors import ModelSourceError
from llmaas.models.gguf_cache import is_gguf_prepared, prepare_gguf

__all__ = ["ModelSourceError", "demo_dir", "gguf_file", "is_prepared", "resolve_model_path"]


def demo_dir(name: str, cache_dir: Path) -> Path:
    recipe = RECIPES[name]
    return Path(cache_dir).expanduser() / f"{name}-v{recipe.version}"


def gguf_file(source: ModelSource) -> Path | None:
    """The GGUF file behind ``source`` (``gguf:`` or a GGUF demo), or None for other sources.

    Raises ``ModelSourceError`` when a GGUF demo's package is not installed.
    """
    if source.gguf is not None:
        return Path(source.gguf).expanduser()
    if source.demo in GGUF_DEMOS:
        return GGUF_DEMOS[source.demo]()
    return None


def is_prepared(source: ModelSource, cache_dir: Path) -> bool:
    """Whether ``resolve_model_path`` would return at once (nothing to build, convert or fail on)."""
    if source.gguf is not None or source.demo in GGUF_DEMOS:
        try:
            path = gguf_file(source)
        except ModelSourceError:
            return False
        return path is not None and is_gguf_prepared(path, cache_dir)
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
    gguf = gguf_file(source)
    if gguf is not None:
        label = "source.gguf" if source.gguf is not None else f"demo {source.demo!r}'s GGUF"
        return prepare_gguf(gguf, Path(cache_dir).expanduser(), progress, label=label)
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
