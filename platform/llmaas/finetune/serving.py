"""How a trained job's result is served: the catalog entry of its fine-tuned model.

- A classifier is a complete ``AutoModelForSequenceClassification`` directory: a ``task:
  classify`` model behind ``/v1/classify``.
- A causal LM's LoRA adapter runs on its base's replicas (``adapter_of``): no weights copied, no
  replica started, rows of one batch running different adapters. Where the base cannot run
  adapters (tensor-parallel, kernel-injected or quantized: ``unservable_adapters``), the adapter
  is merged into a copy of the base (PEFT's ``merge_and_unload``), served as a model of its own
  with the base's settings.

The entry names its ``parent`` (the base) and ``owner`` (the key that ran the job), so
``/v1/models`` shows where it came from and other keys cannot call it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmaas.config.catalog import ModelSpec
from llmaas.finetune.store import CheckpointRecord

#: Where the merged copy of a causal LM is written, under the run's output directory.
MERGED = "merged"


def merge_adapter(base_dir: Path, adapter_dir: Path, out_dir: Path) -> Path:
    """The base with the adapter merged in, saved as a Hugging Face directory (blocking)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype="auto")
    merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    merged.save_pretrained(out_dir)
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(out_dir)
    return out_dir


def catalog_entry(
    model_id: str, base: ModelSpec, servable_dir: Path, kind: str, owner: str | None
) -> dict[str, Any]:
    """The fine-tuned model's catalog entry (a ``put`` of the admin API's catalog edit)."""
    entry: dict[str, Any] = {
        "id": model_id,
        "source": {"path": str(servable_dir)},
        "parent": base.id,
        "owner": owner,
        "description": f"fine-tuned from {base.id}",
    }
    if kind == "classification":
        entry["task"] = "classify"
        return entry
    if (servable_dir / "adapter_config.json").exists():  # NOTE: a merged copy holds config.json instead
        sampling = base.model_dump(mode="json", include={"max_context_length", "sampling"})
        return {**sampling, **entry, "adapter_of": base.id}
    inherited = base.model_dump(
        mode="json", include={"dtype", "max_context_length", "batching", "sampling", "resources", "replicas"}
    )
    return {**inherited, **entry}


def checkpoint_entry(
    point: CheckpointRecord, base: ModelSpec, model_id: str, owner: str | None
) -> dict[str, Any]:
    """A LoRA checkpoint's catalog entry: an adapter on ``base``, named as the job lists it."""
    entry = catalog_entry(point.fine_tuned_model_checkpoint, base, Path(point.path), "causal_lm", owner)
    entry["description"] = f"{model_id} at step {point.step_number}"
    return entry
