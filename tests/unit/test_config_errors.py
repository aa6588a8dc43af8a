"""Operators' typos get a suggestion, in the CLI and in the HTTP API."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from llmaas.config.base import describe_errors
from llmaas.config.catalog import Catalog
from llmaas.openai.errors import from_validation_error
from llmaas.openai.protocol import ChatCompletionRequest


def test_catalog_typo_names_the_intended_field():
    with pytest.raises(ValidationError) as exc:
        Catalog.from_yaml(
            "models:\n  - id: x\n    source: {demo: tiny-gpt2, pth: /m}\n    tensor_paralel_size: 2\n"
        )
    lines = describe_errors(exc.value, Catalog)
    assert any(
        line.startswith("models.0.tensor_paralel_size: unknown field; did you mean 'tensor_parallel_size'")
        for line in lines
    )
    assert any(line.startswith("models.0.source.pth: unknown field; did you mean 'path'") for line in lines)


def test_unrelated_unknown_field_lists_what_is_allowed():
    with pytest.raises(ValidationError) as exc:
        Catalog.from_yaml("models:\n  - id: x\n    source: {demo: tiny-gpt2}\nzzzz: 1\n")
    (line,) = describe_errors(exc.value, Catalog)
    assert line.startswith("zzzz: unknown field; allowed here: app_name, models")


def test_api_typo_suggests_the_parameter():
    with pytest.raises(ValidationError) as exc:
        ChatCompletionRequest.model_validate(
            {"model": "m", "messages": [{"role": "user", "content": "x"}], "max_token": 5}
        )
    error = from_validation_error(exc.value, ChatCompletionRequest)
    assert error.param == "max_token"
    assert "did you mean 'max_tokens'" in error.message


def batching_catalog(batching: str) -> Catalog:
    return Catalog.from_yaml(
        f"models:\n  - id: x\n    source: {{demo: tiny-gpt2}}\n    batching: {batching}\n"
    )


@pytest.mark.parametrize("value", ["fast", "0", "65", "true"])
def test_stream_interval_is_auto_or_a_token_count_in_one_message(value: str):
    with pytest.raises(ValidationError) as exc:
        batching_catalog(f"{{stream_interval: {value}}}")
    (line,) = describe_errors(exc.value, Catalog)
    assert line.startswith("models.0.batching.stream_interval: 'auto' or a number of tokens from 1 to 64")
    for ok in ("auto", "1", "64"):
        assert str(batching_catalog(f"{{stream_interval: {ok}}}").models[0].batching.stream_interval) == ok
