"""Benchmark of LoRA adapters on the base's replica: a batch whose rows run different adapters
against the same batch on the base weights alone (issue 17's goal: at least 0.8x).

    python -m llmaas.bench.adapters --model DIR [--adapters 4] [--rank 16] [--batch 32] [--tokens 64]

Runs the engine in-process (``DeepSpeedEngine``, the replica's own) on ``--model`` (a Hugging Face
directory, e.g. SmolLM2's under ``.models/``). ``--adapters`` LoRA adapters of rank ``--rank`` on
every linear layer of the attention and MLP blocks (random weights: the cost does not depend on
what they learnt) are loaded beside each other. Each round sends ``--batch`` greedy requests of
``--tokens`` tokens at once, in turn: every row on the base (``base``); row i on adapter
``i % adapters`` (``mixed``); every row on one adapter (``one``). Configurations take turns round
by round (so load on a shared machine hits them alike); the median round's tokens/s is reported.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from pydantic import BaseModel

from llmaas.config.catalog import ModelSpec
from llmaas.engine.deepspeed_engine import DeepSpeedEngine
from llmaas.engine.types import AdapterRef, GenerationRequest, SamplingParams

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class AdapterBench(BaseModel):
    model: str
    adapters: int
    rank: int
    batch: int
    tokens: int
    rounds: int
    tok_s: dict[str, float]  # median round, by configuration
    mixed_over_base: float  # the ratio (goal >= 0.8)
    one_over_base: float
    load_s: float  # loading one adapter onto the running model (median)
    load_average: tuple[float, float, float] | None = None


def make_adapters(model_dir: Path, out: Path, count: int, rank: int) -> list[AdapterRef]:
    """``count`` random LoRA adapters of ``rank`` over ``TARGETS`` of the model, saved under ``out``."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    refs = []
    for index in range(count):
        torch.manual_seed(index)
        base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        model = get_peft_model(base, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=TARGETS))
        for name, param in model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(param, std=0.01)
        path = out / f"adapter-{index}"
        model.save_pretrained(str(path))
        refs.append(AdapterRef(name=f"adapter-{index}", path=str(path)))
    return refs


async def _round(engine: DeepSpeedEngine, adapters: list[AdapterRef | None], tokens: int) -> float:
    vocab = min(engine.info.vocab_size, 1000) - 10

    async def one(row: int, adapter: AdapterRef | None) -> int:
        request = GenerationRequest(
            request_id=f"r{row}",
            prompt_token_ids=[(row * 131 + i * 17) % vocab + 10 for i in range(32)],
            sampling=SamplingParams(max_tokens=tokens, temperature=0.0, ignore_eos=True),
            stream=False,
            adapter=adapter,
        )
        count = 0
        async for chunk in engine.generate(request):
            if chunk.error:
                raise RuntimeError(f"request {row} failed: {chunk.error}")
            count = chunk.num_generated_tokens
        return count

    started = time.perf_counter()
    counts = await asyncio.gather(*(one(row, adapter) for row, adapter in enumerate(adapters)))
    return sum(counts) / (time.perf_counter() - started)


async def run(model_dir: Path, count: int, rank: int, batch: int, tokens: int, rounds: int) -> AdapterBench:
    spec = ModelSpec.model_validate(
        {
            "id": "bench-base",
            "source": {"path": str(model_dir)},
            "batching": {"max_batch_size": batch, "batch_wait_ms": 50},
            "prefix_cache": {"enabled": False},  # NOTE: every round sends the same prompts
        }
    )
    engine = DeepSpeedEngine(spec, model_dir)
    await engine.start()
    with tempfile.TemporaryDirectory() as tmp:
        refs = await asyncio.to_thread(make_adapters, model_dir, Path(tmp), count, rank)
        loads = []
        for ref in refs:
            started = time.perf_counter()
            await engine.load_adapter(ref)
            loads.append(time.perf_counter() - started)
        plans: dict[str, list[AdapterRef | None]] = {
            "base": [None] * batch,
            "mixed": [refs[row % count] for row in range(batch)],
            "one": [refs[0]] * batch,
        }
        await _round(engine, plans["mixed"], 4)  # warm up
        samples: dict[str, list[float]] = {name: [] for name in plans}
        for _ in range(rounds):
            for name, plan in plans.items():
                samples[name].append(await _round(engine, plan, tokens))
    await engine.shutdown()
    tok_s = {name: statistics.median(values) for name, values in samples.items()}
    return AdapterBench(
        model=str(model_dir),
        adapters=count,
        rank=rank,
        batch=batch,
        tokens=tokens,
        rounds=rounds,
        tok_s={name: round(value, 1) for name, value in tok_s.items()},
        mixed_over_base=round(tok_s["mixed"] / tok_s["base"], 3),
        one_over_base=round(tok_s["one"] / tok_s["base"], 3),
        load_s=round(statistics.median(loads), 3),
        load_average=os.getloadavg() if hasattr(os, "getloadavg") else None,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m llmaas.bench.adapters", description=(__doc__ or "").split("\n")[0]
    )
    parser.add_argument("--model", type=Path, required=True, help="a Hugging Face causal LM directory")
    parser.add_argument("--adapters", type=int, default=4)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, help="write the result as JSON here too")
    args = parser.parse_args(argv)
    result = asyncio.run(run(args.model, args.adapters, args.rank, args.batch, args.tokens, args.rounds))
    text = result.model_dump_json(indent=2)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = ["AdapterBench", "make_adapters", "run"]
