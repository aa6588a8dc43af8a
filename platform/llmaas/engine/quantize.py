"""Weight quantization of a loaded model, as the catalog's ``quantization`` option asks.

Done by torchao (PyTorch's maintained quantization library; ``torch.ao.quantization.quantize_dynamic``
is deprecated): ``quantize_`` swaps the weight of the model's ``nn.Linear`` layers for int8 tensors
with one scale per output channel, in place.

- ``int8-weight-only`` (the catalog offers it): weights stored in int8 and converted to float
  inside each matmul; activations stay float32. What it buys on CPU is memory (about half of
  float32's resident set for SmolLM2-135M, whose float32 embedding table stays) at float32's
  perplexity, with prefill and batched decode close to float32's speed (0.8-1.1x); not speed: in
  eager mode torchao converts each int8 weight to a float copy per call (its CPU path is written
  for torch.compile, which fuses that away; llmaas runs eagerly), so a lone stream decodes slower
  than in float32 (0.5-0.9x).
- ``int8-dynamic`` (measured, not offered): activations quantized per token as well, then an int8
  matmul; in eager mode slower than float32 and 3% worse in perplexity on SmolLM2.

See ``benchmarks/quant-cpu-2core/quant.md``, measured with ``python -m llmaas.bench.quant``.

Two details decide the memory and the speed:

- The output projection (``lm_head``) stays float: on CPU in eager mode its int8 form costs several
  times the float matmul (the largest matrix, converted whole at every step), and when it is tied
  to the input embeddings (SmolLM2, most small models) its float weights stay resident anyway.
- Weights that ``from_pretrained`` maps from a safetensors file are file pages of one mapping,
  resident as long as any tensor of the file lives; the float weights that remain (embeddings,
  norms) are copied to the process's own memory, so that the mapping, and with it every replaced
  float32 weight, is released. Then the freed float32 copies are handed back to the system
  (``malloc_trim``): the quantization's temporaries leave them in the middle of the C heap, where
  they would stay resident.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
from typing import Any

import torch

from llmaas.config.catalog import QUANTIZATION_METHODS, Quantization

__all__ = [
    "QUANTIZATION_METHODS",
    "Quantization",
    "quantize_model",
    "release_mapped_weights",
    "return_freed_memory",
]

TORCHAO_REQUIREMENT = "torchao>=0.18,<0.19"


def torchao_configs() -> dict[str, Any]:
    """torchao's config object for each method (imports torchao)."""
    # NOTE: torchao logs a warning for each optional CUDA extension it cannot load; on a CPU
    # machine that is every one of them, and none is used here.
    torchao_logger = logging.getLogger("torchao")
    level = torchao_logger.level
    torchao_logger.setLevel(logging.ERROR)
    try:
        from torchao.quantization import (  # type: ignore[import-untyped]
            Int8DynamicActivationInt8WeightConfig,
            Int8WeightOnlyConfig,
        )
    except ImportError as exc:
        raise RuntimeError(
            f"quantization needs torchao, which is not installed here: pip install '{TORCHAO_REQUIREMENT}'"
        ) from exc
    finally:
        torchao_logger.setLevel(level)
    return {
        "int8-weight-only": Int8WeightOnlyConfig(),
        "int8-dynamic": Int8DynamicActivationInt8WeightConfig(),
    }


def release_mapped_weights(model: torch.nn.Module) -> None:
    """Copy every plain parameter and buffer into memory of its own (ties kept: a tied parameter is
    one object), so that no tensor keeps the weights file's mapping, and its pages, alive."""
    seen: set[int] = set()
    for module in model.modules():
        for param in module.parameters(recurse=False):
            if id(param) not in seen and type(param.data) is torch.Tensor:
                seen.add(id(param))
                param.data = param.data.clone()
        for name, buffer in list(module._buffers.items()):
            if buffer is not None and type(buffer) is torch.Tensor:
                module._buffers[name] = buffer.clone()


def return_freed_memory() -> None:
    """Collect garbage, then ask glibc to give free heap pages back to the system (best effort)."""
    gc.collect()
    # NOTE: by hand because neither torch nor Python does it: glibc keeps freed blocks below the
    # heap's top resident, and a quantization frees hundreds of megabytes of them at once.
    with contextlib.suppress(OSError, AttributeError):  # not glibc (macOS, musl): nothing to do
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def quantize_model(model: Any, method: str) -> Any:
    """Quantize ``model``'s linear layers in place as ``method`` says; return it ("none": unchanged).

    ``method``: one of the catalog's ``QUANTIZATION_METHODS``, or a variant the benchmark measures
    (``torchao_configs``)."""
    if method == "none":
        return model
    configs = torchao_configs()  # NOTE: first: it quiets torchao's import and names the fix
    if method not in configs:
        raise ValueError(f"quantization {method!r} is not one of none, {', '.join(configs)}")
    config = configs[method]
    from torchao.quantization import quantize_

    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None

    def linear_but_output(module: torch.nn.Module, fqn: str) -> bool:
        return isinstance(module, torch.nn.Linear) and module is not output

    with torch.inference_mode(False), torch.no_grad():
        quantize_(model, config, filter_fn=linear_but_output)
        release_mapped_weights(model)
    return_freed_memory()
    return model
