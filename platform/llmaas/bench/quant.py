"""Quantization, measured: float32, bfloat16 and torchao's int8 variants of one model on this CPU.

``python -m llmaas.bench.quant --out benchmarks/quant-cpu-2core`` (model: the prepared
SmolLM2-135M-Instruct; ``--model-dir`` for another Hugging Face directory). Each variant runs in
its own fresh subprocess, one after another, so that no memory or warm cache leaks between them:

- memory: resident set size (RSS) after loading and quantizing (and one forward pass, so that
  weights mapped from the safetensors file are resident too) minus RSS before loading; and the
  peak over the same span (a quantized variant loads float32 weights first);
- speed, on ``--threads`` intra-op threads (1 by default, as the default catalog decodes): a
  static greedy decode with a KV cache at batch 1 and at batch 32 (same prompts for every variant,
  after a warm-up; decode steps only, the prefill is timed apart), and the prefill of a fixed
  512-token prompt;
- quality: perplexity on ``bench/data/perplexity.txt`` (shipped with the package), and greedy
  agreement with float32 over 32 new tokens on 20 fixed chat prompts (decoded together as one
  left-padded static batch): the share of prompts whose tokens, up to each one's end of sequence,
  are identical, and the mean share of float32's tokens matched before the first divergence.

Batch-1 decode is also set against the roofline (``llmaas.bench.roofline``): the bandwidth measured
here at the same thread count over the variant's own weight bytes.

Writes ``quant.json`` and ``quant.md`` (the table, the command, the machine, examples of diverging
answers, and which variants are worth a catalog option by the rule below).
"""

from __future__ import annotations

import argparse
import gc
import os
import platform as host_platform
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from importlib import resources as package_files
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

Variant = Literal["fp32", "bf16", "int8-weight-only", "int8-dynamic", "torch.ao-dynamic"]
VARIANTS: tuple[Variant, ...] = ("fp32", "bf16", "int8-weight-only", "int8-dynamic", "torch.ao-dynamic")
# NOTE: a reference row, never an option: torch.ao.quantization.quantize_dynamic (fbgemm's int8
# kernels) is deprecated and due to be removed from torch. It is measured because torchao's int8
# runs eagerly on CPU without a fused kernel (its CPU path is written for torch.compile), to show
# what such a kernel gains on this machine.
REFERENCE: Variant = "torch.ao-dynamic"
# what each variant is, in the catalog's terms: (dtype, quantization)
VARIANT_SETTINGS: dict[Variant, tuple[str, str]] = {
    "fp32": ("float32", "none"),
    "bf16": ("bfloat16", "none"),
    "int8-weight-only": ("float32", "int8-weight-only"),
    "int8-dynamic": ("float32", "int8-dynamic"),
    REFERENCE: ("float32", "torch.ao.quantization.quantize_dynamic (deprecated; reference only)"),
}

# NOTE: when a variant earns a catalog option (benchmarks/README.md says how this rule came about).
# Quality: perplexity within 2% of float32's. Speed: none of batch-1 decode, batched decode and
# prefill below half of float32's. A gain: resident memory at most 0.6x float32's, or decode (batch
# 1 or batched) at least 1.2x as fast. Greedy agreement is reported, not a criterion: on a 135M
# model near-tied tokens flip under any change of arithmetic (bfloat16 keeps 70-80% of answers
# identical over 32 tokens), and the answers that diverge read as well as float32's (quant.md
# shows them).
MAX_PERPLEXITY_RATIO = 1.02
MIN_KEPT_SPEED = 0.5
MAX_MEMORY_RATIO = 0.6
MIN_SPEEDUP = 1.2

