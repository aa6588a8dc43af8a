"""Micro-benchmark of the batched sampler: what per-row sampling controls cost a decode step.

    python -m llmaas.bench.sampler [--vocab 49152] [--batch 32] [--threads 1] [--model DIR]

Times one step's token selection (``llmaas.engine.sampling.sample_batch``) on random logits
over SmolLM2's vocabulary, for

- ``argmax``: what a greedy batch cost before the controls existed (``argmax(...).tolist()``);
- ``plain``: a batch where no row uses any control (the fast path);
- ``mixed``: half the rows plain greedy, half with presence, frequency and repetition
  penalties (a 200-token prompt, 100 tokens generated), a 10-token ``logit_bias`` and
  ``logprobs=5``;
- ``mixed_sampled``: as ``mixed``, the controlled half also sampled (temperature, top-p, seed);
- ``mixed_structured``: a third each of plain greedy rows, penalised rows (as ``mixed``) and rows
  constrained to a JSON schema (a pydantic model: strings, integers, an enum, an array, a nested
  object; llguidance masks, ``llmaas.engine.guided``) whose logits lead them through a valid
  instance token by token (so their grammar states are those of real output: structure, keys,
  strings), starting over when it is done. Needs the tokenizer (``--tokenizer``, SmolLM2's by
  default; skipped with ``--no-structured``).

Configurations take turns step by step (so load on a shared machine hits them alike) and the
median step is reported. With ``--model`` (a Hugging Face directory, e.g. SmolLM2's under
``.models/``) it also times a decode forward pass of the same batch (cache of ``--context``
tokens) and reports what the plain rows of a mixed batch keep of their all-plain throughput:
``(forward + plain) / (forward + mixed)`` (and against ``mixed_structured``), the issues' goal
being at least 0.9.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, Field

from llmaas.engine.sampling import SequenceSampler, sample_batch
from llmaas.engine.types import SamplingParams, StructuredOutput

EOS = 2


class SamplerBench(BaseModel):
    vocab: int
    batch: int
    threads: int
    steps: int
    ms: dict[str, float]  # median per step, by configuration
    fast_path_overhead: float  # plain / argmax - 1
    mixed_over_plain: float  # sampling time ratio
    forward_ms: float | None = None  # one decode forward pass of the batch (with --model)
    plain_rows_throughput_ratio: float | None = None  # (forward + plain) / (forward + mixed)
    plain_rows_throughput_ratio_sampled: float | None = None  # same, against mixed_sampled
    structured_over_plain: float | None = None  # mixed_structured / plain sampling time
    plain_rows_throughput_ratio_structured: float | None = None  # same, against mixed_structured
    tokenizer: str | None = None  # of the constrained rows
    load_average: tuple[float, float, float] | None = None


def controlled(temperature: float, seed: int) -> SamplingParams:
    return SamplingParams(
        temperature=temperature,
        top_p=0.95 if temperature else 1.0,
        seed=seed if temperature else None,
        presence_penalty=0.5,
        frequency_penalty=0.5,
        repetition_penalty=1.2,
        logit_bias=tuple((100 + 37 * i, 5.0 if i % 2 else -100.0) for i in range(10)),
        logprobs=5,
    )


def make_rows(kind: str, batch: int, vocab: int) -> list[SequenceSampler]:
    """The batch of configuration ``kind``, controlled rows with a realistic history."""
    gen = torch.Generator().manual_seed(0)
    rows: list[SequenceSampler] = []
    for i in range(batch):
        if kind in ("plain", "argmax") or i % 2 == 0:
            rows.append(SequenceSampler(SamplingParams(temperature=0.0)))
            continue
        params = controlled(0.8 if kind == "mixed_sampled" else 0.0, seed=i)
        prompt = torch.randint(0, vocab, (200,), generator=gen).tolist()
        row = SequenceSampler(params, prompt)
        for token in torch.randint(0, vocab, (100,), generator=gen).tolist():
            row.record(token)
        rows.append(row)
    return rows


def _sample(logits: torch.Tensor, rows: list[SequenceSampler]) -> object:
    return sample_batch(logits, rows, eos_token_ids={EOS})


class _Item(BaseModel):
    name: str
    quantity: int = Field(ge=0)
    tags: list[str]


class _Order(BaseModel):
    """The constrained rows' schema: what an application asks for."""

    customer: str
    status: Literal["new", "paid", "shipped"]
    items: list[_Item]
    address: dict[str, str]
    total: float


