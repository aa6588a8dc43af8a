"""GGUF files (llama.cpp's checkpoint format): their header, and whether transformers can load them.

A GGUF holds the model's config, its tokenizer (vocabulary, merges, chat template) and its tensors,
most of them quantized. transformers loads one with ``from_pretrained(dir, gguf_file=...)`` and
dequantizes every tensor to float, but only for the architectures, tensor types and tokenizers it
knows; a file outside those fails minutes into a load, or deep inside a replica. ``gguf_problems``
says so up front, from the header alone (no tensor is read), for ``llmaas check`` and the preflight.

The lists of what is supported come from the installed transformers and ``gguf`` packages
(``transformers_support``), not from a copy kept here.
"""

from __future__ import annotations

import functools
import mmap
import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "GgufError",
    "GgufInfo",
    "GgufSupport",
    "gguf_problems",
    "read_gguf_info",
    "transformers_support",
]

# GGUF metadata value types (gguf.GGUFValueType) -> struct format of the fixed-size ones.
_SCALARS = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}
_STRING, _ARRAY = 8, 9

# llama.cpp architecture names transformers' GGUF loader renames before looking them up
# (transformers.modeling_gguf_pytorch_utils.load_gguf_checkpoint).
_RENAMES = {
    "qwen2moe": "qwen2_moe",
    "qwen3moe": "qwen3_moe",
    "gpt-oss": "gpt_oss",
    "minimax-m2": "minimax_m2",
    "t5encoder": "t5",
    "gemma3": "gemma3_text",
    "gemma4": "gemma4_text",
}
# NOTE: transformers loads these from GGUF, but not as causal LMs: llmaas cannot generate with them.
_NOT_CAUSAL = {"t5", "t5encoder", "umt5"}
# NOTE: state-space and hybrid architectures keep a recurrent state in some layers, not an attention
# KV cache; llmaas's engine batches by KV cache (engine/kv_slab.py), so it cannot serve them.
_NO_KV_CACHE = {"mamba", "lfm2", "qwen35", "qwen35moe"}
_NOT_GGUF_FIX = (
    "give a .gguf checkpoint as llama.cpp writes it (a Hugging Face directory goes in source.path)"
)
# Keys in the mapping of transformers' legacy loader that are not architectures.
_NOT_ARCHITECTURES = {"general", "tokenizer"}