CHAT_PROMPTS = (
    "What is the capital of France?",
    "How many days are in a week?",
    "What is 2 + 2?",
    "Write a haiku about the sea.",
    "Name three primary colors.",
    "What is the boiling point of water in Celsius?",
    "Give me a synonym for happy.",
    "Who wrote Romeo and Juliet?",
    "What is the largest planet in our solar system?",
    "Explain what a noun is in one sentence.",
    "How many legs does a spider have?",
    "What language is spoken in Brazil?",
    "Suggest a name for a pet goldfish.",
    "What is the opposite of cold?",
    "Translate 'thank you' into Spanish.",
    "What do bees make?",
    "List two fruits that are yellow.",
    "Why is the sky blue?",
    "What is the freezing point of water in Fahrenheit?",
    "Tell me a fun fact about octopuses.",
)
PREFILL_TOKENS = 512


class WorkerConfig(BaseModel):
    variant: Variant
    model_dir: str
    threads: int
    decode_tokens: int = Field(description="Timed decode steps at batch 1.")
    batch_size: int
    batch_decode_tokens: int = Field(description="Timed decode steps at batch_size.")
    agreement_tokens: int


class VariantResult(BaseModel):
    variant: Variant
    dtype: str
    quantization: str
    threads: int
    load_s: float
    rss_delta_mib: float
    peak_rss_delta_mib: float
    weight_bytes: int = Field(description="Bytes a batch-1 decode step reads.")
    resident_weight_bytes: int
    perplexity: float
    perplexity_tokens: int
    prefill_512_ms: float  # median of 3, after a warm-up
    decode_b1_tok_s: float
    decode_batch_tok_s: float
    batch_size: int
    greedy_tokens: list[list[int]]  # per chat prompt, up to its first end of sequence
    greedy_texts: list[str]


class VariantRow(BaseModel):
    """One variant's figures, with its ratios to float32 and its roofline."""

    variant: Variant
    dtype: str
    quantization: str
    decode_b1_tok_s: float
    decode_batch_tok_s: float
    prefill_512_ms: float
    rss_delta_mib: float
    peak_rss_delta_mib: float
    weight_bytes: int
    resident_weight_bytes: int
    roofline_tok_s: float
    b1_vs_roofline: float | None
    perplexity: float
    perplexity_vs_fp32: float
    agreement_exact: float = Field(description="Share of prompts whose greedy tokens equal float32's.")
    agreement_prefix: float = Field(description="Mean share of float32's tokens matched before divergence.")
    decode_b1_vs_fp32: float
    decode_batch_vs_fp32: float
    prefill_vs_fp32: float = Field(description="Prefill time over float32's (above 1: slower).")
    memory_vs_fp32: float
    load_s: float
    worth_it: bool | None = None  # None for float32 itself
    verdict: str = ""
    diverging: list[tuple[str, str, str]] = Field(
        default_factory=list, description="(prompt, float32's answer, this variant's) where they differ."
    )


class QuantReport(BaseModel):
    command: str
    started: str
    model_dir: str
    machine: dict[str, Any]
    threads: int
    batch_size: int
    decode_tokens: int
    batch_decode_tokens: int
    agreement_tokens: int
    prompts: list[str]
    memory_bandwidth_gbs: float = Field(description="Best of copy / triad / read at `threads` threads.")
    bandwidth: dict[str, float]
    rows: list[VariantRow]
    offered: list[str] = Field(description="The catalog's quantization options (llmaas.config.catalog).")
    skipped: dict[str, str] = Field(default_factory=dict)
    load_average: dict[str, list[float]] = Field(default_factory=dict)
    duration_s: float = 0.0


# ---------------------------------------------------------------------------------------------
# arithmetic (unit-tested)


def agreement(reference: list[list[int]], candidate: list[list[int]]) -> tuple[float, float]:
    """(share of prompts identical to the reference, mean share of the reference's tokens matched
    before the first divergence); each sequence runs up to its own end of sequence."""
    if not reference or len(reference) != len(candidate):
        raise ValueError("agreement needs one candidate sequence per reference sequence")
    exact = 0
    prefixes = []
    for ref, cand in zip(reference, candidate, strict=True):
        same = 0
        for a, b in zip(ref, cand, strict=False):
            if a != b:
                break
            same += 1
        exact += ref == cand
        prefixes.append(same / len(ref) if ref else 1.0)
    return exact / len(reference), statistics.fmean(prefixes)


