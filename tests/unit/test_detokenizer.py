from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from llmaas.engine.detokenizer import IncrementalDetokenizer


@pytest.fixture(scope="module")
def tokenizer(chat_model_path: Path):
    return AutoTokenizer.from_pretrained(chat_model_path)


def _run(tokenizer, text: str, stop: tuple[str, ...] = ()) -> tuple[list[str], IncrementalDetokenizer]:
    detok = IncrementalDetokenizer(tokenizer, stop)
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
