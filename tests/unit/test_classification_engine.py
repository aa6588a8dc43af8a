"""The classification engine on the tiny trained classifier (tests/models_fixtures.py): probabilities,
labels, batching across calls, and the inputs it refuses."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from llmaas.config.catalog import ModelSpec
from llmaas.engine import UnsupportedTask, default_engine_cls
from llmaas.engine.classification import (
    ClassificationEngine,
    InvalidInput,
    activation_of,
    check_inputs,
    labels_of,
    plan_batches,
)
from llmaas.engine.embedding import EmbeddingEngine
from llmaas.engine.errors import EngineError, EngineNotReady
from llmaas.openai.errors import known_error
from llmaas.preflight import check_model
from tests.models_fixtures import CLASSIFIER_LABELS, tiny_classifier_dir

TEXTS = ["I love this film", "terrible service", "the weather today", "what a wonderful day"]
EXPECTED = ["positive", "negative", "neutral", "positive"]


@pytest.fixture(scope="module")
def classifier_dir(model_cache: Path) -> Path:
    return tiny_classifier_dir(model_cache)


def _spec(path: Path, **batching: Any) -> ModelSpec:
    return ModelSpec.model_validate(
        {"id": "clf", "task": "classify", "source": {"path": str(path)}, "batching": batching}
    )


@pytest.fixture(scope="module")
def engine(classifier_dir: Path) -> ClassificationEngine:
    engine = ClassificationEngine(_spec(classifier_dir, max_batch_size=4, batch_wait_ms=5), classifier_dir)
    asyncio.run(engine.start())
    return engine


@pytest.fixture(scope="module")
def encode(classifier_dir: Path) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(classifier_dir)
    return lambda texts: [list(ids) for ids in tokenizer(texts)["input_ids"]]


def test_the_task_picks_the_engine(classifier_dir: Path):
    assert default_engine_cls(_spec(classifier_dir)) is ClassificationEngine


def test_info_names_the_labels_from_the_config(engine: ClassificationEngine):
    info = engine.info
    assert info.task == "classify"
    assert info.labels == list(CLASSIFIER_LABELS)
    assert info.max_context_length == 64  # the fixture's position table
    assert info.architecture == "bert"


def test_probabilities_sum_to_one_and_match_transformers(
    engine: ClassificationEngine, classifier_dir: Path, encode: Any
):
    import torch
    from transformers import AutoModelForSequenceClassification

    probs = asyncio.run(engine.classify(encode(TEXTS)))
    assert [len(row) for row in probs] == [3] * len(TEXTS)
    for row in probs:
        assert sum(row) == pytest.approx(1.0, abs=1e-5)
    labels = [CLASSIFIER_LABELS[max(range(3), key=row.__getitem__)] for row in probs]
    assert labels == EXPECTED
    model = AutoModelForSequenceClassification.from_pretrained(classifier_dir).eval()
    for ids, row in zip(encode(TEXTS), probs, strict=True):
        with torch.no_grad():
            expected = model(input_ids=torch.tensor([ids])).logits.softmax(-1)[0].tolist()
        assert row == pytest.approx(expected, abs=1e-5)


def test_concurrent_calls_share_passes_and_padding_changes_nothing(engine: ClassificationEngine, encode: Any):
    ids = encode(TEXTS)
    alone = [asyncio.run(engine.classify([row]))[0] for row in ids]
    steps = engine.health().steps

    async def together() -> list[list[list[float]]]:
        return await asyncio.gather(*(engine.classify([row]) for row in ids))

    shared = asyncio.run(together())
    assert engine.health().steps - steps == 1  # four calls, one forward pass (max_batch_size 4)
    assert engine.health().peak_batch == 4
    for one, batched in zip(alone, shared, strict=True):
        assert batched[0] == pytest.approx(one, abs=1e-5)


def test_a_long_list_runs_in_passes_of_max_batch_size(engine: ClassificationEngine, encode: Any):
    ids = encode(TEXTS) * 3  # 12 rows, max_batch_size 4
    steps = engine.health().steps
    probs = asyncio.run(engine.classify(ids))
    assert engine.health().steps - steps == 3
    # NOTE: equal to float32 rounding, not bit for bit: BLAS kernels may take another path for
    # another buffer's alignment (seen here: 5e-9 apart); rows mixed between passes differ by far more
    for later in (probs[4:8], probs[8:]):
        for row, first in zip(later, probs[:4], strict=True):
            assert row == pytest.approx(first, abs=1e-6)
    assert asyncio.run(engine.classify([])) == []


def test_plan_batches_sorts_by_length_within_rows_and_tokens():
    assert plan_batches([5, 1, 3, 2], max_rows=2, max_tokens=100) == [[1, 3], [2, 0]]
    # the padded width is the longest row's: 3 rows of width 4 are 12 tokens, over 10
    assert plan_batches([4, 4, 4, 1], max_rows=8, max_tokens=10) == [[3, 0], [1, 2]]
    assert plan_batches([50], max_rows=8, max_tokens=10) == [[0]]  # too long for any pass: alone
    assert plan_batches([], max_rows=8, max_tokens=10) == []


def test_inputs_over_the_limit_are_refused_with_their_index(engine: ClassificationEngine, encode: Any):
    too_long = [101] + [2000] * 70 + [102]
    with pytest.raises(InvalidInput) as caught:
        asyncio.run(engine.classify([encode(["fine"])[0], too_long]))
    assert caught.value.param == "input[1]"
    assert caught.value.code == "context_length_exceeded"
    assert "64" in caught.value.message and "72" in caught.value.message
    error = known_error(caught.value)  # what a client sees: a 400 naming the input
    assert error is not None and (error.status, error.param) == (400, "input[1]")


def test_empty_and_out_of_vocabulary_inputs_are_refused():
    with pytest.raises(InvalidInput, match=r"input\[0\] is empty"):
        check_inputs([[]], 8, 10)
    with pytest.raises(InvalidInput, match=r"input\[2\] holds token ids outside the vocabulary \(0..9\)"):
        check_inputs([[1], [2], [3, 10]], 8, 10)
    check_inputs([[0, 9]], 8, 10)


def test_other_tasks_do_not_classify(classifier_dir: Path):
    spec = ModelSpec.model_validate({"id": "emb", "task": "embed", "source": {"demo": "all-minilm-l6-v2"}})
    with pytest.raises(UnsupportedTask, match="does not classify text"):
        asyncio.run(EmbeddingEngine(spec, classifier_dir).classify([[1]]))


def test_a_model_still_loading_is_not_ready(classifier_dir: Path):
    with pytest.raises(EngineNotReady):
        asyncio.run(ClassificationEngine(_spec(classifier_dir), classifier_dir).classify([[1]]))


def test_a_base_encoder_without_a_trained_head_is_refused(minilm_path: Path):
    engine = ClassificationEngine(_spec(minilm_path), minilm_path)
    with pytest.raises(EngineError, match=r"no trained classification head \(classifier.bias"):
        asyncio.run(engine.start())


def test_labels_and_activation_from_the_config():
    config = SimpleNamespace(num_labels=3, id2label={0: "a", "2": "c"}, problem_type=None)
    assert labels_of(config) == ["a", "LABEL_1", "c"]
    assert activation_of(config) == "softmax"
    multi_label = SimpleNamespace(num_labels=3, problem_type="multi_label_classification")
    assert activation_of(multi_label) == "sigmoid"
    assert activation_of(SimpleNamespace(num_labels=1, problem_type=None)) == "sigmoid"


def test_preflight_checks_a_classifier_source(classifier_dir: Path, minilm_path: Path):
    assert check_model(_spec(classifier_dir)) == []
    [problem] = check_model(_spec(minilm_path))
    assert "BertModel, not a sequence classifier" in problem
    demo = ModelSpec.model_validate({"id": "c", "task": "classify", "source": {"demo": "all-minilm-l6-v2"}})
    assert "no classification head" in check_model(demo)[0]
    generative = ModelSpec.model_validate({"id": "c", "task": "classify", "source": {"demo": "tiny-gpt2"}})
    assert "is generative; set task: generate" in check_model(generative)[0]
