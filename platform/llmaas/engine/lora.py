"""LoRA adapters over a loaded model, many per batch: each row of a step adds its own adapter's delta.

PEFT's mixed-batch path splits every LoRA layer's input by adapter: per layer and step, a gather,
two matmuls and a scatter for each adapter in the batch, and Python work to find the rows. On a
CPU that dispatch is most of the cost: a 32-row batch over 4 adapters of SmolLM2 decoded at 0.69x
the base's speed. Here (the batched-gather-matmul idea of Punica / S-LoRA, in dense form):

- every adapter has a slot of ``width`` columns (its rank, zero-padded to the widest one); a
  wrapped layer keeps all slots side by side, ``a: [in, slots x width]`` and
  ``b: [slots x width, out]`` with each adapter's scale folded into ``b``; an adapter that does
  not touch a layer leaves zeros in its slot there;
- a step sets one mask ``[rows, 1, slots x width]`` that keeps, in each row, the columns of its
  adapter's slot (none for a base row), shared by every layer;
- a layer adds ``((x @ a) * mask) @ b``: four tensor operations whatever the adapters in the
  batch; a step whose rows all run the base adds nothing.

Adapters are PEFT's LoRA directories (``adapter_config.json`` and ``adapter_model.safetensors``);
what PEFT's plain LoRA does not cover here (DoRA, biases, ``modules_to_save``, embedding layers)
is refused with the reason, where merging the adapter into a copy still works.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

PEFT_PREFIX = "base_model.model."


class UnsupportedAdapter(ValueError):
    """An adapter directory this module cannot serve (the message says why)."""


class _Weights:
    """One adapter's A and B for one layer: ``a: [in, rank]``, ``b: [rank, out]`` (scaled)."""

    def __init__(self, a: torch.Tensor, b: torch.Tensor) -> None:
        self.a, self.b = a, b


class LoraLinear(torch.nn.Module):
    """A linear layer plus the loaded adapters' deltas for the rows the active mask selects."""

    def __init__(self, base: torch.nn.Linear, owner: MultiLora) -> None:
        super().__init__()
        self.base = base
        self.owner = owner
        self.adapters: dict[str, _Weights] = {}
        self.a: torch.Tensor | None = None  # [in, slots x width]
        self.b: torch.Tensor | None = None  # [slots x width, out]

    @property
    def weight(self) -> torch.Tensor:  # NOTE: code that reads a linear layer's weight still finds it
        return self.base.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        mask = self.owner.mask
        if mask is None or self.a is None or self.b is None:
            return out
        return out + ((x @ self.a) * mask) @ self.b

    def rebuild(self, slots: list[str], width: int) -> None:
        """Lay the adapters out in ``slots`` of ``width`` columns (zeros where one is absent)."""
        if not any(name in self.adapters for name in slots):
            self.a = self.b = None
            return
        weight = self.base.weight
        a = weight.new_zeros((weight.shape[1], len(slots) * width))
        b = weight.new_zeros((len(slots) * width, weight.shape[0]))
        for slot, name in enumerate(slots):
            found = self.adapters.get(name)
            if found is not None:
                rank = found.a.shape[1]
                a[:, slot * width : slot * width + rank] = found.a
                b[slot * width : slot * width + rank] = found.b
        self.a, self.b = a, b


