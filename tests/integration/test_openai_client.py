"""The official openai client, unchanged, against the platform."""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
import openai
import pytest
from sentence_transformers import SentenceTransformer


@pytest.fixture(scope="module")
def client(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=120)


def test_models_list(client):
    models = {m.id: m for m in client.models.list()}
    assert set(models) == {"tiny-llama", "tiny-llama-tp2", "tiny-gpt2", "minilm", "tiny-gguf", "smollm2"}
    assert models["minilm"].model_extra["task"] == "embed"
    assert models["tiny-llama"].model_extra["task"] == "generate"


def test_completion(client):
    result = client.completions.create(
        model="tiny-llama", prompt="The capital of France is", max_tokens=8, temperature=0
    )
    assert result.choices[0].text.strip().startswith("Paris")
    assert result.usage.completion_tokens <= 8


def test_chat(client):
    result = client.chat.completions.create(
        model="tiny-llama",
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        temperature=0,
    )
    assert result.choices[0].message.role == "assistant"
    assert "Paris" in result.choices[0].message.content
    assert result.choices[0].finish_reason == "stop"


def test_streaming_chat(client):
    stream = client.chat.completions.create(
        model="tiny-llama",
        messages=[{"role": "user", "content": "Hello"}],
        stream=True,
        stream_options={"include_usage": True},
        temperature=0,
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.startswith("Hello")
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 1


def test_embeddings_match_sentence_transformers(client, minilm_path: Path):
    texts = ["The cat sits on the mat.", "Ray Serve scales model replicas.", "a"]
    reference = SentenceTransformer(str(minilm_path), device="cpu").encode(texts, normalize_embeddings=True)
    for encoding in (None, "float", "base64"):  # None: the client asks for base64 and decodes it itself
        kwargs = {"encoding_format": encoding} if encoding else {}
        result = client.embeddings.create(model="minilm", input=texts, **kwargs)
        rows = [
            np.frombuffer(base64.b64decode(d.embedding), dtype="<f4")
            if isinstance(d.embedding, str)
            else d.embedding
            for d in result.data
        ]
        assert isinstance(result.data[0].embedding, str) == (encoding == "base64")
        got = np.array(rows, dtype=np.float64)
        assert got.shape == (3, 384)
        cosine = (got * reference).sum(axis=1) / (
            np.linalg.norm(got, axis=1) * np.linalg.norm(reference, axis=1)
        )
        assert cosine.min() >= 0.999, cosine
    single = client.embeddings.create(model="minilm", input="The cat sits on the mat.")
    assert len(single.data) == 1
    assert single.usage.prompt_tokens > 0


def test_error_types(client):
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="gpt-404", messages=[{"role": "user", "content": "x"}])
    assert missing.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as bad:
        client.completions.create(model="tiny-llama", prompt="x", temperature=9)
    assert bad.value.param == "temperature"
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model="tiny-llama", input="x")
