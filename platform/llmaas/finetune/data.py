"""Training files: JSONL checked line by line, streaming (a file is never held whole in memory).

Three kinds of line, one kind a file (OpenAI's fine-tuning formats, plus classification):

- chat: ``{"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}`` with at
  least one assistant message; an assistant message may carry ``"weight": 0`` (not learned from)
  and any message a ``"name"``;
- completion: ``{"prompt": "...", "completion": "..."}``;
- classification: ``{"text": "...", "label": "..." | 0, "text_pair": "..."}`` (``text_pair``
  optional), at least two distinct labels a file.

``validate_file`` says which kind a file is, how many examples it holds and (classification)
its labels, or names the first bad line (1-based) and why. ``count_tokens`` counts the tokens a
job would train on per epoch, with the model's tokenizer, so that a job over its token budget is
refused before it starts. ``iter_examples`` yields a checked file's examples one by one.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

__all__ = [
    "FileCheck",
    "FileKind",
    "TrainingFileError",
    "count_tokens",
    "iter_examples",
    "sorted_labels",
    "validate_file",
]

FileKind = Literal["chat", "completion", "classification"]

#: Defaults for ``validate_file``'s limits (the files API may pass the catalog's own).
MAX_LINES = 1_000_000
MAX_LINE_BYTES = 1 << 20
MAX_LABELS = 1_000

ROLES = ("system", "user", "assistant")
_KEYS: dict[str, tuple[set[str], set[str]]] = {  # kind -> (required keys, optional keys)
    "chat": ({"messages"}, set()),
    "completion": ({"prompt", "completion"}, set()),
    "classification": ({"text", "label"}, {"text_pair"}),
}
_MESSAGE_KEYS = {"role", "content", "name", "weight"}


class TrainingFileError(ValueError):
    """A training file that cannot be trained on: ``line`` (1-based) is the first bad line, or
    ``None`` when the fault is the file's as a whole (empty, one label only, too long)."""

    def __init__(self, reason: str, line: int | None = None) -> None:
        super().__init__(f"line {line}: {reason}" if line is not None else reason)
        self.reason = reason
        self.line = line

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.__class__, (self.reason, self.line))


class FileCheck(BaseModel):
    """What ``validate_file`` found: the file's kind and size, or its first fault (``error``)."""

    kind: FileKind | None = Field(default=None, description="the kind every line has; None on error")
    lines: int = Field(default=0, description="examples in the file (blank lines are not counted)")
    labels: list[str] = Field(
        default_factory=list,
        description="classification: the distinct labels, in label-id order (see sorted_labels)",
    )
    error: str | None = Field(default=None, description="the first fault, naming its line when it has one")
    error_line: int | None = Field(default=None, description="the 1-based line of the fault, if any")

    @property
    def ok(self) -> bool:
        return self.error is None


def _kind_of(record: dict[str, Any]) -> FileKind:
    keys = set(record)
    for kind, (required, optional) in _KEYS.items():
        if required <= keys:
            extra = keys - required - optional
            if extra:
                raise ValueError(
                    f"unexpected key(s) {sorted(extra)} in a {kind} line "
                    f"(a {kind} line holds {sorted(required | optional)})"
                )
            return kind  # type: ignore[return-value]
    raise ValueError(
        f"a line must be a chat line {{'messages': [...]}}, a completion line {{'prompt', 'completion'}} "
        f"or a classification line {{'text', 'label'}}; this one has keys {sorted(keys)}"
    )


def _check_chat(messages: Any) -> None:
    if not isinstance(messages, list) or not messages:
        raise ValueError("'messages' must be a non-empty list of messages")
    learned = 0
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise ValueError(f"{where} must be an object with 'role' and 'content'")
        extra = set(message) - _MESSAGE_KEYS
        if extra:
            raise ValueError(
                f"{where} has unsupported key(s) {sorted(extra)} (allowed: {sorted(_MESSAGE_KEYS)})"
            )
        role = message.get("role")
        if role not in ROLES:
            raise ValueError(f"{where}.role is {role!r}; it must be one of {list(ROLES)}")
        if not isinstance(message.get("content"), str):
            raise ValueError(f"{where}.content must be a string")
        if "name" in message and not isinstance(message["name"], str):
            raise ValueError(f"{where}.name must be a string")
        if "weight" in message:
            if role != "assistant":
                raise ValueError(f"{where}.weight is only allowed on assistant messages")
            if message["weight"] not in (0, 1) or isinstance(message["weight"], bool):
                raise ValueError(f"{where}.weight must be 0 or 1")
        if role == "assistant" and message.get("weight", 1) == 1:
            learned += 1
    if not learned:
        raise ValueError("the conversation has no assistant message to learn from (weight 1)")


