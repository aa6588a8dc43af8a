"""One training example to token ids, as training and the token budget (``count_tokens``) see it.

Causal LM examples learn only what the model should say: ``labels`` is the token id where the
loss counts and -100 (PyTorch's ignore index) elsewhere, the usual way with Hugging Face models.

- chat: the conversation is rendered with the base model's chat template; the tokens of each
  assistant message (weight 1), its end-of-turn marker included, are learned. Where an assistant
  message lies in the rendered text is found by rendering the conversation up to it (with the
  generation prompt) and up to its end; the tokens are mapped to characters with a fast
  tokenizer's offsets. NOTE: a template that does not render a conversation's beginning as a
  prefix of the whole (some drop earlier turns' reasoning) cannot be split so: then every token
  is learned, and ``Encoded.masked`` is False so that training can say so.
- completion: ``prompt + completion`` then EOS; the completion's tokens and EOS are learned.
- classification: the tokenizer's encoding of ``(text, text_pair)``; its label is mapped by the
  trainer, which knows the file's labels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["IGNORE_INDEX", "Encoded", "encode_example"]

IGNORE_INDEX = -100


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int] | None = None  # causal LM: the learned ids, IGNORE_INDEX elsewhere
    extra: dict[str, list[int]] = field(default_factory=dict)  # e.g. token_type_ids
    masked: bool = True  # False: the chat template could not be split, every token is learned

    def truncated(self, max_length: int) -> Encoded:
        return Encoded(
            self.input_ids[:max_length],
            None if self.labels is None else self.labels[:max_length],
            {key: value[:max_length] for key, value in self.extra.items()},
            self.masked,
        )

    @property
    def learned_tokens(self) -> int:
        if self.labels is None:
            return len(self.input_ids)
        return sum(1 for label in self.labels if label != IGNORE_INDEX)


def _render(tokenizer: Any, messages: list[dict[str, Any]], generation_prompt: bool = False) -> str:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    return str(text)


def _offsets(tokenizer: Any, text: str, special: bool) -> tuple[list[int], list[tuple[int, int]]]:
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(
            "fine-tuning needs a fast tokenizer (a tokenizer.json in the model directory) to find "
            "which tokens to learn"
        )
    encoding = tokenizer(text, add_special_tokens=special, return_offsets_mapping=True)
    return list(encoding["input_ids"]), [tuple(pair) for pair in encoding["offset_mapping"]]


def _label(ids: list[int], offsets: list[tuple[int, int]], spans: list[tuple[int, int]]) -> list[int]:
    return [
        token if any(end > lo and start < hi for lo, hi in spans) else IGNORE_INDEX
        for token, (start, end) in zip(ids, offsets, strict=True)
    ]


def _chat(messages: list[dict[str, Any]], tokenizer: Any) -> Encoded:
    plain: list[dict[str, Any]] = [
        {key: m[key] for key in ("role", "content", "name") if key in m} for m in messages
    ]
    text = _render(tokenizer, plain)
    spans: list[tuple[int, int]] = []
    splittable = True
    for i, message in enumerate(messages):
        if message["role"] != "assistant" or message.get("weight", 1) == 0:
            continue
        try:
            before = _render(tokenizer, plain[:i], generation_prompt=True) if i else ""
        except Exception:  # a template that refuses an empty conversation
            before = ""
        after = _render(tokenizer, plain[: i + 1])
        if not (text.startswith(before) and text.startswith(after)) or len(after) <= len(before):
            splittable = False
            break
        spans.append((len(before), len(after)))
    ids, offsets = _offsets(tokenizer, text, special=False)
    if not splittable:
        return Encoded(ids, list(ids), masked=False)
    return Encoded(ids, _label(ids, offsets, spans))


def _completion(prompt: str, completion: str, tokenizer: Any) -> Encoded:
    ids, offsets = _offsets(tokenizer, prompt + completion, special=True)
    labels = _label(ids, offsets, [(len(prompt), len(prompt) + len(completion))])
    eos = tokenizer.eos_token_id
    if isinstance(eos, list):
        eos = eos[0] if eos else None
    if eos is not None and (not ids or ids[-1] != eos):
        ids.append(int(eos))
        labels.append(int(eos))
    return Encoded(ids, labels)


def encode_example(
    record: dict[str, Any], tokenizer: Any, kind: str, max_length: int | None = None
) -> Encoded:
    """Token ids (and, for a causal LM, labels) of one checked line of a ``kind`` file."""
    if kind == "chat":
        encoded = _chat(record["messages"], tokenizer)
    elif kind == "completion":
        encoded = _completion(record["prompt"], record["completion"], tokenizer)
    elif kind == "classification":
        out = tokenizer(
            record["text"], record.get("text_pair"), truncation=max_length is not None, max_length=max_length
        )
        extra = {key: list(value) for key, value in out.items() if key not in ("input_ids", "attention_mask")}
        return Encoded(list(out["input_ids"]), None, extra)
    else:
        raise ValueError(f"unknown file kind {kind!r}")
    return encoded.truncated(max_length) if max_length is not None else encoded
