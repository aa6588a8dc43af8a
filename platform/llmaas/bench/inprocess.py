"""Measurements without serving, in the benchmark's own process, on the same weights and workload.

- ``static_limit``: the in-process limit, the best tokens/s that plain transformers ``generate``
  reaches with every core on one static batch (every row the same length: nothing wasted,
  nothing waits), over a range of batch sizes; plus the prefill time of a single prompt (the
  floor under TTFT).
- ``engine_sweep``: llmaas's engine (DeepSpeed-inference, continuous batching) driven directly
  with the same closed-loop levels and requests as the HTTP sweep (TTFT, as over HTTP, is the
  first visible text: the detokenizer holds back partial UTF-8), so the difference between the
  two is what the serving stack (proxy, router, tokenizer, handles, SSE) costs.
"""

from __future__ import annotations

import asyncio
import os
import random
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel

from llmaas.bench.loadgen import BenchConfig, LevelReport, RequestResult, Work, level_sizes, make_workload
from llmaas.bench.loadgen import summarize as summarize_level
from llmaas.bench.servers import load_model
from llmaas.config.catalog import ModelSpec
from llmaas.engine.runner import TORCH_DTYPES


class StaticLimit(BaseModel):
    output_tokens: int  # generated per row
    tok_s_by_batch: dict[int, float]
    best_tok_s: float
    best_batch_size: int
    prefill_ms_p50: float  # one prompt alone: forward pass and first token


def static_limit(
    model_dir: Path, spec: ModelSpec, config: BenchConfig, batch_sizes: list[int]
) -> StaticLimit:
    # NOTE: the limit gets every core, whatever the catalog gives a replica.
    torch.set_num_threads(os.cpu_count() or 1)
    tokenizer, model = load_model(model_dir, TORCH_DTYPES[spec.torch_dtype_name])
    work = make_workload(config, max(batch_sizes), random.Random(f"{config.seed}-static"))
    tokens = round(sum(config.output_tokens) / 2)  # the workload's mean output length
    rates: dict[int, float] = {}
    with torch.inference_mode():
        prefill = []
        for item in work[:16]:
            ids = tokenizer(item.prompt, return_tensors="pt").input_ids
            model(ids[:, :1])  # warm
            started = time.perf_counter()
            logits = model(ids, use_cache=True, logits_to_keep=1).logits
            int(logits[0, -1].argmax())
            prefill.append(time.perf_counter() - started)
        for size in batch_sizes:
            batch = tokenizer([w.prompt for w in work[:size]], return_tensors="pt", padding=True)
            model.generate(**batch, max_new_tokens=2, do_sample=False, pad_token_id=tokenizer.pad_token_id)
            started = time.perf_counter()
            out = model.generate(
                **batch,
                max_new_tokens=tokens,
                min_new_tokens=tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )
            elapsed = time.perf_counter() - started
            generated = (out.shape[1] - batch.input_ids.shape[1]) * size
            rates[size] = round(generated / elapsed, 2)
    best = max(rates, key=lambda b: rates[b])
    return StaticLimit(
        output_tokens=tokens,
        tok_s_by_batch=rates,
        best_tok_s=rates[best],
        best_batch_size=best,
        prefill_ms_p50=round(statistics.median(prefill) * 1000, 3),
    )


async def _one(engine: Any, tokenizer: Any, work: Work, index: int) -> RequestResult:
    from llmaas.engine.types import GenerationRequest, SamplingParams

    started = time.perf_counter()
    request = GenerationRequest(
        request_id=f"bench-{index}",
        prompt_token_ids=tokenizer.encode(work.prompt),
        sampling=SamplingParams(max_tokens=work.max_tokens, temperature=0.0, ignore_eos=True),
        stream=True,
    )
    ttft: float | None = None
    generated = 0
    async for chunk in engine.generate(request):
        if ttft is None and chunk.text:  # NOTE: as over HTTP, the first visible text
            ttft = time.perf_counter() - started
        generated = chunk.num_generated_tokens
        if chunk.error:
            return RequestResult(ok=False, status=500, e2e_s=time.perf_counter() - started, error=chunk.error)
    return RequestResult(
        ok=True,
        status=200,
        ttft_s=ttft,
        e2e_s=time.perf_counter() - started,
        prompt_tokens=len(request.prompt_token_ids),
        completion_tokens=generated,
    )


async def _closed_loop(engine: Any, tokenizer: Any, work: list[Work], level: int) -> list[RequestResult]:
    queue = list(reversed(list(enumerate(work))))
    results: list[RequestResult] = []

    async def worker() -> None:
        while queue:
            index, item = queue.pop()
            results.append(await _one(engine, tokenizer, item, index))

    await asyncio.gather(*(worker() for _ in range(level)))
    return results


async def _sweep(engine: Any, tokenizer: Any, config: BenchConfig) -> list[LevelReport]:
    await _one(engine, tokenizer, make_workload(config, 1, random.Random(-1))[0], -1)  # warm-up
    reports = []
    for level in config.concurrency:
        work = make_workload(config, level_sizes(config, level), random.Random(f"{config.seed}-c{level}"))
        started = time.perf_counter()
        results = await _closed_loop(engine, tokenizer, work, level)
        reports.append(summarize_level("concurrency", level, results, time.perf_counter() - started))
    return reports


def engine_sweep(model_dir: Path, spec: ModelSpec, config: BenchConfig) -> list[LevelReport]:
    """The closed-loop sweep on llmaas's engine in this process (TP=1, no Ray, no HTTP)."""
    from transformers import AutoTokenizer

    from llmaas.engine.deepspeed_engine import DeepSpeedEngine

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    single = spec.model_copy(update={"tensor_parallel_size": 1})

    async def main() -> list[LevelReport]:
        engine = DeepSpeedEngine(single, model_dir)
        await engine.start()
        try:
            return await _sweep(engine, tokenizer, config)
        finally:
            await engine.shutdown()

    return asyncio.run(main())