_ORDER = _Order(
    customer="Ada Lovelace",
    status="paid",
    items=[
        _Item(name="analytical engine", quantity=1, tags=["brass", "steam"]),
        _Item(name="punched cards", quantity=400, tags=["paper"]),
    ],
    address={"street": "12 St James's Square", "city": "London"},
    total=1843.5,
)


class StructuredRows:
    """The constrained rows of ``mixed_structured`` and the logits that walk them through ``_ORDER``.

    ``logits(x)`` (untimed) returns ``x`` with each constrained row's next instance token made its
    best; ``advance()`` (untimed) starts a row over when its instance is done.
    """

    def __init__(self, tokenizer_dir: Path, batch: int, vocab: int) -> None:
        from transformers import AutoTokenizer

        from llmaas.engine.guided import GrammarCompiler

        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        self.compiler = GrammarCompiler(tokenizer, eos_token_ids=[EOS], name="bench")
        spec = StructuredOutput(kind="json", json_schema=json.dumps(_Order.model_json_schema()))
        self.grammar = self.compiler.compile_blocking(spec)
        self.instance = tokenizer.encode(_ORDER.model_dump_json(), add_special_tokens=False)
        self.rows = make_rows("mixed", batch, vocab)
        self.constrained = [i for i in range(batch) if i % 3 == 2]
        self.position: dict[int, int] = {}
        for i in range(batch):
            if i % 3 == 0:
                self.rows[i] = SequenceSampler(SamplingParams(temperature=0.0))
        for n, i in enumerate(self.constrained):
            # NOTE: rows start at different places of the instance, as sequences of a batch do
            self.rows[i] = SequenceSampler(SamplingParams(temperature=0.0), matcher=self.grammar.matcher())
            self.position[i] = 0
            for token in self.instance[: (n * 7) % (len(self.instance) - 1)]:
                self.rows[i].record(token)
                self.position[i] += 1

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        for i in self.constrained:
            x[i, self.instance[self.position[i]]] += 1000.0
        return x

    def advance(self) -> None:
        for i in self.constrained:
            self.position[i] += 1
            matcher = self.rows[i].matcher
            if self.position[i] == len(self.instance) or matcher is None or matcher.finished:
                self.rows[i] = SequenceSampler(
                    SamplingParams(temperature=0.0), matcher=self.grammar.matcher()
                )
                self.position[i] = 0

    def step(self, x: torch.Tensor) -> object:
        result = sample_batch(x, self.rows, eos_token_ids={EOS})
        assert all(e is None for e in result.errors), result.errors
        return result


def _smollm2_dir() -> Path | None:
    from llmaas.config.catalog import ModelSource
    from llmaas.models import is_prepared, resolve_model_path

    source = ModelSource(demo="smollm2-135m-instruct")
    cache = Path(os.environ.get("LLMAAS_CACHE_DIR", ".models"))
    return resolve_model_path(source, cache) if is_prepared(source, cache) else None


def forward_ms(model_dir: Path, batch: int, context: int, steps: int) -> float:
    """Median decode step (one token per row, ``context`` cached) of the model at ``model_dir``."""
    from transformers import AutoModelForCausalLM, DynamicCache

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ids = torch.randint(3, int(model.config.vocab_size), (batch, context))
    times = []
    with torch.inference_mode():
        cache = DynamicCache(config=model.config)
        model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
        for i in range(steps):
            token = torch.randint(3, int(model.config.vocab_size), (batch, 1))
            started = time.perf_counter()
            model(
                input_ids=token,
                position_ids=torch.full((batch, 1), context + i),
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=1,
            )
            times.append((time.perf_counter() - started) * 1000.0)
    return statistics.median(times)


