"""Structured output through the DeepSpeed engine (TP=1, no Ray, the tiny chat model)."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import statistics
import time
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from transformers import AutoTokenizer

from llmaas.config.catalog import ModelSpec
from llmaas.engine.deepspeed_engine import DeepSpeedEngine
from llmaas.engine.errors import InvalidStructuredOutput
from llmaas.engine.types import FinishReason, GenerationRequest, SamplingParams, StructuredOutput

SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 12},
        "population": {"type": "integer", "minimum": 0, "maximum": 99999999},
        "kind": {"enum": ["capital", "port", "village"]},
        "sights": {"type": "array", "items": {"type": "string", "maxLength": 8}, "maxItems": 3},
    },
    "required": ["city", "population", "kind", "sights"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def engine(chat_model_path: Path):
    spec = ModelSpec.model_validate(
        {
            "id": "t",
            "source": {"demo": "tiny-llama-chat"},
            "batching": {"max_batch_size": 8, "batch_wait_ms": 50},
        }
    )
    eng = DeepSpeedEngine(spec, chat_model_path)
    loop = asyncio.new_event_loop()
    loop.run_until_complete(eng.start())
    yield eng, loop, AutoTokenizer.from_pretrained(chat_model_path)
    loop.run_until_complete(eng.shutdown())
    loop.close()


async def generate(eng: DeepSpeedEngine, prompt: list[int], rid: str = "r", **sampling: Any):
    """(token ids, text, finish reason, error) of one request."""
    request = GenerationRequest(request_id=rid, prompt_token_ids=prompt, sampling=SamplingParams(**sampling))
    ids: list[int] = []
    text, reason, error = "", None, None
    async for chunk in eng.generate(request):
        ids.extend(chunk.token_ids)
        text += chunk.text
        reason, error = chunk.finish_reason, chunk.error
    return ids, text, reason, error


def json_spec(schema: dict[str, Any] | None = None, **fields: Any) -> StructuredOutput:
    return StructuredOutput(kind="json", json_schema=None if schema is None else json.dumps(schema), **fields)


def test_constrained_output_is_valid_and_ends_with_stop(engine):
    eng, loop, tokenizer = engine
    for prompt in ("Describe Paris as JSON.", "Hello", "The capital of Japan is"):
        _, text, reason, error = loop.run_until_complete(
            generate(
                eng, tokenizer.encode(prompt), max_tokens=200, temperature=0.0, structured=json_spec(SCHEMA)
            )
        )
        assert error is None and reason is FinishReason.STOP
        jsonschema.validate(json.loads(text), SCHEMA)


def test_regex_and_choice_through_the_engine(engine):
    eng, loop, tokenizer = engine
    regex = StructuredOutput(kind="regex", regex=r"[0-9]{2}:[0-9]{2} (am|pm)")
    _, text, reason, _ = loop.run_until_complete(
        generate(eng, tokenizer.encode("What time is it?"), max_tokens=30, temperature=0.0, structured=regex)
    )
    assert reason is FinishReason.STOP and re.fullmatch(r"[0-9]{2}:[0-9]{2} (am|pm)", text)
    choice = StructuredOutput(kind="choice", choice=("yes", "no", "maybe"))
    for seed in range(3):
        _, text, reason, _ = loop.run_until_complete(
            generate(
                eng, tokenizer.encode("Is it?"), max_tokens=10, temperature=1.0, seed=seed, structured=choice
            )
        )
        assert reason is FinishReason.STOP and text in {"yes", "no", "maybe"}


def test_a_batch_mixing_constrained_penalised_and_plain_rows_gives_each_its_solo_output(engine):
    eng, loop, tokenizer = engine
    prompts = [
        tokenizer.encode(p) for p in ("Describe Paris.", "Hello", "Monday, Tuesday,", "The capital of")
    ]
    settings: list[dict[str, Any]] = [
        {"structured": json_spec(SCHEMA)},
        {"repetition_penalty": 1.4, "frequency_penalty": 0.6, "logit_bias": ((5, 2.0),)},
        {},
        {"structured": StructuredOutput(kind="regex", regex=r"[a-z]{3,9}( [a-z]{2,9}){2}")},
        {"presence_penalty": 1.0, "min_tokens": 5, "logprobs": 2},
        {"ignore_eos": True},
    ]
    jobs = [(prompts[i % len(prompts)], s) for i, s in enumerate(settings)]

    async def together():
        return await asyncio.gather(
            *(
                generate(eng, p, rid=f"m{i}", max_tokens=40, temperature=0.0, **s)
                for i, (p, s) in enumerate(jobs)
            )
        )

    peak_before = eng.scheduler.peak_batch
    mixed = loop.run_until_complete(together())
    assert eng.scheduler.peak_batch >= len(jobs) or peak_before >= len(jobs)
    for i, (prompt, s) in enumerate(jobs):
        solo = loop.run_until_complete(
            generate(eng, prompt, rid=f"s{i}", max_tokens=40, temperature=0.0, **s)
        )
        assert mixed[i] == solo, f"row {i} ({s}) differs batched"
    if mixed[0][2] is FinishReason.STOP:
        jsonschema.validate(json.loads(mixed[0][1]), SCHEMA)


def test_hostile_specs_are_refused_before_anything_is_queued(engine):
    eng, loop, tokenizer = engine
    nested: dict[str, Any] = {"type": "object"}
    for _ in range(100):
        nested = {"type": "object", "properties": {"a": nested}, "required": ["a"]}
    for structured in (
        json_spec(nested, param="tools"),
        json_spec({"enum": list(range(50_000))}, param="tools"),
        StructuredOutput(kind="regex", regex="(c{1000}){1000}", param="tools"),
    ):
        started = time.perf_counter()
        with pytest.raises(InvalidStructuredOutput) as caught:
            loop.run_until_complete(
                generate(eng, tokenizer.encode("Hi"), max_tokens=5, structured=structured)
            )
        assert caught.value.param == "tools"
        assert time.perf_counter() - started < eng.scheduler.grammars.limits.compile_timeout_s + 1.0
    assert eng.health().waiting == 0 and eng.health().running == 0


def test_a_running_sequence_keeps_its_pace_while_hostile_specs_compile(engine, monkeypatch):
    eng, loop, tokenizer = engine
    hostile = [StructuredOutput(kind="regex", regex=f"({letter}{{1000}}){{1000}}") for letter in "defg"]
    steps: list[float] = []  # when each model step started (the model thread's pace)
    real_step = eng.scheduler.runner.step

    def timed_step(step: Any) -> Any:
        steps.append(time.perf_counter())
        return real_step(step)

    monkeypatch.setattr(eng.scheduler.runner, "step", timed_step)

    async def refuse(structured: StructuredOutput) -> None:
        with pytest.raises(InvalidStructuredOutput):
            await generate(eng, tokenizer.encode("Hi"), max_tokens=5, structured=structured)

    async def main() -> tuple[float, tuple[float, float]]:
        started = time.perf_counter()
        await refuse(hostile[0])  # alone: what one such compile costs on this machine now
        compile_s = time.perf_counter() - started
        request = GenerationRequest(
            request_id="pace",
            prompt_token_ids=tokenizer.encode("Once upon a time"),
            sampling=SamplingParams(max_tokens=450, temperature=0.0, ignore_eos=True),
        )
        window: list[float] = []
        refusals: asyncio.Future[Any] | None = None
        async for _ in eng.generate(request):
            if refusals is None and len(steps) >= 40:
                window.append(time.perf_counter())
                refusals = asyncio.gather(*(refuse(h) for h in hostile[1:]))
            if refusals is not None and refusals.done() and len(window) == 1:
                window.append(time.perf_counter())
        assert refusals is not None and len(window) == 2, "the sequence ended before the compiles did"
        await refusals
        return compile_s, (window[0], window[1])

    compile_s, (start, end) = loop.run_until_complete(main())
    gaps = [(b - a, b) for a, b in itertools.pairwise(steps)]
    before = [gap for gap, at in gaps if at < start]
    during = [gap for gap, at in gaps if start <= at <= end]
    assert len(during) > 10
    # NOTE: three refused compiles of about compile_s each ran meanwhile, on the compiler's thread;
    # on the model's thread, one step would have waited that long
    pace = (
        f"steps before: median {statistics.median(before):.4f} s; during: median "
        f"{statistics.median(during):.4f} s, max {max(during):.4f} s; one compile {compile_s:.3f} s"
    )
    assert max(during) < max(0.6 * compile_s, 10 * statistics.median(before)), pace
    assert statistics.median(during) < 4 * statistics.median(before) + 0.01, pace
