"""One rank of a model: a DeepSpeed-inference shard, its KV cache, and the step it runs.

A replica with ``tensor_parallel_size: N`` has N ranks. Rank 0 lives in the Serve replica
and decides every step; ranks 1..N-1 are worker actors (see ``llmaas.deployments.workers``)
that run the same ``ShardRunner.step`` in lockstep. DeepSpeed's AutoTP shards the linear
layers and all-reduces inside the forward pass, so every rank ends a step with the full
logits and its own slice of the KV cache.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import torch

from llmaas.config.catalog import ModelSpec
from llmaas.engine.kv_budget import KVBudget, context_length
from llmaas.engine.kv_slab import SlabLayer, SlabLimits, slab_cache
from llmaas.engine.lora import MultiLora
from llmaas.engine.quantize import quantize_model

logger = logging.getLogger(__name__)

TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class StepInput:
    """Everything a rank needs to run one forward step; picklable, identical on every rank."""

    # join: prefill new rows, merge into the cache; score: a forward pass that leaves the cache alone;
    # chunk: prefill part of one prompt into a cache held apart (chunked prefill), see ``resume``
    kind: Literal["prefill", "join", "decode", "score", "chunk"]
    input_ids: torch.Tensor  # [batch, new tokens]
    attention_mask: torch.Tensor  # [batch, cached + new tokens]
    position_ids: torch.Tensor  # [batch, new tokens]
    keep_rows: tuple[int, ...] | None = None  # decode: rows of the cache to keep first, in this order
    trim_left: int = 0  # decode: cache columns (padding in every kept row) to drop first
    all_logits: bool = False  # logits at every new position (prompt logprobs), not only the last
    # prefill/join with prefix-cache hits: the cached KV the new tokens follow, left-padded per row,
    # [layers, 2 (K, V), rows, kv heads, cached tokens, head dim]; attention_mask covers it too
    prefix_kv: torch.Tensor | None = None
    keep_kv: bool = False  # prefill/join: hold the new rows' KV for ``take_kv`` (prefix cache)
    # chunk/prefill/join of one row: continue the prompt that earlier chunk steps hold (prefix_kv is
    # then None); prefill/join end it: the whole prompt's KV becomes the cache or joins it
    resume: bool = False
    # the LoRA adapter of each row of the step ("" for the base weights); decode: the kept rows
    adapters: tuple[str, ...] = ()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def node_ip() -> str:
    try:
        import ray

        if ray.is_initialized():
            return str(ray.util.get_node_ip_address())
    except Exception:  # pragma: no cover - ray absent or not connected
        pass
    return "127.0.0.1"


def _prepare_distributed_env(rank: int, world_size: int, master_addr: str, master_port: int) -> None:
    """Environment that torch.distributed and DeepSpeed read when ranks start outside their launcher.

    NOTE: DeepSpeed's CPU shared-memory all-reduce segfaults unless LOCAL_SIZE equals the
    world size in every rank; our ranks share one node (STRICT_PACK), so that is exact.
    On GPUs Ray gives each rank one visible device, so its local device index is 0.
    """
    one_visible_gpu = torch.cuda.is_available() and torch.cuda.device_count() == 1
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK="0" if one_visible_gpu else str(rank),
        LOCAL_SIZE=str(world_size),
        CROSS_RANK="0",
        CROSS_SIZE="1",
        MASTER_ADDR=master_addr,
        MASTER_PORT=str(master_port),
    )


class ShardRunner:
    """A model shard on one rank. Plain class: usable in-process (TP=1) or inside an actor."""

    def __init__(self, spec: ModelSpec, model_path: Path, *, rank: int = 0) -> None:
        self.spec = spec
        self.model_path = Path(model_path)
        self.rank = rank
        self.world_size = spec.tensor_parallel_size
        self.model: Any = None
        self.cache: Any = None
        self.device = torch.device("cpu")
        self.prefilled: Any = None  # the last prefill's KV (new rows only), held for ``take_kv``
        self.partial: Any = None  # the KV of a prompt being prefilled in chunks, until its last chunk
        self.lora: MultiLora | None = None  # LoRA adapters over ``model``, once one is loaded
        self.kv_budget: KVBudget | None = None  # what the running batch's cache may hold, once loaded

    def load(self, master_addr: str = "127.0.0.1", master_port: int = 0) -> dict[str, Any]:
        """Form the process group (TP > 1), load the weights, wrap them with DeepSpeed-inference."""
        started = time.perf_counter()
        torch.set_num_threads(self.spec.resources.threads)
        if self.spec.resources.uses_gpu and not torch.cuda.is_available():
            raise RuntimeError(
                f"model {self.spec.id!r} asks for GPUs (resources.num_gpus > 0) but this worker sees none"
            )
        import deepspeed
        from transformers import AutoModelForCausalLM

        if self.world_size > 1:
            _prepare_distributed_env(self.rank, self.world_size, master_addr, master_port)
            backend = "nccl" if self.spec.resources.uses_gpu else "gloo"
            deepspeed.init_distributed(
                dist_backend=backend,
                init_method=f"tcp://{master_addr}:{master_port}",
                rank=self.rank,
                world_size=self.world_size,
            )
        dtype = TORCH_DTYPES[self.spec.torch_dtype_name]
        model = AutoModelForCausalLM.from_pretrained(self.model_path, dtype=dtype)
        model.eval()
        engine = deepspeed.init_inference(
            model,
            dtype=dtype,
            tensor_parallel={"tp_size": self.world_size},
            replace_with_kernel_inject=self.spec.kernel_inject,
        )
        self.model = quantize_model(engine.module, self.spec.quantization)
        self.device = next(self.model.parameters()).device
        config = self.model.config
        self.kv_budget = KVBudget.for_model(self.spec, config, dtype, context_length(self.spec, config))
        loaded = time.perf_counter() - started
        logger.info("rank %d of %s loaded in %.1fs", self.rank, self.spec.id, loaded)
        return {"rank": self.rank, "load_s": loaded, "device": str(self.device)}

    @torch.inference_mode()
    def step(self, step: StepInput, return_logits: bool = True) -> torch.Tensor | None:
        """Run one forward step; return the last position's logits per row ([batch, vocab]).

        With ``step.all_logits``: every new position's logits ([batch, new tokens, vocab]), from the
        model's own forward (so any final scaling or soft-capping of its logits is included).
        """
        from transformers import DynamicCache

        if not self.spec.resources.uses_gpu:
            threads = self.spec.resources.threads_for(step.input_ids.numel())
            if threads != torch.get_num_threads():
                torch.set_num_threads(threads)
        if step.kind == "decode":
            if step.keep_rows is not None:
                self.cache.batch_select_indices(torch.tensor(step.keep_rows, device=self.device))
            if step.trim_left:
                for layer in self.cache.layers:
                    if isinstance(layer, SlabLayer):
                        layer.trim_left(step.trim_left)
                    else:
                        layer.keys = layer.keys[:, :, step.trim_left :, :]
                        layer.values = layer.values[:, :, step.trim_left :, :]
            target = self.cache
        elif step.resume:
            target, self.partial = self.partial, None
            if target is None:
                raise RuntimeError("a chunked prefill resumed, but no earlier chunk is held")
        elif step.kind in ("prefill", "chunk") and self.supports_join:
            # NOTE: a prompt prefilled in chunks gets spare rows once it joins the running batch
            budget = self.kv_budget.capacity_tokens if self.kv_budget is not None else None
            limits = SlabLimits(budget, spare_rows=step.kind == "prefill")
            target = slab_cache(self.model.config, limits)
        elif step.kind == "score":
            target = None
        else:
            target = DynamicCache(config=self.model.config)
        if step.prefix_kv is not None and target is not None and step.kind in ("prefill", "join", "chunk"):
            prefix = step.prefix_kv.to(self.device)
            for index, layer in enumerate(target.layers):
                layer.update(prefix[index, 0], prefix[index, 1])
        if self.lora is None and any(step.adapters):
            raise RuntimeError(f"adapters {sorted(set(step.adapters) - {''})} are not loaded")
        # NOTE: each row adds its own adapter's delta ("": none); see llmaas.engine.lora
        rows = self.lora.rows(step.adapters) if self.lora is not None else contextlib.nullcontext()
        with rows:
            out = self._forward(step, target)
        self.prefilled = out.past_key_values if step.keep_kv and step.kind in ("prefill", "join") else None
        if step.kind == "chunk":
            self.partial = out.past_key_values
        elif step.kind == "join":
            for layer, new in zip(self.cache.layers, out.past_key_values.layers, strict=True):
                layer.join(new.keys, new.values)
        elif step.kind != "score":
            self.cache = out.past_key_values
        if not return_logits:
            return None
        logits = out.logits if step.all_logits else out.logits[:, -1, :]
        return logits.float().cpu()

    def _forward(self, step: StepInput, target: Any) -> Any:
        return self.model(
            input_ids=step.input_ids.to(self.device),
            attention_mask=step.attention_mask.to(self.device),
            position_ids=step.position_ids.to(self.device),
            past_key_values=target,
            use_cache=target is not None,
            logits_to_keep=0 if step.all_logits else 1,  # 0: every position
        )

    def load_adapter(self, name: str, path: str) -> None:
        """Load the PEFT LoRA adapter at ``path`` as ``name``, beside any others (blocking)."""
        if self.lora is None:
            self.lora = MultiLora(self.model)
        self.lora.load(name, path)

    def unload_adapter(self, name: str) -> bool:
        if self.lora is None:
            return False
        self.lora.unload(name)
        return True

    @torch.inference_mode()
    def take_kv(self, spans: list[tuple[int, int, int]]) -> list[torch.Tensor]:
        """Copies of the last prefill's KV: per ``(row, start, end)`` (cache columns), a tensor
        ``[layers, 2, kv heads, end - start, head dim]``; the prefill's KV is let go."""
        layers = self.prefilled.layers if self.prefilled is not None else []
        self.prefilled = None
        return [
            torch.stack(
                [
                    torch.stack([layer.keys[row, :, start:end], layer.values[row, :, start:end]])
                    for layer in layers
                ]
            )
            for row, start, end in spans
        ]

    def release(self) -> None:
        self.cache = None
        self.prefilled = None
        self.partial = None

    @functools.cached_property
    def supports_join(self) -> bool:
        """Whether rows can join a running cache: plain per-layer K/V (no sliding windows), so the
        running batch can live in ``SlabLayer``s."""
        from transformers import DynamicCache

        layers = DynamicCache(config=self.model.config).layers
        return all(type(layer).__name__ == "DynamicLayer" for layer in layers)

    @property
    def supports_adapters(self) -> bool:
        """Whether LoRA adapters can run over this shard: PEFT's layers wrap plain linear layers."""
        spec = self.spec
        return self.world_size == 1 and not spec.kernel_inject and spec.quantization == "none"

    @functools.cached_property
    def supports_chunked_prefill(self) -> bool:
        """Whether a prompt can be prefilled in chunks: its KV grows in a cache of our own."""
        return self.supports_join and not self.spec.kernel_inject

    def prefix_cache_state(self) -> str:
        """``"on"``, or ``"off: <why>"``: whether this model's KV can be cut into reusable prefixes."""
        if not self.spec.prefix_cache.enabled:
            return "off: disabled in the catalog (prefix_cache.enabled)"
        if self.world_size > 1:
            # NOTE: each rank would need its own store kept in lockstep; not built yet
            return "off: tensor-parallel models (tensor_parallel_size > 1) are not supported yet"
        if self.spec.kernel_inject:
            return "off: DeepSpeed kernel injection keeps its own KV cache"
        if not self.supports_join:
            return "off: sliding-window or non-standard KV cache"
        return "on"


