from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from llmaas.engine.detokenizer import IncrementalDetokenizer


@pytest.fixture(scope="module")
def tokenizer(chat_model_path: Path):
    return AutoTokenizer.from_pretrained(chat_model_path)


def _run(
    tokenizer, text: str, stop: tuple[str, ...] = (), min_tokens: int = 0
) -> tuple[list[str], IncrementalDetokenizer]:
    detok = IncrementalDetokenizer(tokenizer, stop, min_tokens)
    deltas = []
    for token in tokenizer.encode(text, add_special_tokens=False):
        deltas.append(detok.push(token))
        if detok.stopped:
            break
    deltas.append(detok.flush())
    return deltas, detok


def test_deltas_join_to_the_decoded_text(tokenizer):
    text = "The capital of France is Paris. Ünïcödé → 東京 🙂 done."
    deltas, detok = _run(tokenizer, text)
    assert "".join(deltas) == text
    assert detok.text == text
    assert all("\ufffd" not in d for d in deltas)  # multi-byte characters are never split


def test_stop_string_spanning_tokens_is_cut_and_never_emitted(tokenizer):
    text = "The capital of France is Paris. The capital of Germany is Berlin."
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert len(tokenizer.encode("Germany is", add_special_tokens=False)) > 1
    deltas, detok = _run(tokenizer, text, stop=("many is",))
    assert detok.stopped
    assert "".join(deltas) == "The capital of France is Paris. The capital of Ger"
    assert all("many" not in d for d in deltas)
    assert len(ids) > 0


def test_held_back_prefix_is_released_when_it_does_not_complete(tokenizer):
    deltas, detok = _run(tokenizer, "Paris. Paris. Pa", stop=("Paris!",))
    assert not detok.stopped
    assert "".join(deltas) == "Paris. Paris. Pa"
    # the trailing "Pa" could start "Paris!", so it only came out at flush
    assert deltas[-1].endswith("Pa")


def test_earliest_of_several_stops_wins(tokenizer):
    deltas, detok = _run(tokenizer, "one two three four", stop=("four", "two"))
    assert detok.stopped and "".join(deltas) == "one "


def _tokens_before(tokenizer, text: str, part: str) -> int:
    """How many tokens of ``text`` come before the one where ``part`` (its first occurrence) ends."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    end = text.index(part) + len(part)
    return next(i for i in range(len(ids)) if len(tokenizer.decode(ids[: i + 1])) >= end)


def test_min_tokens_holds_back_stop_strings_that_end_before_it(tokenizer):
    text = "stop here. go on. stop here. the end"
    first = _tokens_before(tokenizer, text, "stop")  # the first "stop" ends in token number first + 1
    deltas, detok = _run(tokenizer, text, stop=("stop",), min_tokens=first + 2)
    assert detok.stopped
    assert "".join(deltas) == "stop here. go on. "  # the first one was plain text; the second stops
    deltas, detok = _run(tokenizer, text, stop=("stop",), min_tokens=first + 1)
    assert detok.stopped and "".join(deltas) == ""  # the min_tokens-th token's own stop string counts


def test_a_stop_string_spanning_the_min_tokens_boundary_counts(tokenizer):
    text = "The capital of Germany is Berlin."
    assert len(tokenizer.encode("Germany", add_special_tokens=False)) > 1
    ends = _tokens_before(tokenizer, text, "Germany")
    deltas, detok = _run(tokenizer, text, stop=("Germany",), min_tokens=ends + 1)
    assert detok.stopped and "".join(deltas) == "The capital of "
    deltas, detok = _run(tokenizer, text, stop=("Germany",), min_tokens=ends + 2)
    assert not detok.stopped and "".join(deltas) == text
