"""Training files: the three kinds accepted, every fault named by its line, files read as a stream."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from llmaas.finetune.data import FileCheck, TrainingFileError, count_tokens, iter_examples, validate_file
from llmaas.finetune.encode import encode_example

CHAT: dict[str, Any] = {
    "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
}
COMPLETION: dict[str, Any] = {"prompt": "2 + 2 =", "completion": " 4"}


def _write(path: Path, lines: list[Any]) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def _check(tmp_path: Path, lines: list[Any], **limits: int) -> FileCheck:
    return validate_file(_write(tmp_path / "train.jsonl", lines), **limits)


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    from llmaas.models.demo import build_tokenizer

    return build_tokenizer()


def test_chat_file(tmp_path):
    system = {"role": "system", "content": "Be brief."}
    lines = [
        CHAT,
        {"messages": [system, *CHAT["messages"], {"role": "user", "content": "Bye", "name": "bob"}]},
    ]
    check = _check(tmp_path, lines)
    assert check == FileCheck(kind="chat", lines=2)
    assert check.ok


def test_completion_file_skips_blank_lines(tmp_path):
    check = _check(tmp_path, [COMPLETION, "", "   ", COMPLETION])
    assert (check.kind, check.lines, check.error) == ("completion", 2, None)


def test_classification_file_lists_labels(tmp_path):
    lines = [
        {"text": "great film", "label": "positive"},
        {"text": "awful", "label": "negative", "text_pair": "a review"},
        {"text": "fine", "label": "neutral"},
        {"text": "superb", "label": "positive"},
    ]
    check = _check(tmp_path, lines)
    assert (check.kind, check.lines, check.labels) == (
        "classification",
        4,
        ["negative", "neutral", "positive"],
    )


def test_integer_labels_keep_their_numeric_order(tmp_path):
    check = _check(tmp_path, [{"text": f"t{i}", "label": label} for i, label in enumerate([10, 2, 0, 2])])
    assert check.labels == ["0", "2", "10"]


@pytest.mark.parametrize(
    ("lines", "line", "reason"),
    [
        ([CHAT, "{not json"], 2, "not valid JSON"),
        ([CHAT, "[1, 2]"], 2, "must be a JSON object"),
        ([{"input": "x"}], 1, "a line must be a chat line"),
        ([CHAT, COMPLETION], 2, "a completion line in a chat file (line 1"),
        ([{"messages": [{"role": "user", "content": "Hi"}]}], 1, "no assistant message"),
        ([{"messages": [{"role": "assistant", "content": "x", "weight": 0}]}], 1, "no assistant message"),
        ([{"messages": []}], 1, "non-empty list"),
        ([{"messages": [{"role": "tool", "content": "x"}]}], 1, "messages[0].role is 'tool'"),
        (
            [{"messages": [{"role": "assistant", "content": ["x"]}]}],
            1,
            "messages[0].content must be a string",
        ),
        ([{"messages": [{"role": "user", "content": "x", "weight": 1}, CHAT["messages"][1]]}], 1, "weight"),
        ([{"messages": [{"role": "assistant", "content": "x", "weight": 2}]}], 1, "must be 0 or 1"),
        ([{"messages": [{"role": "assistant", "content": "x", "tool_calls": []}]}], 1, "unsupported key"),
        ([{**CHAT, "tools": []}], 1, "unexpected key(s) ['tools']"),
        ([COMPLETION, {"prompt": "x", "completion": ""}], 2, "'completion' is empty"),
        ([{"prompt": 1, "completion": "x"}], 1, "'prompt' must be a string"),
        ([{"text": "a", "label": True}], 1, "'label' must be a string or an integer"),
        ([{"text": "a", "label": 1.5}], 1, "'label' must be a string or an integer"),
        ([{"text": "", "label": "x"}], 1, "'text' must be a non-empty string"),
        ([{"text": "a", "label": "x", "text_pair": 3}], 1, "'text_pair' must be a string"),
    ],
)
def test_a_bad_line_is_named_with_its_reason(tmp_path, lines, line, reason):
    check = _check(tmp_path, lines)
    assert not check.ok
    assert check.kind is None
    assert check.error_line == line
    assert check.error is not None
    assert check.error.startswith(f"line {line}: ")
    assert reason in check.error


def test_line_numbers_count_blank_lines(tmp_path):
    assert _check(tmp_path, [CHAT, "", "oops"]).error_line == 3


@pytest.mark.parametrize(
    ("lines", "reason"),
    [
        ([], "the file holds no examples"),
        (["", ""], "the file holds no examples"),
        ([{"text": "a", "label": "x"}, {"text": "b", "label": "x"}], "at least two distinct labels"),
    ],
)
def test_whole_file_faults(tmp_path, lines, reason):
    check = _check(tmp_path, lines)
    assert check.error_line is None
    assert check.error is not None
    assert reason in check.error


def test_limits_on_lines_and_labels(tmp_path):
    assert _check(tmp_path, [CHAT] * 4, max_lines=3).error == "line 4: the file holds more than 3 examples"
    labels = [{"text": "t", "label": str(i)} for i in range(5)]
    assert _check(tmp_path, labels, max_labels=4).error == "line 5: more than 4 distinct labels"


def test_not_utf8(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(json.dumps(CHAT).encode() + b"\n" + b'{"prompt": "\xff", "completion": "x"}\n')
    check = validate_file(path)
    assert check.error_line == 2
    assert "not UTF-8" in (check.error or "")


def test_a_long_line_is_refused_without_reading_it_whole(tmp_path):
    path = tmp_path / "long.jsonl"
    with open(path, "w") as handle:
        handle.write(json.dumps(CHAT) + "\n")
        handle.write(json.dumps({"prompt": "x" * (16 << 20), "completion": "y"}) + "\n")
    tracemalloc.start()
    try:
        check = validate_file(path, max_line_bytes=1 << 20)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert check.error == "line 2: the line is longer than 1048576 bytes"
    assert peak < 4 << 20  # a 16 MiB line, never in memory


def test_memory_stays_flat_on_a_big_file(tmp_path):
    path = _write(tmp_path / "big.jsonl", [CHAT] * 50_000)  # about 4 MB
    tracemalloc.start()
    try:
        check = validate_file(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (check.kind, check.lines) == ("chat", 50_000)
    assert peak < 1 << 20


def test_a_line_exactly_at_the_limit_passes(tmp_path):
    line = json.dumps(COMPLETION)
    path = tmp_path / "edge.jsonl"
    path.write_text(line + "\n" + line)  # the last line without a newline
    assert validate_file(path, max_line_bytes=len(line)).lines == 2
    assert validate_file(path, max_line_bytes=len(line) - 1).error_line == 1


def test_training_file_error_pickles():
    import pickle

    error = pickle.loads(pickle.dumps(TrainingFileError("bad", 3)))
    assert (str(error), error.line, error.reason) == ("line 3: bad", 3, "bad")


def test_iter_examples_yields_the_lines(tmp_path):
    path = _write(tmp_path / "f.jsonl", [COMPLETION, "", CHAT])
    assert list(iter_examples(path)) == [COMPLETION, CHAT]


def test_count_tokens_counts_as_training_encodes(tmp_path, tokenizer):
    chat = _write(tmp_path / "chat.jsonl", [CHAT, CHAT])
    rendered = tokenizer.apply_chat_template(CHAT["messages"], tokenize=False)
    assert count_tokens(chat, tokenizer, "chat") == 2 * len(
        tokenizer(rendered, add_special_tokens=False).input_ids
    )
    completion = _write(tmp_path / "completion.jsonl", [COMPLETION])
    expected = len(tokenizer(COMPLETION["prompt"] + COMPLETION["completion"]).input_ids) + 1  # + EOS
    assert count_tokens(completion, tokenizer, "completion") == expected


def test_chat_learns_only_assistant_turns(tokenizer):
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello there", "weight": 0},
        {"role": "user", "content": "Name a color"},
        {"role": "assistant", "content": "blue"},
    ]
    encoded = encode_example({"messages": messages}, tokenizer, "chat")
    assert encoded.masked
    assert encoded.labels is not None
    learned = tokenizer.decode([t for t in encoded.labels if t != -100])
    assert learned.strip() == "blue<|im_end|>"
    assert tokenizer.decode(encoded.input_ids) == tokenizer.apply_chat_template(
        [{"role": m["role"], "content": m["content"]} for m in messages], tokenize=False
    )


def test_completion_learns_the_completion_and_eos(tokenizer):
    encoded = encode_example({"prompt": "The sky is", "completion": " blue"}, tokenizer, "completion")
    assert encoded.labels is not None
    assert tokenizer.decode([t for t in encoded.labels if t != -100]) == " blue<|im_end|>"
    assert encoded.truncated(3).input_ids == encoded.input_ids[:3]


def test_a_template_that_cannot_be_split_learns_everything(tokenizer):
    class Reversed:  # renders the last message first: no conversation prefix is a prefix of the whole
        is_fast = True

        def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=False):
            return "|".join(m["content"] for m in reversed(messages)) + (
                "|>" if add_generation_prompt else ""
            )

        def __call__(self, text, **kwargs):
            return tokenizer(text, **kwargs)

    encoded = encode_example(CHAT, Reversed(), "chat")
    assert not encoded.masked
    assert encoded.labels == encoded.input_ids