class PeerGroup(Protocol):
    """Ranks 1..N-1 of a tensor-parallel replica, as seen from rank 0 (Ray actors in practice)."""

    def load(self, master_addr: str, master_port: int) -> list[Any]:
        """Start loading on every peer; return handles to wait on."""

    def step(self, step: StepInput) -> list[Any]:
        """Start one step on every peer; return handles to wait on."""

    def wait(self, handles: list[Any], timeout_s: float | None = None) -> None:
        """Block until the handles finish; raise if a peer failed."""

    def check_alive(self) -> None:
        """Raise if a peer died."""

    def watch(self, on_lost: Callable[[str], None]) -> None:
        """Call ``on_lost(reason)`` once, from any thread, as soon as a peer dies (mid-step or idle)."""

    def shutdown(self) -> None: ...


class ModelRunner:
    """What the scheduler calls: rank 0's shard, with its peers in lockstep when TP > 1."""

    def __init__(self, spec: ModelSpec, model_path: Path, *, peers: PeerGroup | None = None) -> None:
        if spec.tensor_parallel_size > 1 and peers is None:
            raise ValueError(
                f"model {spec.id!r} has tensor_parallel_size={spec.tensor_parallel_size} but no peer ranks"
            )
        self.local = ShardRunner(spec, model_path, rank=0)
        self.peers = peers

    def load(self) -> None:
        if self.peers is None:
            self.local.load()
            return
        addr, port = node_ip(), free_port()
        pending = self.peers.load(addr, port)
        self.local.load(addr, port)
        self.peers.wait(pending, timeout_s=900)

    @property
    def model_config(self) -> Any:
        return self.local.model.config

    @property
    def dtype(self) -> torch.dtype:
        return TORCH_DTYPES[self.local.spec.torch_dtype_name]

    @property
    def kv_budget(self) -> KVBudget:
        """Rank 0's KV budget (every rank computes the same from the catalog and the model)."""
        if self.local.kv_budget is None:
            raise RuntimeError("the model is not loaded")
        return self.local.kv_budget

    @functools.cached_property
    def supports_join(self) -> bool:
        return self.local.supports_join

    @functools.cached_property
    def supports_chunked_prefill(self) -> bool:
        return self.local.supports_chunked_prefill

    @property
    def supports_adapters(self) -> bool:
        return self.peers is None and self.local.supports_adapters

    def load_adapter(self, name: str, path: str) -> None:
        self.local.load_adapter(name, path)

    def unload_adapter(self, name: str) -> bool:
        return self.local.unload_adapter(name)

    def prefix_cache_state(self) -> str:
        return self.local.prefix_cache_state()

    def take_kv(self, spans: list[tuple[int, int, int]]) -> list[torch.Tensor]:
        """Rank 0's copies of the last prefill's KV (see ``ShardRunner.take_kv``); TP=1 only."""
        return self.local.take_kv(spans)

    def step(self, step: StepInput) -> torch.Tensor:
        """One step on every rank; rank 0's logits (see ``ShardRunner.step``)."""
        pending = self.peers.step(step) if self.peers is not None else []
        logits = self.local.step(step)
        if self.peers is not None:
            # NOTE: peers block inside the same all-reduces as rank 0, so they finish together.
            self.peers.wait(pending, timeout_s=120)
        assert logits is not None
        return logits

    def shutdown(self) -> None:
        self.local.release()
        if self.peers is not None:
            self.peers.shutdown()
