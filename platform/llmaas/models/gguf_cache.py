"""GGUF files prepared once into the model cache as Hugging Face directories, keyed by content.

``prepare_gguf(file, cache_dir)`` loads the file with transformers (``from_pretrained(dir,
gguf_file=...)``, every tensor dequantized to float32), saves the model and its tokenizer (with the
chat template from the file's metadata) with ``save_pretrained`` into ``cache_dir/gguf-<sha256>``,
and returns that directory; later calls, from any process, return it at once. The key is the
file's content hash, so the same file at another path reuses the directory and a changed file is
prepared anew. Hashes are remembered by (path, size, mtime) in ``cache_dir/gguf-digests.json``, so a
restart does not read a large file again just to find its directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from filelock import FileLock
from pydantic import BaseModel, TypeAdapter, ValidationError

from llmaas.models.errors import ModelSourceError
from llmaas.models.gguf import gguf_problems, read_gguf_info

__all__ = [
    "PREPARE_VERSION",
    "file_digest",
    "gguf_target",
    "is_gguf_prepared",
    "prepare_gguf",
]

Progress = Callable[[str, float], None]  # (stage, fraction done), as the demo builders report

# NOTE: bump when what a prepared directory holds changes, so that caches are prepared again.
PREPARE_VERSION = 1
MARKER = "llmaas-gguf.json"  # written last, inside the temporary directory, before the rename
DIGESTS = "gguf-digests.json"
_CHUNK = 8 << 20


def _quiet(stage: str, fraction: float) -> None:
    return None


class _Digest(BaseModel):
    size: int
    mtime_ns: int
    sha256: str


_DIGESTS = TypeAdapter(dict[str, _Digest])


def _read_digests(cache_dir: Path) -> dict[str, _Digest]:
    try:
        return _DIGESTS.validate_json((cache_dir / DIGESTS).read_bytes())
    except (OSError, ValidationError):
        return {}


def file_digest(path: Path, cache_dir: Path, progress: Progress = _quiet) -> str:
    """The SHA-256 of the file at ``path``, remembered by (path, size, mtime) under ``cache_dir``."""
    path = Path(path).expanduser().resolve()
    cache_dir = Path(cache_dir).expanduser()
    stat = path.stat()
    key = str(path)
    cached = _read_digests(cache_dir).get(key)
    if cached is not None and (cached.size, cached.mtime_ns) == (stat.st_size, stat.st_mtime_ns):
        return cached.sha256
    digest = hashlib.sha256()
    done = 0
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
            done += len(chunk)
            progress("hashing", done / max(stat.st_size, 1))
    sha256 = digest.hexdigest()
    # NOTE: two processes may write at once; os.replace keeps the file whole, and a lost entry only
    # costs a rehash later. A file rewritten within the same mtime tick at the same size would keep
    # its old hash: mtime_ns makes that a nanosecond window. Remembering is best effort: a
    # read-only cache (a prepared volume mounted in a pod) only means hashing at each start.
    entries = _read_digests(cache_dir)
    entries[key] = _Digest(size=stat.st_size, mtime_ns=stat.st_mtime_ns, sha256=sha256)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=f".{DIGESTS}.")
        with os.fdopen(fd, "wb") as out:
            out.write(_DIGESTS.dump_json(entries, indent=1))
        os.chmod(tmp, 0o644)
        os.replace(tmp, cache_dir / DIGESTS)
    except OSError:
        pass
    return sha256


def gguf_target(digest: str, cache_dir: Path) -> Path:
    """The prepared directory of the GGUF whose SHA-256 is ``digest``."""
    return Path(cache_dir).expanduser() / f"gguf-{digest[:32]}-v{PREPARE_VERSION}"


def _complete(target: Path) -> bool:
    return (target / MARKER).is_file()


def is_gguf_prepared(path: Path, cache_dir: Path) -> bool:
    """Whether ``prepare_gguf`` would return at once (False for a missing file: it would fail)."""
    path = Path(path).expanduser()
    if not path.is_file():
        return False
    cache_dir = Path(cache_dir).expanduser()
    return _complete(gguf_target(file_digest(path, cache_dir), cache_dir))


def prepare_gguf(
    path: Path, cache_dir: Path, progress: Progress = _quiet, *, label: str = "source.gguf"
) -> Path:
    """The Hugging Face directory prepared from the GGUF at ``path``, preparing it on first use.

    Safe to call from many processes at once: one prepares (under a file lock), the others wait
    and return its directory. Raises ``ModelSourceError`` naming ``label`` for an unusable file.
    """
    path = Path(path).expanduser()
    cache_dir = Path(cache_dir).expanduser()
    if not path.is_file():
        raise ModelSourceError(f"{label} {str(path)!r} does not exist: give the path of a local .gguf file")
    digest = file_digest(path, cache_dir, lambda stage, done: progress(stage, 0.05 * done))
    target = gguf_target(digest, cache_dir)
    if _complete(target):
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if _complete(target):
            return target
        problems = gguf_problems(path, label)
        if problems:
            raise ModelSourceError("; ".join(problems))
        # NOTE: the directory appears only by the rename below, complete with its marker, so a
        # preparation killed half-way leaves only the temporary directory, which the next one
        # removes; a directory at ``target`` without the marker is not ours, and is replaced.
        tmp = target.with_name(target.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            convert_gguf(path, tmp, digest, progress)
            shutil.rmtree(target, ignore_errors=True)
            tmp.rename(target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    progress("saved", 1.0)
    return target


def convert_gguf(path: Path, out: Path, digest: str, progress: Progress = _quiet) -> Path:
    """Load the GGUF at ``path`` with transformers, dequantized to float32, and save it into ``out``."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    started = time.perf_counter()
    info = read_gguf_info(path)
    progress("reading the tokenizer", 0.1)
    tokenizer: Any = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    if info.context_length:
        tokenizer.model_max_length = info.context_length
    progress("dequantizing", 0.3)
    # NOTE: dequantize=True makes every weight a plain float tensor even where a GGUF matmul
    # kernel is installed (which would keep blocks packed and make the model unsaveable).
    model: Any = AutoModelForCausalLM.from_pretrained(
        str(path.parent),
        gguf_file=path.name,
        dtype=torch.float32,
        quantization_config=GgufConfig(dequantize=True),
    )
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
    packed = sorted({str(p.dtype) for p in model.parameters() if not p.dtype.is_floating_point})
    if packed:
        raise ModelSourceError(
            f"{path}: transformers left weights of type {', '.join(packed)} after dequantizing; "
            "this GGUF cannot be prepared as a float model"
        )
    progress("saving", 0.85)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    record = {
        "source": str(path.resolve()),
        "sha256": digest,
        "architecture": info.architecture,
        "name": info.name,
        "tensor_types": dict(info.tensor_types),
        "prepare_version": PREPARE_VERSION,
        "transformers": transformers.__version__,
        "prepared_in_s": round(time.perf_counter() - started, 1),
    }
    (out / MARKER).write_text(json.dumps(record, indent=1) + "\n")
    return out