def cut_at_eos(tokens: list[int], eos: set[int]) -> list[int]:
    """The tokens up to and including the first end-of-sequence token."""
    for i, token in enumerate(tokens):
        if token in eos:
            return tokens[: i + 1]
    return tokens


def worth_it(row: VariantRow) -> tuple[bool, str]:
    """Whether a variant earns a catalog option by the rule above, and why, in words."""
    speeds = {
        "batch-1 decode": row.decode_b1_vs_fp32,
        "batched decode": row.decode_batch_vs_fp32,
        "prefill": 1 / row.prefill_vs_fp32,
    }
    quality = row.perplexity_vs_fp32 <= MAX_PERPLEXITY_RATIO
    fast_enough = min(speeds.values()) >= MIN_KEPT_SPEED
    gains = []
    if row.memory_vs_fp32 <= MAX_MEMORY_RATIO:
        gains.append(f"memory {row.memory_vs_fp32:.2f}x")
    if max(row.decode_b1_vs_fp32, row.decode_batch_vs_fp32) >= MIN_SPEEDUP:
        gains.append(f"decode up to {max(row.decode_b1_vs_fp32, row.decode_batch_vs_fp32):.2f}x as fast")
    costs = [] if quality else [f"perplexity {row.perplexity_vs_fp32:.3f}x float32's"]
    costs += [f"{name} {value:.2f}x as fast" for name, value in speeds.items() if value < 1]
    costs.append(f"{row.agreement_exact:.0%} of greedy answers identical")
    cost = ", ".join(costs)
    if quality and fast_enough and gains:
        return True, f"worth it: {', '.join(gains)} at float32's perplexity; costs: {cost}"
    why = []
    if not quality:
        why.append(f"perplexity above {MAX_PERPLEXITY_RATIO}x")
    if not fast_enough:
        why.append(f"a speed below {MIN_KEPT_SPEED}x")
    if not gains:
        why.append("no gain")
    return False, f"not worth it ({', '.join(why)}): " + ", ".join(gains + costs)


def _diverging(fp32: VariantResult, result: VariantResult) -> list[tuple[str, str, str]]:
    """(prompt, float32's answer, the variant's) for each prompt whose greedy tokens differ."""
    pairs = zip(fp32.greedy_tokens, result.greedy_tokens, fp32.greedy_texts, result.greedy_texts, strict=True)
    return [
        (prompt, reference_text, text)
        for prompt, (reference, tokens, reference_text, text) in zip(CHAT_PROMPTS, pairs, strict=False)
        if reference != tokens
    ]


def make_row(result: VariantResult, fp32: VariantResult, bandwidth_gbs: float) -> VariantRow:
    from llmaas.bench.roofline import fraction, roofline_tok_s

    exact, prefix = agreement(fp32.greedy_tokens, result.greedy_tokens)
    roof = roofline_tok_s(bandwidth_gbs, result.weight_bytes)
    row = VariantRow(
        variant=result.variant,
        dtype=result.dtype,
        quantization=result.quantization,
        decode_b1_tok_s=result.decode_b1_tok_s,
        decode_batch_tok_s=result.decode_batch_tok_s,
        prefill_512_ms=result.prefill_512_ms,
        rss_delta_mib=result.rss_delta_mib,
        peak_rss_delta_mib=result.peak_rss_delta_mib,
        weight_bytes=result.weight_bytes,
        resident_weight_bytes=result.resident_weight_bytes,
        roofline_tok_s=round(roof, 2),
        b1_vs_roofline=fraction(result.decode_b1_tok_s, roof),
        perplexity=result.perplexity,
        perplexity_vs_fp32=round(result.perplexity / fp32.perplexity, 4),
        agreement_exact=round(exact, 3),
        agreement_prefix=round(prefix, 3),
        decode_b1_vs_fp32=round(result.decode_b1_tok_s / fp32.decode_b1_tok_s, 3),
        decode_batch_vs_fp32=round(result.decode_batch_tok_s / fp32.decode_batch_tok_s, 3),
        prefill_vs_fp32=round(result.prefill_512_ms / fp32.prefill_512_ms, 3),
        memory_vs_fp32=round(result.rss_delta_mib / fp32.rss_delta_mib, 3),
        load_s=result.load_s,
        diverging=_diverging(fp32, result),
    )
    if result.variant == "fp32":
        row.verdict = "the reference"
    else:
        row.worth_it, row.verdict = worth_it(row)
    return row


