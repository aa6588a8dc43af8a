"""lm-evaluation-harness, unchanged, against the platform: its `local-completions` model scores a
multiple-choice task through `/v1/completions` (`echo`, `logprobs: 1`, one token to generate, the
prompts as token ids or as text), and every loglikelihood it gets is transformers' on the same weights.

The task (tests/fixtures/lm_eval: a YAML and 16 questions in JSONL) is read from disk, never from a
hub; the model is the default chat model, SmolLM2-135M-Instruct (`smollm2` in the test catalog),
and lm_eval tokenizes with its prepared Hugging Face directory, as a user points it at the model's
tokenizer.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import yaml

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "lm_eval"
TASK = "llmaas_facts"
QUESTIONS = 16
CHOICES = 4


def _task_config(cache_dir: Path) -> dict[str, Any]:
    """The fixture task's YAML, with its data file made absolute (datasets reads a relative one from
    the working directory) and the datasets cache kept under the test's temporary directory."""
    config = yaml.safe_load((FIXTURES / "facts.yaml").read_text())
    config["dataset_kwargs"] = {
        "data_files": {"test": str(FIXTURES / "facts.jsonl")},
        "cache_dir": str(cache_dir),
    }
    return config


@pytest.fixture(scope="module")
def transformers_loglikelihoods(smollm2_model_path: Path):
    """Score (context, continuation) pairs with transformers on the model directory the platform loads.

    The split is lm_eval's for a causal model: encode the context and the whole text, the
    continuation is the whole text's tokens past the context's. Its loglikelihood is the sum of the
    log-softmax of each continuation token given everything before it; greedy is whether each was
    the argmax. float32 on CPU, as the platform runs it.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_model_path)
    model = AutoModelForCausalLM.from_pretrained(smollm2_model_path, dtype=torch.float32).eval()

    scored: dict[tuple[str, str], tuple[float, bool]] = {}  # both parametrizations ask the same pairs

    def score(pairs: list[tuple[str, str]]) -> list[tuple[float, bool]]:
        for context, continuation in pairs:
            if (context, continuation) in scored:
                continue
            whole = tokenizer(context + continuation, add_special_tokens=False).input_ids
            start = len(tokenizer(context, add_special_tokens=False).input_ids)
            with torch.no_grad():
                logits = model(torch.tensor([whole])).logits[0]
            rows = torch.log_softmax(logits.float(), dim=-1)[start - 1 : -1]
            targets = torch.tensor(whole[start:])
            total = rows.gather(1, targets[:, None]).sum().item()
            scored[context, continuation] = (total, bool((rows.argmax(dim=-1) == targets).all()))
        return [scored[pair] for pair in pairs]

    return score


@pytest.mark.parametrize("tokenized_requests", [True, False], ids=["token-ids", "text"])
def test_lm_eval_multiple_choice_matches_transformers(
    base_url: str,
    smollm2_model_path: Path,
    transformers_loglikelihoods,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    tokenized_requests: bool,
):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    import lm_eval  # type: ignore[import-untyped]
    from lm_eval.tasks import TaskManager  # type: ignore[import-untyped]

    results = lm_eval.simple_evaluate(
        model="local-completions",
        model_args={
            "model": "smollm2",
            "base_url": f"{base_url}/v1/completions",
            "tokenizer_backend": "huggingface",
            "tokenizer": str(smollm2_model_path),
            "tokenized_requests": tokenized_requests,
            "batch_size": 4,  # a list of prompts per request
            "max_length": 512,  # the catalog's max_context_length
            "max_retries": 1,  # an error fails the test instead of being retried
        },
        tasks=[_task_config(tmp_path / "datasets")],
        task_manager=TaskManager(include_defaults=False),
        log_samples=True,
        bootstrap_iters=0,
    )
    assert results is not None
    metrics = results["results"][TASK]
    assert metrics["sample_len"] == QUESTIONS
    # Greedy scoring is deterministic: SmolLM2-135M gets 12 of these 16 easy questions (chance: 4).
    assert metrics["acc,none"] >= 0.5, metrics

    samples = results["samples"][TASK]
    pairs = [tuple(args) for sample in samples for args in sample["arguments"]]
    served = [sample_resp[0] for sample in samples for sample_resp in sample["resps"]]
    assert len(pairs) == len(served) == QUESTIONS * CHOICES
    expected = transformers_loglikelihoods(pairs)
    worst = max(abs(got[0] - want[0]) for got, want in zip(served, expected, strict=True))
    for (context, continuation), got, want in zip(pairs, served, expected, strict=True):
        assert math.isclose(got[0], want[0], rel_tol=1e-4, abs_tol=1e-3), (
            f"{context!r} + {continuation!r}: llmaas {got[0]}, transformers {want[0]} (worst {worst})"
        )
        assert got[1] == want[1], f"{context!r} + {continuation!r}: greedy {got[1]}, transformers {want[1]}"
