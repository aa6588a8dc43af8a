"""The DeepSpeed engine in-process (TP=1, no Ray): token-for-token equality, batching, cancellation."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from llmaas.config.catalog import ModelSpec
from llmaas.engine.deepspeed_engine import DeepSpeedEngine
from llmaas.engine.types import FinishReason, GenerationRequest, SamplingParams


@pytest.fixture(scope="module")
def engine(chat_model_path: Path, model_cache: Path):
    spec = ModelSpec.model_validate(
        {
            "id": "t",
            "source": {"demo": "tiny-llama-chat"},
            "batching": {"max_batch_size": 8, "batch_wait_ms": 20},
        }
    )
    eng = DeepSpeedEngine(spec, chat_model_path)
    loop = asyncio.new_event_loop()
    loop.run_until_complete(eng.start())
    yield eng, loop
    loop.run_until_complete(eng.shutdown())
    loop.close()


@pytest.fixture(scope="module")
def reference(chat_model_path: Path):
    return (
        AutoTokenizer.from_pretrained(chat_model_path),
        AutoModelForCausalLM.from_pretrained(chat_model_path, dtype=torch.float32).eval(),
    )


async def _tokens(
    eng: DeepSpeedEngine, prompt: list[int], **sampling
) -> tuple[list[int], FinishReason | None]:
    request = GenerationRequest(request_id="r", prompt_token_ids=prompt, sampling=SamplingParams(**sampling))
    ids: list[int] = []
    reason = None
    async for chunk in eng.generate(request):
        ids.extend(chunk.token_ids)
        reason = chunk.finish_reason
    return ids, reason


PROMPTS = ["What is llmaas?", "Hello", "The capital of Japan is", "Monday, Tuesday,"]


def test_greedy_tokens_equal_model_generate(engine, reference):
    eng, loop = engine
    tokenizer, model = reference
    for prompt in PROMPTS:
        ids = tokenizer.encode(prompt)
        expected = model.generate(torch.tensor([ids]), max_new_tokens=20, do_sample=False, eos_token_id=None)[
            0, len(ids) :
        ]
        got, reason = loop.run_until_complete(
            _tokens(eng, ids, max_tokens=20, temperature=0.0, ignore_eos=True)
        )
        assert got == expected.tolist()
        assert reason is FinishReason.LENGTH


def test_concurrent_sequences_are_batched_and_match_solo_output(engine, reference):
    eng, loop = engine
    tokenizer, _ = reference
    prompts = [tokenizer.encode(p) for p in PROMPTS * 2]

    async def run_all():
        return await asyncio.gather(
            *(
                _tokens(eng, p, max_tokens=12 + i, temperature=0.0, ignore_eos=True)
                for i, p in enumerate(prompts)
            )
        )

    peak_before = eng.scheduler.peak_batch
    together = loop.run_until_complete(run_all())
    assert eng.scheduler.peak_batch >= 4 > peak_before or eng.scheduler.peak_batch >= 4
    for i, (ids, _) in enumerate(together):
        solo, _ = loop.run_until_complete(
            _tokens(eng, prompts[i], max_tokens=12 + i, temperature=0.0, ignore_eos=True)
        )
        assert ids == solo, f"prompt {i}: batched output differs from solo output"
        assert len(ids) == 12 + i


def test_eos_ends_with_stop(engine, reference):
    eng, loop = engine
    tokenizer, _ = reference
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hello"}], tokenize=False, add_generation_prompt=True
    )
    ids = tokenizer.encode(text, add_special_tokens=False)
    got, reason = loop.run_until_complete(_tokens(eng, ids, max_tokens=60, temperature=0.0))
    assert reason is FinishReason.STOP
    assert got[-1] in eng.info.eos_token_ids


def test_cancelled_sequence_leaves_the_batch(engine, reference):
    eng, loop = engine
    tokenizer, _ = reference

    async def cancel_early() -> int:
        request = GenerationRequest(
            request_id="c",
            prompt_token_ids=tokenizer.encode("Hello"),
            sampling=SamplingParams(max_tokens=400, temperature=0.0, ignore_eos=True),
        )
        stream = eng.generate(request)
        got = 0
        async for _ in stream:
            got += 1
            if got == 3:
                break
        await stream.aclose()
        for _ in range(100):
            await asyncio.sleep(0.02)
            if eng.health().running == 0:
                break
        return eng.health().running

    assert loop.run_until_complete(cancel_early()) == 0
    assert eng.health().healthy


def test_context_limit_caps_generation(engine, reference):
    eng, loop = engine
    tokenizer, _ = reference
    limit = eng.info.max_context_length
    prompt = tokenizer.encode("one two three " * 200)[: limit - 3]
    got, reason = loop.run_until_complete(
        _tokens(eng, prompt, max_tokens=50, temperature=0.0, ignore_eos=True)
    )
    assert len(got) == 3 and reason is FinishReason.LENGTH


def test_chunks_that_pile_up_are_merged_in_order():
    from llmaas.engine.batcher import merge_chunks
    from llmaas.engine.types import GenerationChunk

    a = GenerationChunk(request_id="r", text="Hel", token_ids=[1], num_generated_tokens=1)
    b = GenerationChunk(
        request_id="r", text="lo", token_ids=[2], num_generated_tokens=2, finish_reason=FinishReason.STOP
    )
    merged = merge_chunks(a, b)
    assert (merged.text, merged.token_ids, merged.num_generated_tokens) == ("Hello", [1, 2], 2)
    assert merged.finish_reason is FinishReason.STOP


def test_non_streaming_request_gets_one_chunk_with_every_token(engine, reference):
    eng, loop = engine
    tokenizer, _ = reference

    async def run():
        request = GenerationRequest(
            request_id="u",
            prompt_token_ids=tokenizer.encode("Hello"),
            sampling=SamplingParams(max_tokens=10, temperature=0.0, ignore_eos=True),
            stream=False,
        )
        return [chunk async for chunk in eng.generate(request)]

    chunks = loop.run_until_complete(run())
    assert len(chunks) == 1
    assert len(chunks[0].token_ids) == 10 and chunks[0].finish_reason is FinishReason.LENGTH
    streamed, _ = loop.run_until_complete(
        _tokens(eng, tokenizer.encode("Hello"), max_tokens=10, temperature=0.0, ignore_eos=True)
    )
    assert chunks[0].token_ids == streamed


def test_newcomer_joins_a_running_batch_without_disturbing_it(engine, reference):
    eng, loop = engine
    tokenizer, _ = reference
    long_prompt, short_prompt = (
        tokenizer.encode("Once upon a time"),
        tokenizer.encode("The capital of France is"),
    )
    long_solo, _ = loop.run_until_complete(
        _tokens(eng, long_prompt, max_tokens=150, temperature=0.0, ignore_eos=True)
    )
    short_solo, _ = loop.run_until_complete(
        _tokens(eng, short_prompt, max_tokens=6, temperature=0.0, ignore_eos=True)
    )

    async def overlap() -> tuple[list[int], list[int], list[str]]:
        order: list[str] = []
        started = asyncio.Event()

        async def long_run() -> list[int]:
            request = GenerationRequest(
                request_id="long",
                prompt_token_ids=long_prompt,
                sampling=SamplingParams(max_tokens=150, temperature=0.0, ignore_eos=True),
            )
            ids: list[int] = []
            async for chunk in eng.generate(request):
                ids.extend(chunk.token_ids)
                if len(ids) >= 5:
                    started.set()
            order.append("long")
            return ids

        async def short_run() -> list[int]:
            await started.wait()
            ids, _ = await _tokens(eng, short_prompt, max_tokens=6, temperature=0.0, ignore_eos=True)
            order.append("short")
            return ids

        long_ids, short_ids = await asyncio.gather(long_run(), short_run())
        return long_ids, short_ids, order

    steps_before = eng.scheduler.steps
    long_ids, short_ids, order = loop.run_until_complete(overlap())
    assert order == ["short", "long"], "the newcomer waited for the running sequence to finish"
    assert short_ids == short_solo
    assert long_ids == long_solo
    # one prefill, one join, then one step per token of the long sequence: no extra batch
    assert eng.scheduler.steps - steps_before == 150 + 1


def test_kv_cache_budget_queues_sequences_until_their_cache_fits(chat_model_path: Path, reference):
    """A budget of 100 token slots holds two 45-token sequences, not three: the rest wait, none fail."""
    tokenizer, _ = reference
    per_token = 2 * 4 * 2 * 32 * 4  # K and V, 4 layers, 2 KV heads of 32 dims, fp32
    spec = ModelSpec.model_validate(
        {
            "id": "kv",
            "source": {"demo": "tiny-llama-chat"},
            "batching": {"max_batch_size": 8, "batch_wait_ms": 50, "kv_cache_bytes": 100 * per_token},
        }
    )
    eng = DeepSpeedEngine(spec, chat_model_path)
    loop = asyncio.new_event_loop()
    loop.run_until_complete(eng.start())
    try:
        assert eng.info.max_context_length == 100, "a cache of 100 slots cannot serve a longer context"
        prompt = tokenizer.encode("Hello")
        assert len(prompt) <= 5
        solo, _ = loop.run_until_complete(
            _tokens(eng, prompt, max_tokens=45 - len(prompt), temperature=0.0, ignore_eos=True)
        )

        async def five() -> list[list[int]]:
            runs = [
                _tokens(eng, prompt, max_tokens=45 - len(prompt), temperature=0.0, ignore_eos=True)
                for _ in range(5)
            ]
            return [ids for ids, _ in await asyncio.gather(*runs)]

        outputs = loop.run_until_complete(five())
        health = eng.health()
        assert outputs == [solo] * 5, "every queued sequence completes, with the same tokens"
        assert health.kv_capacity_tokens == 100
        assert health.peak_batch == 2, "two sequences fit the budget at once"
        assert 0 < health.kv_peak_tokens <= 100, "the cache never held more than its budget"
        assert health.kv_deferred >= 1
        assert health.running == 0 and health.waiting == 0
    finally:
        loop.run_until_complete(eng.shutdown())
        loop.close()