def run(
    *,
    vocab: int = 49152,
    batch: int = 32,
    threads: int = 1,
    rounds: int = 5,
    steps: int = 40,
    model: Path | None = None,
    context: int = 128,
    tokenizer: Path | None = None,
) -> SamplerBench:
    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(1)
    logits = [torch.randn((batch, vocab), generator=gen) * 3 for _ in range(8)]
    steps_of: dict[str, Callable[[torch.Tensor], object]] = {
        "argmax": lambda x: torch.argmax(x, dim=-1).tolist()
    }
    for kind in ("plain", "mixed", "mixed_sampled"):
        rows = make_rows(kind, batch, vocab)
        steps_of[kind] = functools.partial(_sample, rows=rows)
    structured = StructuredRows(tokenizer, batch, vocab) if tokenizer is not None else None
    if structured is not None:
        steps_of["mixed_structured"] = structured.step
    times: dict[str, list[float]] = {kind: [] for kind in steps_of}
    for kind, step in steps_of.items():  # warm
        step(structured.logits(logits[0]) if kind == "mixed_structured" and structured else logits[0])
        if kind == "mixed_structured" and structured:
            structured.advance()
    # NOTE: the configurations take turns step by step, so load on a shared machine hits them alike
    for i in range(rounds * steps):
        for kind, step in steps_of.items():
            x = logits[i % len(logits)]
            if kind == "mixed_structured" and structured is not None:
                x = structured.logits(x)  # untimed: what the model would have produced
            started = time.perf_counter()
            step(x)
            times[kind].append((time.perf_counter() - started) * 1000.0)
            if kind == "mixed_structured" and structured is not None:
                structured.advance()
    if structured is not None:
        structured.compiler.shutdown()
    ms = {kind: statistics.median(values) for kind, values in times.items()}
    report = SamplerBench(
        vocab=vocab,
        batch=batch,
        threads=threads,
        steps=len(times["plain"]),
        ms=ms,
        fast_path_overhead=ms["plain"] / ms["argmax"] - 1.0,
        mixed_over_plain=ms["mixed"] / ms["plain"],
        load_average=os.getloadavg() if hasattr(os, "getloadavg") else None,
        tokenizer=str(tokenizer) if tokenizer is not None else None,
    )
    if structured is not None:
        report.structured_over_plain = ms["mixed_structured"] / ms["plain"]
    if model is not None:
        forward = forward_ms(model, batch, context, steps)
        report.forward_ms = forward
        report.plain_rows_throughput_ratio = (forward + ms["plain"]) / (forward + ms["mixed"])
        report.plain_rows_throughput_ratio_sampled = (forward + ms["plain"]) / (forward + ms["mixed_sampled"])
        if structured is not None:
            report.plain_rows_throughput_ratio_structured = (forward + ms["plain"]) / (
                forward + ms["mixed_structured"]
            )
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--vocab", type=int, default=49152, help="vocabulary size (SmolLM2's by default)")
    parser.add_argument("--batch", type=int, default=32, help="rows per step")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds over the configurations")
    parser.add_argument("--steps", type=int, default=40, help="steps per configuration and round")
    parser.add_argument("--model", type=Path, default=None, help="a model directory: time its forward too")
    parser.add_argument("--context", type=int, default=128, help="cached tokens per row for --model")
    parser.add_argument(
        "--tokenizer", type=Path, default=None, help="the constrained rows' tokenizer (default: SmolLM2's)"
    )
    parser.add_argument("--no-structured", action="store_true", help="leave mixed_structured out")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    report = run(
        vocab=args.vocab,
        batch=args.batch,
        threads=args.threads,
        rounds=args.rounds,
        steps=args.steps,
        model=args.model,
        context=args.context,
        tokenizer=None if args.no_structured else (args.tokenizer or args.model or _smollm2_dir()),
    )
    if args.json:
        print(json.dumps(report.model_dump(), indent=2))
        return 0
    print(
        f"vocab {report.vocab}, batch {report.batch}, {report.threads} thread(s), {report.steps} steps each"
    )
    for kind, value in report.ms.items():
        print(f"  {kind:>14}: {value:7.3f} ms/step")
    print(f"  fast path over the old argmax: {report.fast_path_overhead:+.1%}")
    print(f"  mixed / plain sampling time:   {report.mixed_over_plain:.2f}x")
    if report.structured_over_plain is not None:
        print(f"  mixed_structured / plain:      {report.structured_over_plain:.2f}x")
    if report.forward_ms is not None:
        print(f"  decode forward pass:           {report.forward_ms:.1f} ms/step")
        print(f"  plain rows' throughput, mixed vs all-plain batch: {report.plain_rows_throughput_ratio:.3f}")
        sampled = report.plain_rows_throughput_ratio_sampled
        print(f"  ... with the controlled half sampled (top-p): {sampled:.3f}")
        if report.plain_rows_throughput_ratio_structured is not None:
            ratio = report.plain_rows_throughput_ratio_structured
            print(f"  ... a third plain, a third penalised, a third JSON-constrained: {ratio:.3f}")
    if report.load_average is not None:
        print("  load average: " + ", ".join(f"{v:.2f}" for v in report.load_average))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
