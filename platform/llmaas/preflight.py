"""Checks of a catalog against the models it names, before anything is deployed."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from llmaas.config.catalog import Catalog, ModelSpec, Task
from llmaas.models.demo import RECIPES
from llmaas.models.errors import ModelSourceError
from llmaas.models.gguf import GgufError, gguf_problems, read_gguf_info
from llmaas.models.resolve import gguf_file

# NOTE: DeepSpeed's AutoTP has no sharding policy for these; they run with tensor_parallel_size: 1.
AUTOTP_UNSUPPORTED = {"gpt2", "gpt_bigcode", "bert"}


def _architecture(spec: ModelSpec, gguf: Path | None) -> tuple[str, dict[str, object]]:
    if gguf is not None:
        try:
            info = read_gguf_info(gguf)
        except (GgufError, OSError):
            return "", {}
        return info.model_type, {
            "num_attention_heads": info.attention_heads,
            "num_key_value_heads": info.kv_heads,
        }
    if spec.source.demo is not None:
        recipe = RECIPES.get(spec.source.demo)
        arch = recipe.architecture if recipe else "bert"
        heads = recipe.heads if recipe else 12
        kv = recipe.kv_heads if recipe else 12
        return arch, {"num_attention_heads": heads, "num_key_value_heads": kv}
    config = Path(str(spec.source.path)).expanduser() / "config.json"
    try:
        data = json.loads(config.read_text())
    except (OSError, ValueError):
        return "", {}
    return str(data.get("model_type", "")), data


def _gguf_checks(spec: ModelSpec) -> tuple[Path | None, list[str]]:
    """The GGUF file behind ``spec``'s source (None for other sources), and why it cannot serve."""
    try:
        path = gguf_file(spec.source)
    except ModelSourceError as exc:
        return None, [f"model {spec.id!r}: {exc}"]
    if path is None:
        return None, []
    field = "source.gguf" if spec.source.gguf is not None else f"demo {spec.source.demo!r}'s GGUF"
    problems = [f"model {spec.id!r}: {problem}" for problem in gguf_problems(path, field)]
    if spec.task is not Task.GENERATE:
        problems.append(f"model {spec.id!r}: GGUF sources are generative models; set task: generate")
    return path, problems


def check_model(spec: ModelSpec) -> list[str]:
    problems: list[str] = []
    if spec.adapter_of is not None:
        path = Path(spec.source.path or "").expanduser()
        if not (path / "adapter_config.json").exists():
            problems.append(
                f"model {spec.id!r}: source.path {spec.source.path!r} holds no adapter_config.json; "
                "point it at a PEFT LoRA adapter directory"
            )
        return problems
    if spec.source.path is not None and not (Path(spec.source.path).expanduser() / "config.json").exists():
        problems.append(
            f"model {spec.id!r}: source.path {spec.source.path!r} holds no config.json; "
            "point it at a Hugging Face model directory"
        )
        return problems
    gguf, problems = _gguf_checks(spec)
    if problems:
        return problems
    problems += _runtime_checks(spec)
    arch, config = _architecture(spec, gguf)
    if spec.task is Task.GENERATE and spec.source.demo == "all-minilm-l6-v2":
        problems.append(f"model {spec.id!r}: all-minilm-l6-v2 is an embedding model; set task: embed")
    if spec.task is not Task.GENERATE and spec.source.demo in RECIPES:
        problems.append(f"model {spec.id!r}: demo {spec.source.demo!r} is generative; set task: generate")
    if spec.task is Task.CLASSIFY:
        problems += _classifier_checks(spec, config)
    tp = spec.tensor_parallel_size
    if tp > 1:
        if arch in AUTOTP_UNSUPPORTED:
            problems.append(
                f"model {spec.id!r}: architecture {arch!r} is not supported by DeepSpeed AutoTP; "
                "set tensor_parallel_size: 1 (Llama-family models shard)"
            )
        for key in ("num_attention_heads", "num_key_value_heads"):
            heads = config.get(key)
            if isinstance(heads, int) and heads % tp:
                problems.append(
                    f"model {spec.id!r}: {key}={heads} does not split across tensor_parallel_size={tp}; "
                    "use a divisor of it"
                )
    return problems


def _classifier_checks(spec: ModelSpec, config: dict[str, object]) -> list[str]:
    """A ``task: classify`` source must be a sequence classifier with its head (labels in its config)."""
    if spec.source.demo == "all-minilm-l6-v2":
        return [
            f"model {spec.id!r}: all-minilm-l6-v2 is an embedding model with no classification head; "
            "set task: embed, or serve a classifier fine-tuned from it (source: {path: ...})"
        ]
    architectures = config.get("architectures")
    if (
        isinstance(architectures, list)
        and architectures
        and not any(str(name).endswith("ForSequenceClassification") for name in architectures)
    ):
        named = ", ".join(map(str, architectures))
        return [
            f"model {spec.id!r}: source {spec.source.describe()!r} is a {named}, "
            "not a sequence classifier (its config.json names no *ForSequenceClassification architecture); "
            "point source at a fine-tuned classifier's directory"
        ]
    return []


def _runtime_checks(spec: ModelSpec) -> list[str]:
    """What the replica will import: the engine class the entry names, the quantization library."""
    problems: list[str] = []
    if spec.engine is not None:
        from llmaas.engine import import_engine_cls

        try:
            import_engine_cls(spec.engine.cls)
        except ValueError as exc:
            problems.append(f"model {spec.id!r}: {exc}")
    if spec.quantization != "none" and importlib.util.find_spec("torchao") is None:
        problems.append(
            f"model {spec.id!r}: quantization {spec.quantization!r} needs torchao: "
            "pip install 'llmaas[quant]' (or set quantization: none)"
        )
    return problems


def check_catalog(catalog: Catalog) -> list[str]:
    """Every reason this catalog cannot be deployed, as messages naming the model and the fix."""
    return [problem for spec in catalog.models for problem in check_model(spec)]