class MultiLora:
    """The adapters loaded over ``model`` and the mask of the step being run (one model thread)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.layers: dict[str, LoraLinear] = {}
        self.slots: list[str] = []
        self.width = 0
        self.mask: torch.Tensor | None = None

    @property
    def loaded(self) -> list[str]:
        return list(self.slots)

    def load(self, name: str, path: str | Path) -> None:
        """Load the PEFT LoRA adapter in directory ``path`` as ``name`` (blocking)."""
        if name in self.slots:
            return
        weights = read_adapter(Path(path))
        modules = dict(self.model.named_modules())
        for module_name in weights:
            if not isinstance(modules.get(module_name), torch.nn.Linear | LoraLinear):
                raise UnsupportedAdapter(f"its layer {module_name!r} is not a linear layer of this model")
        for module_name, (a, b) in weights.items():
            layer = self._wrap(module_name, modules)
            dtype = layer.base.weight.dtype
            layer.adapters[name] = _Weights(a.to(dtype), b.to(dtype))
        self.slots.append(name)
        self._rebuild()

    def unload(self, name: str) -> None:
        if name not in self.slots:
            return
        self.slots.remove(name)
        for layer in self.layers.values():
            layer.adapters.pop(name, None)
        self._rebuild()

    @contextmanager
    def rows(self, adapters: tuple[str, ...]) -> Iterator[None]:
        """Run a step whose row ``i`` uses adapter ``adapters[i]`` ("" for the base weights)."""
        if not any(adapters) or not self.slots:
            self.mask = None
        else:
            index = {name: slot for slot, name in enumerate(self.slots)}
            missing = sorted({name for name in adapters if name and name not in index})
            if missing:
                raise RuntimeError(f"adapters {missing} are not loaded")
            mask = torch.zeros((len(adapters), 1, len(self.slots) * self.width))
            for row, name in enumerate(adapters):
                if name:
                    start = index[name] * self.width
                    mask[row, 0, start : start + self.width] = 1.0
            first = next(iter(self.layers.values()))
            self.mask = mask.to(device=first.base.weight.device, dtype=first.base.weight.dtype)
        try:
            yield
        finally:
            self.mask = None

    def _wrap(self, module_name: str, modules: dict[str, torch.nn.Module]) -> LoraLinear:
        layer = self.layers.get(module_name)
        if layer is not None:
            return layer
        base = modules[module_name]
        assert isinstance(base, torch.nn.Linear)
        layer = LoraLinear(base, self)
        parent_name, _, child = module_name.rpartition(".")
        parent = self.model.get_submodule(parent_name) if parent_name else self.model
        setattr(parent, child, layer)
        self.layers[module_name] = layer
        return layer

    def _rebuild(self) -> None:
        ranks = [w.a.shape[1] for layer in self.layers.values() for w in layer.adapters.values()]
        self.width = max(ranks, default=0)
        for layer in self.layers.values():
            layer.rebuild(self.slots, self.width)


def read_adapter(path: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """A PEFT LoRA directory's weights by the model's module name: ``(A^T [in, r], scale * B^T [r, out])``."""
    try:
        config: dict[str, Any] = json.loads((path / "adapter_config.json").read_text())
    except (OSError, ValueError) as exc:
        raise UnsupportedAdapter(f"{path} holds no readable adapter_config.json: {exc}") from exc
    if config.get("peft_type", "LORA") != "LORA":
        raise UnsupportedAdapter(f"it is a {config.get('peft_type')} adapter, not LoRA")
    for key, ok in (("use_dora", False), ("modules_to_save", None), ("bias", "none")):
        if config.get(key) not in (ok, None, []):
            raise UnsupportedAdapter(f"it sets {key}={config[key]!r}, which only merging supports")
    rank = int(config.get("r", 8))
    alpha = float(config.get("lora_alpha", rank))
    scale = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
    tensors = _tensors(path)
    out: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        if not key.endswith(".lora_A.weight"):
            if not key.endswith(".lora_B.weight"):
                raise UnsupportedAdapter(f"it holds {key!r}, which only merging supports")
            continue
        module = key.removesuffix(".lora_A.weight").removeprefix(PEFT_PREFIX)
        b = tensors.get(key.replace(".lora_A.", ".lora_B."))
        if b is None:
            raise UnsupportedAdapter(f"it has lora_A but no lora_B for {module!r}")
        out[module] = (tensor.t().contiguous().float(), (b.t() * scale).contiguous().float())
    if not out:
        raise UnsupportedAdapter(f"{path} holds no LoRA weights")
    return out


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    safetensors = path / "adapter_model.safetensors"
    if safetensors.exists():
        from safetensors.torch import load_file

        return dict(load_file(str(safetensors)))
    binary = path / "adapter_model.bin"
    if binary.exists():
        return dict(torch.load(binary, map_location="cpu", weights_only=True))
    raise UnsupportedAdapter(f"{path} holds neither adapter_model.safetensors nor adapter_model.bin")


__all__ = ["LoraLinear", "MultiLora", "UnsupportedAdapter", "read_adapter"]
