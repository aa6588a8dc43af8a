"""Servable artifacts from training: a classification LoRA merged into a complete classifier.

A causal LM's adapter is served as it is (on its base model's replicas); a classifier is served as
a ``task: classify`` model, which loads a complete ``AutoModelForSequenceClassification``
directory, so a classification LoRA (adapter + trained head) is merged into its base first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["FINAL_MARKER", "export_classifier", "load_classifier_base", "merge_classifier"]

#: Written into a run's final artifact (job, kind, method, base model, metrics): tells a finished
#: run's artifact from a Trainer checkpoint.
FINAL_MARKER = "llmaas-finetune.json"


def merge_classifier(model: Any) -> Any:
    """A PEFT sequence classifier (LoRA + its trained head) as one plain transformers model."""
    return model.merge_and_unload()


def load_classifier_base(base_model: str | Path, labels: list[str]) -> Any:
    """The base as a sequence classifier over ``labels`` (a new head when it has none, or other labels)."""
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(
        base_model,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
        ignore_mismatched_sizes=True,
    )


def export_classifier(
    checkpoint: str | Path, out_dir: str | Path, labels: list[str], base_model: str | Path | None = None
) -> Path:
    """Make a classification LoRA checkpoint (a Trainer checkpoint directory) a complete classifier
    directory at ``out_dir``, loadable by ``AutoModelForSequenceClassification.from_pretrained``.

    ``labels`` are the training file's, in ``FileCheck.labels`` order (the order training gave
    them ids); ``base_model`` defaults to the adapter's own ``base_model_name_or_path``."""
    from peft import PeftConfig, PeftModel
    from transformers import AutoTokenizer

    checkpoint, out = Path(checkpoint), Path(out_dir)
    base = base_model or PeftConfig.from_pretrained(str(checkpoint)).base_model_name_or_path
    model = PeftModel.from_pretrained(load_classifier_base(base, labels), checkpoint)
    merge_classifier(model).save_pretrained(out)
    source = checkpoint if (checkpoint / "tokenizer_config.json").exists() else base
    AutoTokenizer.from_pretrained(source).save_pretrained(out)
    return out
