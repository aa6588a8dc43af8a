"""Real checkpoints through the whole platform: a GGUF source, and the default chat model (SmolLM2)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from llmaas import LLMClient

PROMPTS = ["The capital of France is", "Once upon a time", "One, two, three,"]
QUESTIONS = {
    "What is the capital of France?": "Paris",
    "How many days are in a week?": "7",
    "What is 2 + 2?": "4",
}


def _greedy(model, prompt_ids: list[int], max_new: int) -> list[int]:
    with torch.inference_mode():
        out = model.generate(
            torch.tensor([prompt_ids]), max_new_tokens=max_new, do_sample=False, eos_token_id=None
        )
    return out[0, len(prompt_ids) :].tolist()


@pytest.mark.parametrize("prompt", PROMPTS)
def test_a_gguf_source_answers_as_transformers_does_on_the_same_file(
    http: httpx.Client, tiny_gguf_file: Path, prompt
):
    # transformers' own GGUF loader on the file the catalog names (dequantized to float32)
    tokenizer = AutoTokenizer.from_pretrained(tiny_gguf_file.parent, gguf_file=tiny_gguf_file.name)
    model = AutoModelForCausalLM.from_pretrained(
        tiny_gguf_file.parent, gguf_file=tiny_gguf_file.name, dtype=torch.float32
    ).eval()
    prompt_ids = tokenizer.encode(prompt)
    expected = tokenizer.decode(_greedy(model, prompt_ids, 16), skip_special_tokens=True)
    body = {"model": "tiny-gguf", "prompt": prompt, "max_tokens": 16, "temperature": 0, "ignore_eos": True}
    response = http.post("/v1/completions", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["prompt_tokens"] == len(prompt_ids)
    assert response.json()["choices"][0]["text"] == expected


def test_the_default_chat_model_answers_sensibly_over_http_and_handles(
    http: httpx.Client, smollm2_model_path: Path
):
    tokenizer = AutoTokenizer.from_pretrained(smollm2_model_path)
    model = AutoModelForCausalLM.from_pretrained(smollm2_model_path, dtype=torch.float32).eval()
    client = LLMClient("llmaas")
    for question, answer in QUESTIONS.items():
        messages = [{"role": "user", "content": question}]
        response = http.post("/v1/chat/completions", json={"model": "smollm2", "messages": messages})
        assert response.status_code == 200, response.text
        text = response.json()["choices"][0]["message"]["content"]
        assert answer in text, (question, text)
        # the same greedy tokens as transformers on the prepared directory (the engine is exact)
        prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        prompt_ids = tokenizer.encode(prompt, add_special_tokens=False)
        with torch.inference_mode():
            out = model.generate(torch.tensor([prompt_ids]), max_new_tokens=24, do_sample=False)
        assert text == tokenizer.decode(out[0, len(prompt_ids) :], skip_special_tokens=True)
        assert client.chat("smollm2", messages).choices[0].message.content == text