class GgufError(ValueError):
    """A file that is not a readable GGUF: ``reason`` says what is wrong and how to fix it."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path} {reason}")
        self.path = path
        self.reason = reason


@dataclass(frozen=True)
class GgufInfo:
    """What a GGUF file's header says: metadata scalars and strings, and its tensors' types.

    Array values (the vocabulary, merges, scores) are kept as their length only.
    """

    path: Path
    version: int
    metadata: dict[str, object]
    tensor_types: Counter[str] = field(default_factory=Counter)  # ggml type name -> tensors
    tensor_bytes: int = 0  # where the last tensor's data ends, from the start of the file

    def _get(self, key: str) -> object:
        return self.metadata.get(key)

    @property
    def architecture(self) -> str:
        return str(self._get("general.architecture") or "")

    @property
    def name(self) -> str:
        return str(self._get("general.name") or self.path.stem)

    @property
    def model_type(self) -> str:
        """The transformers ``model_type`` this architecture becomes (``llama``, ``qwen2_moe``, ...)."""
        return _RENAMES.get(self.architecture, self.architecture).replace("-", "_")

    @property
    def tokenizer_model(self) -> str | None:
        value = self._get("tokenizer.ggml.model")
        return str(value) if value is not None else None

    @property
    def has_chat_template(self) -> bool:
        return bool(self._get("tokenizer.chat_template"))

    def _int(self, suffix: str) -> int | None:
        value = self._get(f"{self.architecture}.{suffix}")
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    @property
    def context_length(self) -> int | None:
        return self._int("context_length")

    @property
    def attention_heads(self) -> int | None:
        return self._int("attention.head_count")

    @property
    def kv_heads(self) -> int | None:
        return self._int("attention.head_count_kv") or self.attention_heads


class _Cursor:
    """Reads little-endian GGUF values from a memory map, refusing to run past its end."""

    def __init__(self, blob: mmap.mmap, path: Path) -> None:
        self.blob = blob
        self.path = path
        self.pos = 0

    def unpack(self, fmt: str) -> object:
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.blob):
            raise GgufError(self.path, "is truncated inside its header: download or copy it again")
        (value,) = struct.unpack_from(fmt, self.blob, self.pos)
        self.pos += size
        return value

    def count(self) -> int:
        value = self.unpack("<Q")
        assert isinstance(value, int)
        if value > len(self.blob):
            raise GgufError(self.path, f"has a corrupt header (a length of {value}): download it again")
        return value

    def string(self) -> str:
        size = self.count()
        if self.pos + size > len(self.blob):
            raise GgufError(self.path, "is truncated inside its header: download or copy it again")
        text = self.blob[self.pos : self.pos + size].decode("utf-8", errors="replace")
        self.pos += size
        return text

    def skip_strings(self, count: int) -> None:
        """Step over ``count`` strings (a vocabulary, merges) without decoding them."""
        blob, pos, end = self.blob, self.pos, len(self.blob)
        unpack_from = struct.Struct("<Q").unpack_from
        for _ in range(count):
            if pos + 8 > end:
                break
            pos += 8 + unpack_from(blob, pos)[0]
        if pos > end:
            raise GgufError(self.path, "is truncated inside its header: download or copy it again")
        self.pos = pos

    def value(self, value_type: int) -> object:
        """The next value of ``value_type``; an array is skipped and stands for its length."""
        if value_type in _SCALARS:
            return self.unpack(_SCALARS[value_type])
        if value_type == _STRING:
            return self.string()
        if value_type == _ARRAY:
            item_type = self.unpack("<I")
            assert isinstance(item_type, int)
            length = self.count()
            if item_type in _SCALARS:  # fixed-size items: one step
                self.pos += length * struct.calcsize(_SCALARS[item_type])
                if self.pos > len(self.blob):
                    raise GgufError(self.path, "is truncated inside its header: download or copy it again")
            elif item_type == _STRING:
                self.skip_strings(length)
            else:
                for _ in range(length):
                    self.value(item_type)
            return length
        raise GgufError(self.path, f"has a metadata value of unknown type {value_type}: is it a GGUF file?")


def read_gguf_info(path: Path) -> GgufInfo:
    """The header of the GGUF file at ``path``: metadata and tensor types, without any tensor data.

    Raises ``GgufError`` for a file that is not GGUF, of an unsupported version, or truncated.
    """
    # NOTE: gguf.GGUFReader builds numpy views of every vocabulary entry (3 s for SmolLM2's 49k
    # tokens and merges on a 2-core machine); this reads the same layout with the gguf package's
    # constants and keeps only scalars, strings and the tensor table (tens of milliseconds).
    from gguf import GGML_QUANT_SIZES, GGUF_MAGIC, GGMLQuantizationType
    from gguf.gguf_reader import READER_SUPPORTED_VERSIONS

    path = Path(path)
    with path.open("rb") as handle:
        size = path.stat().st_size
        if size < 24:
            raise GgufError(path, f"is not a GGUF file: it is {size} bytes long; {_NOT_GGUF_FIX}")
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as blob:
            cursor = _Cursor(blob, path)
            magic = cursor.unpack("<I")
            if magic != GGUF_MAGIC:
                head = bytes(blob[:4])
                reason = f"is not a GGUF file: it starts with {head!r}, not b'GGUF'; {_NOT_GGUF_FIX}"
                raise GgufError(path, reason)
            version = cursor.unpack("<I")
            assert isinstance(version, int)
            if version not in READER_SUPPORTED_VERSIONS:
                raise GgufError(
                    path,
                    f"is GGUF version {version}; the gguf package reads versions "
                    f"{READER_SUPPORTED_VERSIONS} (convert it again with a recent llama.cpp)",
                )
            tensor_count, kv_count = cursor.count(), cursor.count()
            metadata: dict[str, object] = {}
            for _ in range(kv_count):
                key = cursor.string()
                value_type = cursor.unpack("<I")
                assert isinstance(value_type, int)
                metadata[key] = cursor.value(value_type)
            types: Counter[str] = Counter()
            extents: list[tuple[int, int]] = []  # (offset in the data section, bytes), where known
            for _ in range(tensor_count):
                cursor.string()  # the tensor's name
                dims = cursor.unpack("<I")
                assert isinstance(dims, int)
                elements = 1
                for _ in range(dims):
                    dim = cursor.unpack("<Q")
                    assert isinstance(dim, int)
                    elements *= dim
                type_id, offset = cursor.unpack("<I"), cursor.unpack("<Q")
                assert isinstance(type_id, int) and isinstance(offset, int)
                try:
                    qtype = GGMLQuantizationType(type_id)
                except ValueError:
                    types[f"ggml type {type_id}"] += 1
                    continue
                types[qtype.name] += 1
                if (block := GGML_QUANT_SIZES.get(qtype)) is not None:
                    extents.append((offset, elements // block[0] * block[1]))
            alignment = metadata.get("general.alignment", 32)
            align = alignment if isinstance(alignment, int) and alignment > 0 else 32
            data_start = (cursor.pos + align - 1) // align * align
    end = max((data_start + offset + nbytes for offset, nbytes in extents), default=data_start)
    if end > size:
        raise GgufError(
            path,
            f"is truncated: its tensors end at byte {end}, the file has {size}; download or copy it again",
        )
    return GgufInfo(path=path, version=version, metadata=metadata, tensor_types=types, tensor_bytes=end)


@dataclass(frozen=True)
class GgufSupport:
    """What the installed transformers and gguf packages load from a GGUF file."""

    architectures: frozenset[str]  # general.architecture values (after transformers' renames)
    dequantizable: frozenset[str]  # ggml tensor types the legacy loader turns into floats
    fast_architectures: frozenset[str]  # architectures transformers' own reader loads
    fast_dequantizable: frozenset[str]  # ggml tensor types that reader turns into floats
    tokenizers: frozenset[str]  # tokenizer.ggml.model values it builds a tokenizer from

    def architecture_supported(self, architecture: str) -> bool:
        names = {architecture, _RENAMES.get(architecture, architecture), architecture.replace("-", "_")}
        return bool(names & (self.architectures | self.fast_architectures))

    def dequantizable_for(self, architecture: str) -> frozenset[str]:
        if architecture in self.fast_architectures:
            return self.fast_dequantizable
        return self.dequantizable


@functools.cache
def transformers_support() -> GgufSupport:
    """Read the lists from the installed packages (once per process)."""
    import numpy as np
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
    from gguf.quants import dequantize
    from transformers.integrations.gguf import GGUF_ARCHS
    from transformers.integrations.gguf.dequant import GGML_BLOCK
    from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_TOKENIZER_TYPES
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    # NOTE: transformers' legacy GGUF loader (every architecture outside GGUF_ARCHS) dequantizes
    # with gguf.quants.dequantize, which raises NotImplementedError for the types it lacks; asking
    # it about one zero block per type is the package's own answer, and takes milliseconds.
    legacy: set[str] = set()
    for qtype in GGMLQuantizationType:
        block = GGML_QUANT_SIZES.get(qtype)
        if block is None:
            continue
        try:
            dequantize(np.zeros(block[1], dtype=np.uint8), qtype)
        except NotImplementedError:
            continue
        except Exception:  # a type whose zero block is malformed is still implemented
            pass
        legacy.add(qtype.name)
    fast = {"F32", "F16", "BF16"} | {GGMLQuantizationType(type_id).name for type_id in GGML_BLOCK}
    return GgufSupport(
        architectures=frozenset(set(GGUF_SUPPORTED_ARCHITECTURES) - _NOT_ARCHITECTURES),
        dequantizable=frozenset(legacy),
        fast_architectures=frozenset(GGUF_ARCHS),
        fast_dequantizable=frozenset(fast),
        tokenizers=frozenset(GGUF_TOKENIZER_TYPES),
    )


def gguf_problems(path: Path, field_name: str = "source.gguf") -> list[str]:
    """Why transformers cannot load the GGUF at ``path`` into a causal LM llmaas serves (empty: it can).

    Reads the header only. Each message names ``field_name``, the file, what is wrong and the fix.
    """
    path = Path(path).expanduser()
    where = f"{field_name} {str(path)!r}"
    if not path.exists():
        return [f"{where} does not exist: give the path of a local .gguf file"]
    if not path.is_file():
        return [f"{where} is not a file: give the .gguf file itself"]
    try:
        info = read_gguf_info(path)
    except GgufError as exc:
        return [f"{where} {exc.reason}"]
    except OSError as exc:
        return [f"{where} cannot be read ({exc.strerror or exc}): check its permissions"]
    support = transformers_support()
    arch = info.architecture
    if not arch:
        return [f"{where} has no general.architecture in its metadata: it is not a model checkpoint"]
    if not support.architecture_supported(arch):
        known = ", ".join(sorted(support.architectures | support.fast_architectures))
        return [
            f"{where}: architecture {arch!r} cannot be loaded from GGUF by the installed transformers; "
            f"use a GGUF of one of: {known}; or give the model as a Hugging Face directory (source.path)"
        ]
    if arch in _NOT_CAUSAL or info.model_type in _NOT_CAUSAL:
        return [
            f"{where}: architecture {arch!r} is an encoder-decoder model, and llmaas serves causal LMs "
            "from GGUF; use a decoder-only model (Llama, Mistral, Qwen2/3, Phi-3, Gemma 2/3)"
        ]
    if arch in _NO_KV_CACHE:
        return [
            f"{where}: architecture {arch!r} keeps a recurrent state rather than an attention KV cache, "
            "and llmaas's engine batches by KV cache; use a transformer (Llama, Mistral, Qwen2/3, Phi-3, "
            "Gemma 2/3)"
        ]
    problems: list[str] = []
    allowed = support.dequantizable_for(arch)
    unsupported = sorted(set(info.tensor_types) - allowed)
    if unsupported:
        shown = ", ".join(f"{name} ({info.tensor_types[name]} tensors)" for name in unsupported)
        problems.append(
            f"{where} holds tensor types transformers cannot dequantize: {shown}; use a GGUF quantized "
            f"with one of: {', '.join(sorted(allowed))} (e.g. Q4_K_M, Q8_0 or F16)"
        )
    tokenizer = info.tokenizer_model
    if tokenizer is None:
        problems.append(
            f"{where} holds no tokenizer (no tokenizer.ggml.model in its metadata): use a GGUF converted "
            "with its tokenizer, as llama.cpp's convert_hf_to_gguf.py does"
        )
    elif tokenizer not in support.tokenizers:
        problems.append(
            f"{where}: transformers cannot build a tokenizer of type {tokenizer!r} from GGUF (it builds "
            f"{', '.join(sorted(support.tokenizers))}); give the model as a Hugging Face directory "
            "(source.path)"
        )
    return problems
