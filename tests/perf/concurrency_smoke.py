"""Side-by-side smoke measurement: the engine in-process vs the full HTTP stack, 1 and 16 streams.

Not a test and not the benchmark (that is the engine milestone's); a quick, rerunnable check
behind the figures in the foundation's closing note. With a platform serving CATALOG on URL:

    llmaas serve --catalog CATALOG &          # e.g. one model id llama-tp1 on {demo: tiny-llama-chat}
    python tests/perf/concurrency_smoke.py --url http://127.0.0.1:8000 --model llama-tp1 [--model llama-tp2]

It prints, per model, tokens/s for 16 requests sent one after another and all at once, and
the same for the DeepSpeed engine driven in this process on the same weights (TP=1).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

REQUESTS, TOKENS = 16, 32


def _prompt(i: int) -> str:
    return f"One, two, three, {i}"


def http_run(url: str, model: str) -> tuple[float, float, float]:
    def one(i: int) -> float:
        started = time.perf_counter()
        body = {
            "model": model,
            "prompt": _prompt(i),
            "max_tokens": TOKENS,
            "temperature": 0,
            "ignore_eos": True,
        }
        response = httpx.post(f"{url}/v1/completions", json=body, timeout=300)
        response.raise_for_status()
        assert response.json()["usage"]["completion_tokens"] == TOKENS
        return time.perf_counter() - started

    one(0)
    started = time.perf_counter()
    latencies = [one(i) for i in range(REQUESTS)]
    sequential = time.perf_counter() - started
    started = time.perf_counter()
    with ThreadPoolExecutor(REQUESTS) as pool:
        list(pool.map(one, range(REQUESTS)))
    concurrent = time.perf_counter() - started
    return sequential, concurrent, statistics.median(latencies)


def engine_run(model_dir: Path) -> tuple[float, float, float]:
    from transformers import AutoTokenizer

    from llmaas.config.catalog import ModelSpec
    from llmaas.engine.deepspeed_engine import DeepSpeedEngine
    from llmaas.engine.types import GenerationRequest, SamplingParams

    spec = ModelSpec.model_validate(
        {"id": "t", "source": {"path": str(model_dir)}, "batching": {"max_batch_size": 16}}
    )
    tokenizer = AutoTokenizer.from_pretrained(model_dir)

    async def main() -> tuple[float, float, float]:
        engine = DeepSpeedEngine(spec, model_dir)
        await engine.start()

        async def one(i: int) -> float:
            started = time.perf_counter()
            request = GenerationRequest(
                request_id=str(i),
                prompt_token_ids=tokenizer.encode(_prompt(i)),
                sampling=SamplingParams(max_tokens=TOKENS, temperature=0.0, ignore_eos=True),
                stream=False,
            )
            async for _ in engine.generate(request):
                pass
            return time.perf_counter() - started

        await one(0)
        started = time.perf_counter()
        latencies = [await one(i) for i in range(REQUESTS)]
        sequential = time.perf_counter() - started
        started = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(REQUESTS)))
        concurrent = time.perf_counter() - started
        await engine.shutdown()
        return sequential, concurrent, statistics.median(latencies)

    return asyncio.run(main())


def report(name: str, sequential: float, concurrent: float, p50: float) -> None:
    tokens = REQUESTS * TOKENS
    print(
        f"{name:<28} sequential {tokens / sequential:6.0f} tok/s"
        f"   16 concurrent {tokens / concurrent:6.0f} tok/s"
        f"   speed-up {sequential / concurrent:4.1f}x   p50 request {p50 * 1000:5.0f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--model", action="append", default=[], help="catalog model id (repeatable)")
    parser.add_argument(
        "--model-dir", type=Path, default=Path.home() / ".cache/llmaas/models/tiny-llama-chat-v1"
    )
    args = parser.parse_args()
    report("engine in-process (TP=1)", *engine_run(args.model_dir))
    for model in args.model or ["llama-tp1"]:
        report(f"HTTP {model}", *http_run(args.url, model))


if __name__ == "__main__":
    main()