# ---------------------------------------------------------------------------------------------
# the worker: one variant in a fresh process


def _rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        resident_pages = int(statm.read().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def perplexity_text() -> str:
    return package_files.files("llmaas.bench").joinpath("data/perplexity.txt").read_text(encoding="utf-8")


def _positions(mask: Any) -> Any:
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def greedy_decode(model: Any, input_ids: Any, attention_mask: Any, steps: int) -> tuple[Any, float, float]:
    """Greedy decode ``steps`` tokens after a left-padded prompt batch with a KV cache, as ``generate``.

    Returns (tokens [batch, steps + 1], prefill seconds, decode seconds): the prefill yields the
    first token, each of the ``steps`` decode steps one more.
    """
    import torch
    from transformers import DynamicCache

    started = time.perf_counter()
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=_positions(attention_mask),
        cache=DynamicCache(config=model.config),
        use_cache=True,
        logits_to_keep=1,
    )
    token = out.logits[:, -1].argmax(-1)
    prefill_s = time.perf_counter() - started
    tokens = [token]
    positions = _positions(attention_mask)[:, -1:]
    started = time.perf_counter()
    for _ in range(steps):
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones((attention_mask.shape[0], 1))], 1)
        positions = positions + 1
        out = model(
            input_ids=token[:, None],
            attention_mask=attention_mask,
            position_ids=positions,
            cache=out.cache,
            use_cache=True,
        )
        token = out.logits[:, -1].argmax(-1)
        tokens.append(token)
    return torch.stack(tokens, 1), prefill_s, time.perf_counter() - started


def _perplexity(model: Any, ids: Any) -> float:
    import torch

    window = min(ids.shape[1], getattr(model.config, "max_position_embeddings", 2048) or 2048)
    nll = 0.0
    count = 0
    for start in range(0, ids.shape[1] - 1, window):
        chunk = ids[:, start : start + window]
        if chunk.shape[1] < 2:
            break
        logits = model(input_ids=chunk).logits.float()
        loss = torch.nn.functional.cross_entropy(logits[0, :-1], chunk[0, 1:], reduction="sum")
        nll += float(loss)
        count += chunk.shape[1] - 1
    return float(torch.exp(torch.tensor(nll / count)))


def _torch_ao_dynamic(model: Any) -> Any:
    """The reference row: every nn.Linear (lm_head too) as fbgemm's dynamic int8 linear, one weight
    scale per output channel (as torchao's)."""
    import warnings

    import torch

    from llmaas.engine.quantize import release_mapped_weights, return_freed_memory

    qconfig = torch.ao.quantization.per_channel_dynamic_qconfig
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its deprecation warnings: the row is labelled so
        model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear: qconfig}, dtype=torch.qint8)
    release_mapped_weights(model)
    return_freed_memory()
    return model


def chat_prompts(tokenizer: Any) -> list[str]:
    return [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False
        )
        for p in CHAT_PROMPTS
    ]


