"""``POST /v1/classify`` through Serve: a ``task: classify`` model from a local directory.

A Serve application ``clf`` (at ``/clf``) serves the tiny trained classifier
(``tests/models_fixtures.py``) and a generative model on the fake engine (no weights: it only has
to refuse classification). It runs beside the session's platform rather than in its catalog, so
the session's tests and setup stay as they are.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from llmaas.config.catalog import Catalog
from tests.models_fixtures import CLASSIFIER_LABELS, tiny_classifier_dir

APP = "clf"
CLF_CATALOG = """
app_name: clf
cache_dir: {cache}
router: {{num_cpus: 0.05}}
tokenizer: {{num_cpus: 0.05}}
models:
  - id: sentiment
    task: classify
    source: {{path: {classifier}}}
    batching: {{max_batch_size: 8, batch_wait_ms: 5}}
    resources: {{num_cpus: 0.1, torch_threads: 1}}
  - id: gen
    source: {{demo: tiny-gpt2}}
    engine: {{cls: "llmaas.engine.fake:FakeEngine"}}
    resources: {{num_cpus: 0.05}}
"""
TEXTS = ["I love this film", "terrible service", "the weather today"]


@pytest.fixture(scope="module")
def classifier_dir(model_cache: Path) -> Path:
    return tiny_classifier_dir(model_cache)


@pytest.fixture(scope="module")
def clf_url(base_url: str, model_cache: Path, classifier_dir: Path, gpt2_model_path: Path) -> Iterator[str]:
    from ray import serve

    from llmaas.deployments import build_from_catalog
    from llmaas.launch import wait_running

    catalog = Catalog.from_yaml(CLF_CATALOG.format(cache=model_cache, classifier=classifier_dir))
    serve.run(build_from_catalog(catalog), name=APP, route_prefix="/clf", blocking=False)
    wait_running(APP, timeout_s=300)
    yield f"{base_url}/clf"
    serve.delete(APP, _blocking=False)


def test_classify_answers_in_vllms_shape_with_the_models_probabilities(
    clf_url: str, classifier_dir: Path
) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    response = httpx.post(f"{clf_url}/v1/classify", json={"model": "sentiment", "input": TEXTS}, timeout=120)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "list" and body["model"] == "sentiment" and body["id"].startswith("classify-")
    assert [d["label"] for d in body["data"]] == ["positive", "negative", "neutral"]
    assert [d["index"] for d in body["data"]] == [0, 1, 2]
    assert all(d["num_classes"] == len(CLASSIFIER_LABELS) for d in body["data"])
    tokenizer = AutoTokenizer.from_pretrained(classifier_dir)
    model = AutoModelForSequenceClassification.from_pretrained(classifier_dir).eval()
    encoded = tokenizer(TEXTS)["input_ids"]
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] == sum(map(len, encoded))
    for ids, data in zip(encoded, body["data"], strict=True):
        with torch.no_grad():
            expected = model(input_ids=torch.tensor([ids])).logits.softmax(-1)[0].tolist()
        assert data["probs"] == pytest.approx(expected, abs=1e-4)


def test_wrong_task_unknown_model_and_over_long_input_are_refused(clf_url: str) -> None:
    wrong = httpx.post(f"{clf_url}/v1/classify", json={"model": "gen", "input": "hi"}, timeout=60)
    assert wrong.status_code == 400 and wrong.json()["error"]["code"] == "wrong_task", wrong.text
    assert wrong.json()["error"]["param"] == "model"
    unknown = httpx.post(f"{clf_url}/v1/classify", json={"model": "nope", "input": "hi"}, timeout=60)
    assert unknown.status_code == 404, unknown.text
    long = httpx.post(
        f"{clf_url}/v1/classify", json={"model": "sentiment", "input": ["ok", "word " * 80]}, timeout=60
    )
    assert long.status_code == 400 and long.json()["error"]["param"] == "input[1]", long.text


def test_models_openapi_and_the_handle_client_know_the_route(clf_url: str) -> None:
    from llmaas.client import LLMClient

    listed = httpx.get(f"{clf_url}/v1/models", timeout=60).json()
    assert {m["id"]: m["task"] for m in listed["data"]} == {"sentiment": "classify", "gen": "generate"}
    document = httpx.get(f"{clf_url}/openapi.json", timeout=60).json()
    assert "/v1/classify" in document["paths"]
    reply = LLMClient(APP).classify("sentiment", ["what a wonderful day", "the worst"])
    assert [d.label for d in reply.data] == ["positive", "negative"]
