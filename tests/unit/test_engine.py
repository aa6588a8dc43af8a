"""The DeepSpeed engine in-process (TP=1, no Ray): token-for-token equality, batching, cancellation."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path
from typing import Any

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
    from llmaas.engine.chunks import merge_chunks
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


# ---- logprobs, prompt logprobs, sampling controls (issue 16) -------------------------------
async def _chunks(
    eng: DeepSpeedEngine, prompt: list[int], *, stream: bool = True, rid: str = "r", **sampling
):
    request = GenerationRequest(
        request_id=rid, prompt_token_ids=prompt, sampling=SamplingParams(**sampling), stream=stream
    )
    return [chunk async for chunk in eng.generate(request)]


def _reference_logprobs(model, ids: list[int]) -> torch.Tensor:
    """log_softmax of a direct forward pass over ``ids``: row i predicts token i + 1."""
    with torch.inference_mode():
        return torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)


def test_logprobs_equal_a_direct_forward_pass_and_greedy_takes_the_top(engine, reference):
    eng, loop = engine
    tokenizer, model = reference
    prompt = tokenizer.encode("What is llmaas?")
    chunks = loop.run_until_complete(
        _chunks(eng, prompt, max_tokens=12, temperature=0.0, ignore_eos=True, logprobs=4)
    )
    ids = [t for c in chunks for t in c.token_ids]
    logprobs = [lp for c in chunks for lp in c.logprobs or []]
    assert all(c.logprobs is not None and len(c.logprobs) == len(c.token_ids) for c in chunks)
    assert len(ids) == len(logprobs) == 12
    expected = _reference_logprobs(model, prompt + ids)
    for i, (token, entry) in enumerate(zip(ids, logprobs, strict=True)):
        row = expected[len(prompt) - 1 + i]
        assert entry.token_id == token
        assert len(entry.top) == 4
        assert entry.logprob == entry.top[0][1], "a greedy token carries the top logprob"
        assert entry.logprob == pytest.approx(float(row[token]), abs=1e-4)
        assert [t for t, _ in entry.top] == row.topk(4).indices.tolist()
        for (alt, value), want in zip(entry.top, row.topk(4).values.tolist(), strict=True):
            assert value == pytest.approx(want, abs=1e-4)
            assert value == pytest.approx(float(row[alt]), abs=1e-4)
    assert all(c.prompt_logprobs is None for c in chunks), "no prompt logprobs unless asked"


@pytest.mark.parametrize("max_tokens", [0, 3])
def test_prompt_logprobs_equal_a_direct_forward_pass(engine, reference, max_tokens):
    """An echo: prompt logprobs with nothing generated (max_tokens 0), or before the generated tokens."""
    eng, loop = engine
    tokenizer, model = reference
    prompt = tokenizer.encode("The capital of Japan is Tokyo, and")
    chunks = loop.run_until_complete(
        _chunks(eng, prompt, max_tokens=max_tokens, temperature=0.0, ignore_eos=True, prompt_logprobs=2)
    )
    first = chunks[0].prompt_logprobs
    assert first is not None and len(first) == len(prompt)
    assert all(c.prompt_logprobs is None for c in chunks[1:]), "prompt logprobs come once, first"
    assert first[0] is None
    expected = _reference_logprobs(model, prompt)
    for i, entry in enumerate(first[1:], start=1):
        assert entry is not None and entry.token_id == prompt[i]
        assert entry.logprob == pytest.approx(float(expected[i - 1, prompt[i]]), abs=1e-4)
        assert [t for t, _ in entry.top] == expected[i - 1].topk(2).indices.tolist()
    ids = [t for c in chunks for t in c.token_ids]
    assert chunks[-1].finish_reason is FinishReason.LENGTH and len(ids) == max_tokens
    if max_tokens:
        solo, _ = loop.run_until_complete(
            _tokens(eng, prompt, max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
        )
        assert ids == solo, "asking for prompt logprobs does not change the generated tokens"


def test_max_tokens_zero_needs_prompt_logprobs():
    with pytest.raises(ValueError, match="prompt_logprobs"):
        SamplingParams(max_tokens=0)


def test_non_streaming_and_merged_chunks_keep_one_logprob_per_token(engine, reference):
    from llmaas.engine.chunks import merge_chunks
    from llmaas.engine.types import GenerationChunk, TokenLogprob

    eng, loop = engine
    tokenizer, _ = reference
    prompt = tokenizer.encode("Hello")
    [chunk] = loop.run_until_complete(
        _chunks(
            eng,
            prompt,
            stream=False,
            max_tokens=9,
            temperature=0.0,
            ignore_eos=True,
            logprobs=1,
            prompt_logprobs=0,
        )
    )
    assert len(chunk.token_ids) == 9 and chunk.logprobs is not None
    assert [lp.token_id for lp in chunk.logprobs] == chunk.token_ids
    assert chunk.prompt_logprobs is not None and len(chunk.prompt_logprobs) == len(prompt)
    a = GenerationChunk(
        request_id="r",
        token_ids=[1],
        logprobs=[TokenLogprob(token_id=1, logprob=-0.5)],
        prompt_logprobs=[None],
    )
    b = GenerationChunk(request_id="r", token_ids=[2], logprobs=[TokenLogprob(token_id=2, logprob=-1.0)])
    merged = merge_chunks(a, b)
    assert [lp.token_id for lp in merged.logprobs or []] == [1, 2]
    assert merged.prompt_logprobs == [None]
    assert merge_chunks(GenerationChunk(request_id="r"), GenerationChunk(request_id="r")).logprobs is None


def test_logit_bias_bans_and_forces_through_the_engine(engine, reference):
    eng, loop = engine
    tokenizer, _ = reference
    prompt = tokenizer.encode("Monday, Tuesday,")
    plain, _ = loop.run_until_complete(_tokens(eng, prompt, max_tokens=10, temperature=0.0, ignore_eos=True))
    banned, _ = loop.run_until_complete(
        _tokens(
            eng, prompt, max_tokens=10, temperature=0.0, ignore_eos=True, logit_bias=((plain[0], -100.0),)
        )
    )
    assert plain[0] not in banned
    forced, _ = loop.run_until_complete(
        _tokens(
            eng, prompt, max_tokens=10, temperature=0.9, seed=1, ignore_eos=True, logit_bias=((42, 100.0),)
        )
    )
    assert forced == [42] * 10


def test_penalties_reduce_repetition_through_the_engine(engine, reference):
    """60 greedy tokens of four prompts (the tiny model loops over its corpus), with and without."""
    eng, loop = engine
    tokenizer, _ = reference

    def outputs(**sampling) -> list[list[int]]:
        return [
            loop.run_until_complete(
                _tokens(
                    eng, tokenizer.encode(text), max_tokens=60, temperature=0.0, ignore_eos=True, **sampling
                )
            )[0]
            for text in [*PROMPTS[1:], "Once upon a time"]
        ]

    def repeated_tokens(outs: list[list[int]]) -> int:
        return sum(len(ids) - len(set(ids)) for ids in outs)

    def repeated_bigrams(outs: list[list[int]]) -> int:
        return sum(len(ids) - 1 - len(set(itertools.pairwise(ids))) for ids in outs)

    plain = outputs()
    assert repeated_bigrams(outputs(frequency_penalty=2.0)) < repeated_bigrams(plain) * 0.7
    assert repeated_bigrams(outputs(repetition_penalty=2.0)) < repeated_bigrams(plain) * 0.7
    # presence is the weakest (a fixed push away from every token already generated): on this model
    # it changes the output exactly where the plain output first repeats a generated token
    present = outputs(presence_penalty=2.0)
    assert present != plain
    for before, after in zip(plain, present, strict=True):
        split = next((i for i, (a, b) in enumerate(zip(before, after, strict=True)) if a != b), None)
        assert split is None or before[split] in before[:split]


def test_min_tokens_holds_eos_back(engine, reference):
    eng, loop = engine
    tokenizer, _ = reference
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hello"}], tokenize=False, add_generation_prompt=True
    )
    ids = tokenizer.encode(text, add_special_tokens=False)
    early, reason = loop.run_until_complete(_tokens(eng, ids, max_tokens=60, temperature=0.0))
    assert reason is FinishReason.STOP
    held, _ = loop.run_until_complete(
        _tokens(eng, ids, max_tokens=60, temperature=0.0, min_tokens=len(early) + 5)
    )
    assert len(held) >= len(early) + 5
    assert not set(held[: len(early) + 4]) & set(eng.info.eos_token_ids)


def test_stop_token_ids_end_the_sequence_and_wait_for_min_tokens(engine, reference):
    eng, loop = engine
    tokenizer, _ = reference
    prompt = tokenizer.encode("Monday, Tuesday,")
    plain = loop.run_until_complete(_chunks(eng, prompt, max_tokens=24, temperature=0.0, ignore_eos=True))
    ids = [t for c in plain for t in c.token_ids]
    at = next(i for i in range(2, len(ids)) if ids[i] not in ids[:i])  # a token's first occurrence
    stopped = loop.run_until_complete(
        _chunks(eng, prompt, max_tokens=24, temperature=0.0, ignore_eos=True, stop_token_ids=(ids[at], 10**6))
    )
    assert [t for c in stopped for t in c.token_ids] == ids[: at + 1]
    assert stopped[-1].finish_reason is FinishReason.STOP
    assert "".join(c.text for c in stopped) == tokenizer.decode(ids[:at], skip_special_tokens=True)
    held = loop.run_until_complete(
        _chunks(
            eng,
            prompt,
            max_tokens=24,
            temperature=0.0,
            ignore_eos=True,
            stop_token_ids=(ids[at],),
            min_tokens=at + 3,
        )
    )
    held_ids = [t for c in held for t in c.token_ids]
    assert ids[at] not in held_ids[: at + 2] and len(held_ids) > at + 2


def test_min_tokens_holds_stop_strings_back(engine, reference):
    eng, loop = engine
    tokenizer, _ = reference
    prompt = tokenizer.encode("Monday, Tuesday,")
    plain = loop.run_until_complete(_chunks(eng, prompt, max_tokens=24, temperature=0.0, ignore_eos=True))
    text = "".join(c.text for c in plain)
    word = next(w for w in text.split() if len(w) > 2)
    first = loop.run_until_complete(
        _chunks(eng, prompt, max_tokens=24, temperature=0.0, ignore_eos=True, stop=(word,))
    )
    assert first[-1].finish_reason is FinishReason.STOP
    cut = "".join(c.text for c in first)
    assert cut == text[: text.index(word)]
    # NOTE: min_tokens also bans EOS, which changes greedy tokens where EOS was the best: compare
    # with the same min_tokens and no stop string
    unstopped = loop.run_until_complete(
        _chunks(eng, prompt, max_tokens=24, temperature=0.0, ignore_eos=True, min_tokens=24)
    )
    full = "".join(c.text for c in unstopped)
    held = loop.run_until_complete(
        _chunks(eng, prompt, max_tokens=24, temperature=0.0, ignore_eos=True, stop=(word,), min_tokens=24)
    )
    assert word in full
    assert held[-1].finish_reason is FinishReason.LENGTH  # a stop string before min_tokens is text
    assert "".join(c.text for c in held) == full


MIXED: list[dict[str, Any]] = [
    {"temperature": 0.0},
    {"temperature": 0.0, "frequency_penalty": 1.0, "presence_penalty": 0.5},
    {"temperature": 0.0, "repetition_penalty": 1.4, "logprobs": 3},
    {"temperature": 0.0, "logit_bias": ((42, 5.0), (7, -100.0))},
    {"temperature": 0.0, "prompt_logprobs": 1},
    {"temperature": 0.8, "seed": 5, "frequency_penalty": 0.7, "top_p": 0.9},
    {"temperature": 1.0, "top_p": 1e-300, "seed": 6},
    {"temperature": 0.0, "min_tokens": 30, "logprobs": 0},
]


def test_a_batch_mixing_controlled_and_plain_rows_gives_each_row_its_solo_output(engine, reference):
    eng, loop = engine
    tokenizer, _ = reference
    prompts = [tokenizer.encode(p) for p in PROMPTS * 2]

    async def together():
        return await asyncio.gather(
            *(
                _tokens(eng, prompts[i], max_tokens=20, ignore_eos=True, **sampling)
                for i, sampling in enumerate(MIXED)
            )
        )

    steps = eng.scheduler.steps
    both = loop.run_until_complete(together())
    # 8 rows of 20 tokens: 160 steps one by one; together, 20 and a few prefills
    assert eng.scheduler.steps - steps < 60, "the rows were not batched together"
    for i, sampling in enumerate(MIXED):
        solo = loop.run_until_complete(_tokens(eng, prompts[i], max_tokens=20, ignore_eos=True, **sampling))
        assert both[i] == solo, f"row {i} ({sampling}) differs in a mixed batch"
        assert len(solo[0]) == 20


def test_a_row_that_cannot_be_sampled_fails_alone(engine, reference, monkeypatch):
    import llmaas.engine.batcher as batcher

    eng, loop = engine
    tokenizer, _ = reference
    real = batcher.sample_batch

    def poisoned(logits, rows, **kwargs):
        bad = [i for i, row in enumerate(rows) if row.params.seed == 666]
        if bad:
            logits = logits.clone()
            logits[bad] = float("nan")
        return real(logits, rows, **kwargs)

    monkeypatch.setattr(batcher, "sample_batch", poisoned)
    prompts = [tokenizer.encode(p) for p in PROMPTS]

    async def run():
        return await asyncio.gather(
            _chunks(eng, prompts[0], rid="bad", max_tokens=10, temperature=0.7, seed=666, ignore_eos=True),
            *(_tokens(eng, p, max_tokens=10, temperature=0.0, ignore_eos=True) for p in prompts[1:]),
        )

    bad, *good = loop.run_until_complete(run())
    assert bad[-1].finish_reason is FinishReason.ABORT and "finite" in (bad[-1].error or "")
    for prompt, (ids, reason) in zip(prompts[1:], good, strict=True):
        solo, _ = loop.run_until_complete(
            _tokens(eng, prompt, max_tokens=10, temperature=0.0, ignore_eos=True)
        )
        assert ids == solo and reason is FinishReason.LENGTH
    assert eng.health().healthy