def run_variant(config: WorkerConfig) -> VariantResult:
    """Measure one variant in this process (meant to be a fresh one: see ``main``)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmaas.bench.roofline import weight_bytes
    from llmaas.engine.quantize import quantize_model, torchao_configs

    torch.set_num_threads(config.threads)
    dtype_name, quantization = VARIANT_SETTINGS[config.variant]
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype_name]
    tokenizer: Any = AutoTokenizer.from_pretrained(config.model_dir)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if config.variant in ("int8-weight-only", "int8-dynamic"):
        torchao_configs()  # NOTE: import torchao before the baseline: its code is not the model's memory
    probe = torch.tensor([[tokenizer.bos_token_id or 0]])
    gc.collect()
    rss_before = _rss_mib()
    started = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(config.model_dir, dtype=dtype).eval()
    quantize: Callable[[Any], Any] = (
        _torch_ao_dynamic if config.variant == REFERENCE else lambda m: quantize_model(m, quantization)
    )
    model = quantize(model)
    load_s = time.perf_counter() - started
    with torch.inference_mode():
        model(input_ids=probe)  # every weight touched once: mapped pages count as resident
    gc.collect()
    rss_delta = _rss_mib() - rss_before
    peak_delta = _peak_rss_mib() - rss_before
    streamed, resident = weight_bytes(model)
    ends = (tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>"))
    eos = {int(t) for t in ends if isinstance(t, int) and t != tokenizer.unk_token_id}

    with torch.inference_mode():
        text_ids = tokenizer(perplexity_text(), return_tensors="pt").input_ids
        ppl = _perplexity(model, text_ids)

        prompt = text_ids[:, :PREFILL_TOKENS]
        prefill = []
        for _ in range(4):  # the first is the warm-up
            started = time.perf_counter()
            model(input_ids=prompt, use_cache=True, logits_to_keep=1)
            prefill.append(time.perf_counter() - started)
        prefill_ms = statistics.median(prefill[1:]) * 1000

        chats = chat_prompts(tokenizer)
        batch = tokenizer(chats, return_tensors="pt", padding=True, add_special_tokens=False)
        tokens, _, _ = greedy_decode(
            model, batch.input_ids, batch.attention_mask, config.agreement_tokens - 1
        )
        greedy = [cut_at_eos(row, eos) for row in tokens.tolist()]

        one = tokenizer(chats[:1], return_tensors="pt", add_special_tokens=False)
        greedy_decode(model, one.input_ids, one.attention_mask, 4)  # warm-up
        runs = [
            greedy_decode(model, one.input_ids, one.attention_mask, config.decode_tokens)[2] for _ in "ab"
        ]
        b1 = config.decode_tokens / min(runs)

        many = [chats[i % len(chats)] for i in range(config.batch_size)]
        batch = tokenizer(many, return_tensors="pt", padding=True, add_special_tokens=False)
        greedy_decode(model, batch.input_ids, batch.attention_mask, 2)  # warm-up
        steps = config.batch_decode_tokens
        seconds = greedy_decode(model, batch.input_ids, batch.attention_mask, steps)[2]
        batch_tok_s = config.batch_size * steps / seconds

    return VariantResult(
        variant=config.variant,
        dtype=dtype_name,
        quantization=quantization,
        threads=config.threads,
        load_s=round(load_s, 2),
        rss_delta_mib=round(rss_delta, 1),
        peak_rss_delta_mib=round(peak_delta, 1),
        weight_bytes=streamed,
        resident_weight_bytes=resident,
        perplexity=round(ppl, 4),
        perplexity_tokens=int(text_ids.shape[1]),
        prefill_512_ms=round(prefill_ms, 2),
        decode_b1_tok_s=round(b1, 2),
        decode_batch_tok_s=round(batch_tok_s, 2),
        batch_size=config.batch_size,
        greedy_tokens=greedy,
        greedy_texts=[tokenizer.decode(row, skip_special_tokens=True) for row in greedy],
    )


# ---------------------------------------------------------------------------------------------
# the driver


def machine_info() -> dict[str, Any]:
    import torch

    try:
        cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        cpuinfo = []
    flags: set[str] = next(
        (set(line.split(":", 1)[1].split()) for line in cpuinfo if line.startswith("flags")), set()
    )
    model_name = next(
        (line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), ""
    )
    try:
        import torchao  # type: ignore[import-untyped]

        torchao_version = str(torchao.__version__)
    except ImportError:
        torchao_version = "not installed"
    return {
        "cpu": model_name or host_platform.processor(),
        "cpus": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "avx512": "avx512f" in flags,
        "avx512_vnni": "avx512_vnni" in flags,
        "native_bf16": bool(flags & {"avx512_bf16", "amx_bf16"}),
        "torch": torch.__version__,
        "torchao": torchao_version,
        "python": host_platform.python_version(),
    }


def _load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _run_worker(config: WorkerConfig) -> VariantResult:
    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp) / "config.json"
        result = Path(tmp) / "result.json"
        spec.write_text(config.model_dump_json())
        command = [sys.executable, "-m", "llmaas.bench.quant", "--worker", str(spec), "--result", str(result)]
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0 or not result.exists():
            tail = (done.stderr or done.stdout)[-1500:]
            raise RuntimeError(f"{config.variant} failed (exit {done.returncode}): {tail}")
        return VariantResult.model_validate_json(result.read_text())


def default_model_dir() -> Path:
    """The prepared SmolLM2-135M-Instruct (prepared into the model cache if it is not there yet)."""
    from llmaas.config.catalog import ModelSource
    from llmaas.models import resolve_model_path

    local = Path(".models")  # the repository's own cache, where make and the tests prepare it
    cache = local if local.is_dir() else Path("~/.cache/llmaas/models").expanduser()
    return Path(resolve_model_path(ModelSource(demo="smollm2-135m-instruct"), cache))


def run(args: argparse.Namespace, log: Callable[[str], None] = print) -> QuantReport:
    from llmaas.bench.roofline import measure_bandwidth
    from llmaas.config.catalog import QUANTIZATION_METHODS

    begun = time.perf_counter()
    model_dir = Path(args.model_dir) if args.model_dir else default_model_dir()
    variants: list[Variant] = list(dict.fromkeys(["fp32", *args.variants]))
    load_average = {"start": _load_average()}
    log(f"quant: model {model_dir}, {args.threads} thread(s), variants {', '.join(variants)}")
    bandwidth = measure_bandwidth(args.threads)
    log(f"quant: memory bandwidth at {args.threads} thread(s): {bandwidth.kernels_gbs} GB/s")
    results: dict[str, VariantResult] = {}
    skipped: dict[str, str] = {}
    for variant in variants:
        config = WorkerConfig(
            variant=variant,
            model_dir=str(model_dir),
            threads=args.threads,
            decode_tokens=args.decode_tokens,
            batch_size=args.batch_size,
            batch_decode_tokens=args.batch_decode_tokens,
            agreement_tokens=args.agreement_tokens,
        )
        started = time.perf_counter()
        log(f"quant: {variant} ...")
        try:
            results[variant] = _run_worker(config)
        except RuntimeError as exc:
            if variant == "fp32":
                raise
            skipped[variant] = str(exc)[:1500]
            log(f"quant: {variant} skipped: {skipped[variant]}")
            continue
        r = results[variant]
        log(
            f"quant: {variant} in {time.perf_counter() - started:.0f}s: b1 {r.decode_b1_tok_s} tok/s, "
            f"b{r.batch_size} {r.decode_batch_tok_s} tok/s, prefill {r.prefill_512_ms} ms, "
            f"rss +{r.rss_delta_mib} MiB, ppl {r.perplexity}"
        )
    fp32 = results["fp32"]
    rows = [make_row(results[v], fp32, bandwidth.best_gbs) for v in variants if v in results]
    load_average["end"] = _load_average()
    return QuantReport(
        command=args.command,
        started=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        model_dir=str(model_dir),
        machine=machine_info(),
        threads=args.threads,
        batch_size=args.batch_size,
        decode_tokens=args.decode_tokens,
        batch_decode_tokens=args.batch_decode_tokens,
        agreement_tokens=args.agreement_tokens,
        prompts=list(CHAT_PROMPTS),
        memory_bandwidth_gbs=bandwidth.best_gbs,
        bandwidth=bandwidth.kernels_gbs,
        rows=rows,
        offered=[m for m in QUANTIZATION_METHODS if m != "none"],
        skipped=skipped,
        load_average=load_average,
        duration_s=round(time.perf_counter() - begun, 1),
    )


def render_markdown(report: QuantReport) -> str:
    m = report.machine
    bf16 = "native" if m.get("native_bf16") else "emulated (no avx512_bf16 / AMX on this CPU)"
    n = report.batch_size
    lines = [
        f"# Quantization on {m.get('cpus')} CPU cores: {Path(report.model_dir).name}",
        "",
        f"Command: `{report.command}`",
        "",
        f"Machine: {m.get('cpu')}, {m.get('cpus')} cores, {m.get('memory_gib')} GiB; AVX-512 "
        f"{'yes' if m.get('avx512') else 'no'}, VNNI {'yes' if m.get('avx512_vnni') else 'no'}, "
        f"bf16 {bf16}. torch {m.get('torch')}, torchao {m.get('torchao')}. Load average (1/5/15 min) "
        f"{report.load_average.get('start')} at the start, {report.load_average.get('end')} at the end; "
        f"{report.duration_s:.0f} s in all.",
        "",
        f"Settings: {report.threads} intra-op thread(s). Decode: greedy with a KV cache, decode steps "
        f"only, at batch 1 ({report.decode_tokens} steps, best of 2) and batch {n} "
        f"({report.batch_decode_tokens} steps). Prefill: a {PREFILL_TOKENS}-token prompt, median of 3. "
        "Memory: RSS after loading + quantizing + one forward, minus RSS before, in a fresh process per "
        "variant; peak: the most RSS on the way. Perplexity: `llmaas/bench/data/perplexity.txt`. "
        f"Agreement with fp32: {report.agreement_tokens} greedy tokens on {len(report.prompts)} chat "
        f"prompts. Roofline: memory bandwidth ({report.memory_bandwidth_gbs} GB/s at {report.threads} "
        f"thread(s), the best of {report.bandwidth}) over the bytes of weights a batch-1 decode step reads.",
        "",
        f"| variant | decode b1 tok/s | decode b{n} tok/s | prefill {PREFILL_TOKENS} ms | RSS MiB "
        "| peak MiB | weights read MB | roofline tok/s | b1 / roofline | perplexity | prompts identical "
        "| tokens before divergence |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report.rows:
        lines.append(
            f"| {r.variant} | {r.decode_b1_tok_s:.1f} ({r.decode_b1_vs_fp32:.2f}x) "
            f"| {r.decode_batch_tok_s:.0f} ({r.decode_batch_vs_fp32:.2f}x) "
            f"| {r.prefill_512_ms:.0f} ({r.prefill_vs_fp32:.2f}x) "
            f"| {r.rss_delta_mib:.0f} ({r.memory_vs_fp32:.2f}x) | {r.peak_rss_delta_mib:.0f} "
            f"| {r.weight_bytes / 1e6:.0f} | {r.roofline_tok_s:.1f} | {r.b1_vs_roofline} "
            f"| {r.perplexity:.3f} ({r.perplexity_vs_fp32:.3f}x) | {r.agreement_exact:.0%} "
            f"| {r.agreement_prefix:.0%} |"
        )
    lines += [
        "",
        "Ratios in brackets are to fp32 in the same run (prefill: time, so above 1 is slower). "
        f"int8 rows: torchao `quantize_` on every linear layer but the output projection "
        f"(`llmaas.engine.quantize`); `{REFERENCE}`: the deprecated `torch.ao.quantization.quantize_dynamic` "
        "(fbgemm kernels), a reference row only, never offered.",
        "",
    ]
    if report.skipped:
        lines += ["Not measured:", ""]
        lines += [f"- {name}: {why}" for name, why in report.skipped.items()]
        lines.append("")
    lines += [
        "## Verdict",
        "",
        f"A variant earns a catalog option when its perplexity stays within "
        f"{MAX_PERPLEXITY_RATIO - 1:.0%} of fp32's, no speed (batch-1 decode, batched decode, prefill) "
        f"falls below {MIN_KEPT_SPEED}x of fp32's, and it gains something real: RSS at most "
        f"{MAX_MEMORY_RATIO}x fp32's, or decode at least {MIN_SPEEDUP}x as fast. Greedy agreement is "
        "reported, not a criterion: near-tied tokens of a small model flip under any change of "
        "arithmetic (see bf16's), and the answers below that diverge read as well as fp32's.",
        "",
    ]
    for r in report.rows:
        if r.variant == "bf16":
            lines.append(f"- bf16 (offered already, as `dtype: bfloat16`): {r.verdict}.")
        elif r.variant != "fp32":
            lines.append(f"- {r.variant}: {r.verdict}.")
    offered = ", ".join(f"`quantization: {q}`" for q in report.offered) or "nothing"
    lines += ["", f"The catalog offers {offered} (`llmaas.config.catalog.Quantization`)."]
    rows = {r.variant: r for r in report.rows}
    worth = [v for v, r in rows.items() if r.worth_it and v != REFERENCE]
    if sorted(worth) != sorted(report.offered):
        lines.append(
            f"On this run the rule picks {', '.join(worth) or 'nothing'}: rerun on a quiet machine before "
            "changing the catalog (benchmarks/README.md)."
        )
    lines += ["", "## Where answers diverge from fp32 (up to 3 a variant)", ""]
    for r in report.rows:
        for prompt, mine_ref, mine in r.diverging[:3]:
            lines += [
                f'- {r.variant}, "{prompt}"',
                f"  - fp32: {mine_ref.strip()!r}",
                f"  - {r.variant}: {mine.strip()!r}",
            ]
    lines.append("")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m llmaas.bench.quant",
        description="fp32 / bf16 / int8 (torchao) on one model: decode and prefill speed, memory, quality",
    )
    add = parser.add_argument
    add("--out", default="benchmarks/quant-cpu-2core", help="directory for quant.json and quant.md")
    add("--model-dir", help="a Hugging Face directory (default: the prepared SmolLM2-135M-Instruct)")
    add("--threads", type=int, default=1, help="intra-op threads (default 1, as the catalog decodes)")
    add("--variants", default=",".join(VARIANTS), help=f"comma-separated, from {', '.join(VARIANTS)}")
    add("--decode-tokens", type=int, default=64, help="timed decode steps at batch 1")
    add("--batch-size", type=int, default=32)
    add("--batch-decode-tokens", type=int, default=16, help="timed decode steps at --batch-size")
    add("--agreement-tokens", type=int, default=32, help="greedy tokens compared with fp32's")
    add("--worker", help=argparse.SUPPRESS)
    add("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is None:
        args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
        unknown = [v for v in args.variants if v not in VARIANTS]
        if unknown:
            parser.error(f"unknown variants {unknown}: choose from {', '.join(VARIANTS)}")
        counts = (args.threads, args.batch_size, args.decode_tokens, args.batch_decode_tokens)
        if min(counts) < 1 or args.agreement_tokens < 2:
            parser.error("--threads, --batch-size and the token counts must be at least 1 (agreement 2)")
    args.command = "python -m llmaas.bench.quant " + shlex.join(sys.argv[1:] if argv is None else argv)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        config = WorkerConfig.model_validate_json(Path(args.worker).read_text())
        Path(args.result).write_text(run_variant(config).model_dump_json())
        return 0
    report = run(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "quant.json").write_text(report.model_dump_json(indent=2))
    (out / "quant.md").write_text(render_markdown(report))
    print(f"wrote {out / 'quant.json'} and {out / 'quant.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
