"""The CPU roofline: how fast batch-1 decode could go if it only had to read the weights.

A decode step of one sequence multiplies one activation row by every weight matrix: it reads each
weight byte once and does two flops per weight, far too few flops per byte for the cores to be
the limit. The limit is memory bandwidth, so

    roofline tok/s = memory bandwidth / weight bytes read per decode step

and a batch-1 decode rate divided by it is the share of the machine that the engine reaches; the
rest is per-token overhead (Python, kernel launches, attention, sampling, the serving stack).

- ``measure_bandwidth`` times large tensor kernels (best of N, so the least-disturbed run
  counts): a copy (``b.copy_(a)``: bytes read + written), a STREAM triad (``a = b + s * c``: two
  reads, one write) and a read (``a.sum()``), at 1 thread and at every core; the machine's
  bandwidth is the best of them.
- ``weight_bytes`` counts what a batch-1 decode step reads: every parameter except embedding
  tables that are only gathered (a step reads one row of those), each storage once (a tied
  ``lm_head`` reads the embedding matrix in full, so it counts there), at its stored size
  (int8 weights with their scales, bfloat16 at 2 bytes).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, Field

# NOTE: STREAM's convention: the bytes each kernel moves per element, counted once each way
# (write-allocate reads that x86 adds to a store are not counted, as in STREAM).
KERNEL_BYTES_PER_ELEMENT_ACCESS = {"copy": 2, "triad": 3, "read": 1}


class Bandwidth(BaseModel):
    """Memory bandwidth measured at one thread count."""

    threads: int
    size_mib: int = Field(description="Size of each array the kernels stream.")
    kernels_gbs: dict[str, float] = Field(description="Best GB/s (1e9 bytes) of each kernel.")

    @property
    def best_gbs(self) -> float:
        return max(self.kernels_gbs.values())


class Roofline(BaseModel):
    """The machine's bandwidth, the served model's weight bytes and the decode rate they allow."""

    memory_bandwidth_gbs: float = Field(description="The best GB/s of any kernel at any thread count.")
    bandwidth: list[Bandwidth] = Field(description="Every measurement, by thread count.")
    weight_bytes: int = Field(description="Bytes a batch-1 decode step reads (see weight_bytes).")
    resident_weight_bytes: int = Field(description="Every parameter's bytes, embeddings included.")
    dtype: str
    quantization: str = "none"
    roofline_tok_s: float = Field(description="memory_bandwidth_gbs / weight_bytes: batch-1 decode limit.")


def gbs(kernel: str, array_bytes: int, seconds: float) -> float:
    """GB/s of one run of ``kernel`` over arrays of ``array_bytes`` each."""
    return KERNEL_BYTES_PER_ELEMENT_ACCESS[kernel] * array_bytes / seconds / 1e9


def roofline_tok_s(bandwidth_gbs: float, weight_bytes: int) -> float:
    """Batch-1 decode tokens/s if every step did nothing but read ``weight_bytes`` at that bandwidth."""
    if weight_bytes <= 0:
        raise ValueError("weight_bytes must be positive")
    return bandwidth_gbs * 1e9 / weight_bytes


def fraction(tok_s: float | None, roofline: float | None) -> float | None:
    """``tok_s`` as a share of the roofline (None when either is unknown)."""
    if tok_s is None or not roofline:
        return None
    return round(tok_s / roofline, 3)


def _best_seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm: first touch of the pages, thread pool start
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def measure_bandwidth(threads: int, size_mib: int = 256, repeats: int = 8) -> Bandwidth:
    """Copy, triad and read GB/s over float32 arrays of ``size_mib`` (far above any cache)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        n = size_mib * 2**20 // 4
        a = torch.ones(n)
        b = torch.empty(n)
        c = torch.ones(n)
        nbytes = a.nbytes
        timings = {
            "copy": _best_seconds(lambda: b.copy_(a), repeats),
            "triad": _best_seconds(lambda: torch.add(a, c, alpha=2.0, out=b), repeats),
            "read": _best_seconds(lambda: a.sum(), repeats),
        }
    finally:
        torch.set_num_threads(previous)
    return Bandwidth(
        threads=threads,
        size_mib=size_mib,
        kernels_gbs={k: round(gbs(k, nbytes, s), 2) for k, s in timings.items()},
    )


def tensor_bytes(tensor: torch.Tensor) -> int:
    """Stored bytes of a tensor; a tensor subclass (torchao's quantized weights) counts its parts."""
    flatten = getattr(type(tensor), "__tensor_flatten__", None)
    if flatten is not None and type(tensor) not in (torch.Tensor, torch.nn.Parameter):
        names, _ = tensor.__tensor_flatten__()  # type: ignore[attr-defined]
        return sum(tensor_bytes(getattr(tensor, name)) for name in names)
    return tensor.numel() * tensor.element_size()


def weight_bytes(model: torch.nn.Module) -> tuple[int, int]:
    """(bytes a batch-1 decode step reads, bytes of every parameter), each parameter counted once."""
    every: dict[int, torch.Tensor] = {}
    streamed: set[int] = set()
    for module in model.modules():
        tensors = list(module.parameters(recurse=False))
        packed = getattr(module, "_weight_bias", None)
        if callable(packed):  # torch.ao's packed quantized linear weights are not parameters
            tensors += [t for t in packed() if t is not None]
        for tensor in tensors:
            every[id(tensor)] = tensor
            if not isinstance(module, torch.nn.Embedding):
                streamed.add(id(tensor))
    return (
        sum(tensor_bytes(every[key]) for key in streamed),
        sum(tensor_bytes(tensor) for tensor in every.values()),
    )


def served_model(model_dir: Path, dtype: str, quantization: str = "none") -> Any:
    """The model as a replica holds it: loaded in ``dtype``, quantized as the catalog says."""
    from transformers import AutoModelForCausalLM

    from llmaas.engine.quantize import quantize_model

    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch_dtype).eval()
    return quantize_model(model, quantization)


def measure_roofline(
    model_dir: Path,
    dtype: str,
    quantization: str = "none",
    threads: list[int] | None = None,
    size_mib: int = 256,
) -> Roofline:
    """Bandwidth at each thread count (default: 1 and every core) and the served model's weight bytes."""
    counts = threads or sorted({1, os.cpu_count() or 1})
    model = served_model(model_dir, dtype, quantization)
    streamed, resident = weight_bytes(model)
    del model
    measured = [measure_bandwidth(t, size_mib=size_mib) for t in counts]
    best = max(b.best_gbs for b in measured)
    return Roofline(
        memory_bandwidth_gbs=best,
        bandwidth=measured,
        weight_bytes=streamed,
        resident_weight_bytes=resident,
        dtype=dtype,
        quantization=quantization,
        roofline_tok_s=round(roofline_tok_s(best, streamed), 2),
    )