def _check_record(record: dict[str, Any], kind: FileKind) -> str | None:
    """Check one line's fields; returns the classification label (as a string) if any."""
    if kind == "chat":
        _check_chat(record["messages"])
        return None
    if kind == "completion":
        for key in ("prompt", "completion"):
            if not isinstance(record[key], str):
                raise ValueError(f"'{key}' must be a string")
        if not record["completion"]:
            raise ValueError("'completion' is empty: there is nothing to learn")
        return None
    if not isinstance(record["text"], str) or not record["text"]:
        raise ValueError("'text' must be a non-empty string")
    if "text_pair" in record and not isinstance(record["text_pair"], str):
        raise ValueError("'text_pair' must be a string")
    label = record["label"]
    if isinstance(label, bool) or not isinstance(label, str | int):
        raise ValueError(f"'label' must be a string or an integer, not {type(label).__name__}")
    if isinstance(label, str) and not label:
        raise ValueError("'label' is an empty string")
    return str(label)


def _lines(path: Path, max_line_bytes: int) -> Iterator[tuple[int, dict[str, Any] | None]]:
    """(1-based line number, parsed object or None for a blank line), one line in memory at a time."""
    with open(path, "rb") as handle:
        number = 0
        while True:
            raw = handle.readline(max_line_bytes + 1)
            if not raw:
                return
            number += 1
            if len(raw) > max_line_bytes and not raw.endswith(b"\n"):
                raise TrainingFileError(f"the line is longer than {max_line_bytes} bytes", number)
            if not raw.strip():
                yield number, None
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise TrainingFileError(f"not UTF-8 ({exc.reason} at byte {exc.start})", number) from None
            try:
                record = json.loads(text)
            except json.JSONDecodeError as exc:
                raise TrainingFileError(f"not valid JSON ({exc.msg} at column {exc.colno})", number) from None
            if not isinstance(record, dict):
                raise TrainingFileError(f"a line must be a JSON object, not {type(record).__name__}", number)
            yield number, record


def sorted_labels(labels: set[str], all_ints: bool) -> list[str]:
    """Label-id order: numeric when every label was an integer (so label 2 gets id 2 for 0..K-1),
    else alphabetical."""
    return sorted(labels, key=int) if all_ints else sorted(labels)


def _scan(path: Path, max_lines: int, max_line_bytes: int, max_labels: int) -> FileCheck:
    kind: FileKind | None = None
    first_line = 0
    count = 0
    labels: set[str] = set()
    all_ints = True
    for number, record in _lines(path, max_line_bytes):
        if record is None:
            continue
        try:
            line_kind = _kind_of(record)
            if kind is None:
                kind, first_line = line_kind, number
            elif line_kind != kind:
                raise ValueError(
                    f"a {line_kind} line in a {kind} file (line {first_line} is a {kind} line): "
                    "a file holds one kind of example"
                )
            label = _check_record(record, line_kind)
        except ValueError as exc:
            raise TrainingFileError(str(exc), number) from None
        count += 1
        if count > max_lines:
            raise TrainingFileError(f"the file holds more than {max_lines} examples", number)
        if label is not None:
            all_ints = all_ints and isinstance(record["label"], int)
            labels.add(label)
            if len(labels) > max_labels:
                raise TrainingFileError(f"more than {max_labels} distinct labels", number)
    if kind is None:
        raise TrainingFileError("the file holds no examples")
    if kind == "classification" and len(labels) < 2:
        raise TrainingFileError(
            f"a classification file needs at least two distinct labels; this one has only {sorted(labels)}"
        )
    return FileCheck(kind=kind, lines=count, labels=sorted_labels(labels, all_ints) if labels else [])


def validate_file(
    path: str | Path,
    max_lines: int = MAX_LINES,
    max_line_bytes: int = MAX_LINE_BYTES,
    max_labels: int = MAX_LABELS,
) -> FileCheck:
    """Check a JSONL training file line by line; never raises for a bad file (see ``FileCheck.error``)."""
    try:
        return _scan(Path(path), max_lines, max_line_bytes, max_labels)
    except TrainingFileError as exc:
        return FileCheck(error=str(exc), error_line=exc.line)


def iter_examples(path: str | Path, max_line_bytes: int = MAX_LINE_BYTES) -> Iterator[dict[str, Any]]:
    """The examples of a file ``validate_file`` accepted, one parsed line at a time."""
    for _, record in _lines(Path(path), max_line_bytes):
        if record is not None:
            yield record


def count_tokens(path: str | Path, tokenizer: Any, kind: FileKind) -> int:
    """Tokens a job trains on per epoch (before truncation), counted as training encodes them:
    chat rendered with the tokenizer's chat template, completion as prompt + completion + EOS,
    classification as the tokenizer's (text, text_pair) encoding. Streaming."""
    from llmaas.finetune.encode import encode_example

    return sum(len(encode_example(record, tokenizer, kind).input_ids) for record in iter_examples(path))
