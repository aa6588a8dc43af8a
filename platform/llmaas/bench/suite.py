"""The benchmark run: the platform's sweep, then the baselines on the same model, workload and machine.

One after another (never two at once, so none steals the others' cores):

- ``llmaas``: the platform over HTTP (closed-loop levels, then fixed-rate levels).
- ``limit``: the in-process limit, the best static-batch ``generate`` tokens/s (no serving).
- ``engine``: llmaas's engine driven in-process at the same levels (what the serving stack costs).
- ``naive``: one transformers pipeline call per HTTP request, as tutorials show.
- ``serve-batch``: Ray Serve with ``@serve.batch`` static batching around ``generate``.
- ``hf-serve``: Hugging Face's own OpenAI-compatible server, ``transformers serve``.
- ``roofline`` (whenever the model's directory is known): this machine's memory bandwidth and the
  served model's weight bytes, so that batch-1 decode can be read as a share of bandwidth / weight
  bytes (``llmaas.bench.roofline``).

Side by side: with a comparison target (another server, or the same model from another catalog or
with changed settings, deployed beside the platform under ``/compare``), every level runs on the
platform and then on it, back to back, and the report holds their ratios (``comparison``). The
baselines run the random workload only.

A baseline that cannot run here is recorded with the reason, not silently dropped.
"""

from __future__ import annotations

import asyncio
import os
import platform as host_platform
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch
import yaml
from pydantic import BaseModel, Field

from llmaas.bench.inprocess import StaticLimit, engine_sweep, static_limit
from llmaas.bench.loadgen import BenchConfig, LevelReport, Target, run_bench, run_targets
from llmaas.bench.metrics import Comparison, compare_levels
from llmaas.bench.roofline import Roofline, fraction
from llmaas.config.catalog import Catalog, ModelSpec

Baseline = Literal["limit", "engine", "naive", "serve-batch", "hf-serve"]
ALL_BASELINES: tuple[Baseline, ...] = ("limit", "engine", "naive", "serve-batch", "hf-serve")
SERVER_BASELINES: tuple[Baseline, ...] = ("naive", "serve-batch", "hf-serve")
UNARY = "llmaas-unary"  # the platform answering in one message, like the server baselines
COMPARE = "compare"  # the comparison target's name in results
COMPARE_PREFIX = "/compare"  # where a comparison catalog is deployed beside the platform


class Summary(BaseModel):
    """The issue's targets, as ratios from this one run."""

    saturation_tok_s: float | None = None  # the platform's best closed-loop level
    saturation_vs_limit: float | None = None  # target >= 0.9
    saturation_vs_engine: float | None = None  # the serving stack's share of the engine's best
    at_level: int | None = None  # the comparison level (32 when it was run)
    vs_naive: float | None = None  # target >= 10
    vs_best_batching_baseline: float | None = None  # target >= 1.5 (serve-batch, hf-serve)
    # the same two, with the platform answering in one message as the baselines do
    unary_vs_naive: float | None = None
    unary_vs_best_batching_baseline: float | None = None
    ttft_c1_p50_ms: float | None = None
    prefill_p50_ms: float | None = None
    ttft_c1_above_prefill_ms: float | None = None  # target <= 10
    # the roofline: batch-1 decode can at best read the weights once a token at memory bandwidth
    memory_bandwidth_gbs: float | None = None  # the best of copy / triad / read, 1 thread or all
    weight_bytes: int | None = None  # read by a batch-1 decode step, in the served dtype
    roofline_tok_s: float | None = None  # memory_bandwidth_gbs / weight_bytes
    static_b1_tok_s: float | None = None  # the limit's static generate at batch 1 (prefill included)
    static_b1_vs_roofline: float | None = None
    llmaas_c1_decode_tok_s: float | None = None  # 1000 / TPOT p50 of the platform at 1 stream
    llmaas_c1_vs_roofline: float | None = None
    # the workload's own figures (at at_level where a workload has levels)
    workload: str = "random"
    cache_hit_rate: float | None = None  # cached / prompt tokens over every level, where reported
    last_turn_ttft_p50_ms: float | None = None  # multi-turn
    decode_p99_over_p50: float | None = None  # long-prompt-interference: target <= 2
    # side by side: the platform's figure over the comparison target's
    vs_compare_saturation_tok_s: float | None = None  # e.g. cache on / off on random: target >= 0.97
    vs_compare_ttft_p50: float | None = None  # at at_level; e.g. shared prefix: target <= 0.3
    vs_compare_last_turn_ttft_p50: float | None = None  # multi-turn, at at_level: target <= 0.5
    vs_compare_decode_p99_over_p50: float | None = None  # long-prompt-interference


class SuiteReport(BaseModel):
    model: str
    model_dir: str
    machine: dict[str, str]
    config: BenchConfig
    baseline_concurrency: list[int]
    results: dict[str, list[LevelReport]] = Field(default_factory=dict)
    limit: StaticLimit | None = None
    roofline: Roofline | None = None
    skipped: dict[str, str] = Field(default_factory=dict)
    durations_s: dict[str, float] = Field(default_factory=dict)
    summary: Summary = Field(default_factory=Summary)
    comparison: Comparison | None = None


def machine() -> dict[str, str]:
    return {
        "cpus": str(os.cpu_count()),
        "processor": host_platform.processor() or host_platform.machine(),
        "torch": torch.__version__,
        "torch_threads": str(torch.get_num_threads()),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _levels(config: BenchConfig, levels: list[int]) -> BenchConfig:
    return config.model_copy(update={"concurrency": levels, "rate": []})


def _sweep_process(
    name: str,
    start: Callable[[int, Path], subprocess.Popen[bytes]],
    target: Callable[[str], Target],
    config: BenchConfig,
) -> list[LevelReport]:
    """Start a baseline server in a subprocess, sweep it, stop it."""
    from llmaas.bench.servers import default_log_path, stop_server, wait_ready

    port = free_port()
    log = default_log_path(name, port)
    process = start(port, log)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, timeout_s=300, process=process, log_path=log)
        return asyncio.run(run_bench(config, target(url)))
    finally:
        stop_server(process)


def run_naive(model_dir: Path, spec: ModelSpec, config: BenchConfig) -> list[LevelReport]:
    from llmaas.bench.servers import start_naive_server

    return _sweep_process(
        "naive",
        lambda port, log: start_naive_server(
            model_dir, port, torch_threads=spec.resources.threads, log_path=log
        ),
        lambda url: Target(name="naive", url=url, model=spec.id, stream=False),
        config,
    )


def kv_budget_tokens(model_dir: Path, spec: ModelSpec) -> int | None:
    """The tokens ``spec``'s ``kv_cache_bytes`` holds for the model at ``model_dir`` (None: unset)."""
    if spec.batching.kv_cache_bytes is None:
        return None
    from transformers import AutoConfig

    from llmaas.engine.kv_budget import KVBudget, context_length
    from llmaas.engine.runner import TORCH_DTYPES

    config = AutoConfig.from_pretrained(model_dir)
    dtype = TORCH_DTYPES[spec.torch_dtype_name]
    return KVBudget.for_model(spec, config, dtype, context_length(spec, config)).capacity_tokens


def run_hf_serve(model_dir: Path, spec: ModelSpec, config: BenchConfig) -> list[LevelReport]:
    from llmaas.bench.hf_serve import start_hf_serve

    # NOTE: its best mode (continuous batching), non-streaming (its faster wire format), with the
    # replica's threads and KV budget (sized from free memory, its cache took what Ray's store left)
    kv_tokens = kv_budget_tokens(model_dir, spec)
    return _sweep_process(
        "hf-serve",
        lambda port, log: start_hf_serve(
            model_dir, port, True, torch_threads=spec.resources.threads, log_path=log, kv_tokens=kv_tokens
        ),
        lambda url: Target(name="hf-serve", url=url, model=str(model_dir), stream=False, style="hf-serve"),
        config,
    )


def run_serve_batch(model_dir: Path, spec: ModelSpec, config: BenchConfig) -> list[LevelReport]:
    """Deploys next to the platform in the same Ray cluster and Serve proxy, then removes itself."""
    from ray import serve

    from llmaas.bench.serve_batch import APP_NAME, ROUTE_PREFIX, build_serve_batch_app
    from llmaas.launch import wait_running

    app = build_serve_batch_app(
        str(model_dir),
        max_batch_size=spec.batching.max_batch_size,
        num_cpus=spec.resources.num_cpus,
        torch_threads=spec.resources.threads,
    )
    serve.run(app, name=APP_NAME, route_prefix=ROUTE_PREFIX, blocking=False)
    try:
        wait_running(APP_NAME, timeout_s=300)
        target = Target(name="serve-batch", url=config.url + ROUTE_PREFIX, model=spec.id, stream=False)
        return asyncio.run(run_bench(config, target))
    finally:
        serve.delete(APP_NAME)


def summarize_roofline(report: SuiteReport, summary: Summary) -> None:
    """The roofline fields: batch-1 decode, static and through llmaas, as shares of the roofline."""
    if report.limit is not None:
        summary.static_b1_tok_s = report.limit.tok_s_by_batch.get(1)
    c1 = next((r for r in report.results.get("llmaas", []) if r.mode == "concurrency" and r.level == 1), None)
    if c1 is not None and c1.tpot_p50_ms:
        summary.llmaas_c1_decode_tok_s = round(1000 / c1.tpot_p50_ms, 2)
    roofline = report.roofline
    if roofline is None:
        return
    summary.memory_bandwidth_gbs = roofline.memory_bandwidth_gbs
    summary.weight_bytes = roofline.weight_bytes
    summary.roofline_tok_s = roofline.roofline_tok_s
    summary.static_b1_vs_roofline = fraction(summary.static_b1_tok_s, roofline.roofline_tok_s)
    summary.llmaas_c1_vs_roofline = fraction(summary.llmaas_c1_decode_tok_s, roofline.roofline_tok_s)


def summarize_suite(report: SuiteReport) -> Summary:
    ours = [r for r in report.results.get("llmaas", []) if r.mode == "concurrency"]
    summary = Summary(workload=report.config.workload)
    summarize_roofline(report, summary)
    summarize_workload(report, summary)
    if not ours:
        return summary
    best = max(r.output_tok_s for r in ours)
    summary.saturation_tok_s = best
    if report.limit:
        summary.saturation_vs_limit = round(best / report.limit.best_tok_s, 3)
        summary.prefill_p50_ms = report.limit.prefill_ms_p50
    engine = [r.output_tok_s for r in report.results.get("engine", []) if r.mode == "concurrency"]
    if engine:
        summary.saturation_vs_engine = round(best / max(engine), 3)

    def at(name: str, level: int) -> float | None:
        for r in report.results.get(name, []):
            if r.mode == "concurrency" and r.level == level and r.errors == 0:
                return r.output_tok_s
        return None

    level = 32 if at("llmaas", 32) is not None else int(max(r.level for r in ours))
    summary.at_level = level
    naive = at("naive", level)
    batching = [v for v in (at("serve-batch", level), at("hf-serve", level)) if v]
    for name, prefix in (("llmaas", ""), (UNARY, "unary_")):
        mine = at(name, level)
        if mine and naive:
            setattr(summary, f"{prefix}vs_naive", round(mine / naive, 2))
        if mine and batching:
            setattr(summary, f"{prefix}vs_best_batching_baseline", round(mine / max(batching), 2))
    c1 = next((r for r in ours if r.level == 1), None)
    if c1 and c1.ttft_p50_ms is not None:
        summary.ttft_c1_p50_ms = c1.ttft_p50_ms
        if summary.prefill_p50_ms is not None:
            summary.ttft_c1_above_prefill_ms = round(c1.ttft_p50_ms - summary.prefill_p50_ms, 3)
    summarize_comparison(report, summary, level)
    return summary


def summarize_workload(report: SuiteReport, summary: Summary) -> None:
    """The cache hit rate over the run, and each workload's own headline figure."""
    ours = report.results.get("llmaas", [])
    reported = [r for r in ours if r.cached_tokens is not None and r.cache_hit_rate is not None]
    prompt = sum(r.prompt_tokens for r in reported)
    if reported and prompt:
        summary.cache_hit_rate = round(sum(r.cached_tokens or 0 for r in reported) / prompt, 4)
    interference = next((r.interference for r in ours if r.interference is not None), None)
    if interference is not None:
        summary.decode_p99_over_p50 = interference.p99_over_p50
        if report.comparison is not None:
            summary.vs_compare_decode_p99_over_p50 = next(
                (x.interference_p99_over_p50 for x in report.comparison.levels if x.mode == "interference"),
                None,
            )


def summarize_comparison(report: SuiteReport, summary: Summary, level: int) -> None:
    """The side-by-side ratios at the summary's level, and the last turn's TTFT of a multi-turn run."""
    mine = next(
        (r for r in report.results.get("llmaas", []) if r.mode == "concurrency" and r.level == level), None
    )
    if mine is not None and mine.turns:
        summary.last_turn_ttft_p50_ms = mine.turns[-1].ttft_p50_ms
    comparison = report.comparison
    if comparison is None:
        return
    summary.vs_compare_saturation_tok_s = comparison.saturation_tok_s
    row = next((x for x in comparison.levels if x.mode == "concurrency" and x.level == level), None)
    if row is None:
        return
    summary.vs_compare_ttft_p50 = row.ttft_p50
    if row.ttft_p50_by_turn:
        summary.vs_compare_last_turn_ttft_p50 = row.ttft_p50_by_turn[max(row.ttft_p50_by_turn)]


def run_suite(
    config: BenchConfig,
    spec: ModelSpec | None,
    model_dir: Path | None,
    baselines: list[Baseline],
    baseline_concurrency: list[int],
    log: Callable[[str], None] = print,
    compare: Target | None = None,
    compare_source: str = "",
) -> SuiteReport:
    """The platform's sweep (beside ``compare`` when given), then the baselines, one after another."""
    if baselines and (spec is None or model_dir is None):
        raise ValueError("the baselines need the model's catalog entry and directory")
    if baselines and config.workload != "random":
        raise ValueError(f"the baselines run the random workload only, not {config.workload}")
    report = SuiteReport(
        model=config.model,
        model_dir=str(model_dir or ""),
        machine=machine(),
        config=config,
        baseline_concurrency=baseline_concurrency,
    )
    targets = [config.target(), *([compare] if compare is not None else [])]
    steps: list[tuple[str, Callable[[], None]]] = [
        ("llmaas", lambda: report.results.update(asyncio.run(run_targets(config, targets)))),
    ]
    if any(b in SERVER_BASELINES for b in baselines):
        # NOTE: the server baselines answer in one message (serve-batch cannot stream, hf-serve is
        # faster so); the platform is measured that way too, at their levels, to compare like for like.
        unary = Target(name=UNARY, url=config.url, model=config.model, stream=False)
        unary_levels = _levels(config, baseline_concurrency)
        steps.append(
            (UNARY, lambda: report.results.update({UNARY: asyncio.run(run_bench(unary_levels, unary))}))
        )
    if spec is not None and model_dir is not None:
        steps += [
            (name, _baseline_step(name, report, spec, model_dir, baseline_concurrency)) for name in baselines
        ]
        steps.append(("roofline", lambda: setattr(report, "roofline", _roofline(spec, model_dir))))
    for name, step in steps:
        _run_step(report, name, step, log)
    if compare is not None and compare.name in report.results:
        report.comparison = compare_levels(
            "llmaas", report.results["llmaas"], compare.name, report.results[compare.name], compare_source
        )
    report.summary = summarize_suite(report)
    return report


def parse_settings(items: list[str]) -> dict[str, Any]:
    """``["prefix_cache=false", "batching.max_batch_size=8"]`` -> a nested patch (values read as YAML).

    Raises ValueError naming an item that is not ``KEY=VALUE``.
    """
    patch: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts):
            raise ValueError(f"--compare-set {item!r}: write KEY=VALUE, e.g. batching.max_batch_size=8")
        node = patch
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ValueError(f"--compare-set {item!r}: {part!r} is set to a value above")
            node = child
        node[parts[-1]] = yaml.safe_load(value)
    return patch


def compare_catalog(base: Catalog, model: str, settings: dict[str, Any]) -> Catalog:
    """The comparison's catalog: ``model`` of ``base`` alone, with ``settings`` merged into its entry,
    under its own application name (so that it runs beside the platform, on replicas of its own).

    Raises ``CatalogEditError`` naming a setting the catalog refuses, ``CatalogModelNotFound``.
    """
    from llmaas.catalog_edit import patch_model
    from llmaas.errors import CatalogModelNotFound

    if base.get(model) is None:
        served = ", ".join(m.id for m in base.models)
        raise CatalogModelNotFound(f"the comparison catalog holds no model {model!r} (it holds {served})")
    changed = patch_model(base, model, settings) if settings else base
    spec = changed.get(model)
    assert spec is not None
    pools = {spec.pool: changed.pools[spec.pool]} if spec.pool else {}
    data = changed.model_dump(mode="json")
    data.update(
        models=[spec.model_dump(mode="json")],
        pools={k: v.model_dump(mode="json") for k, v in pools.items()},
        app_name=f"{base.app_name[:55]}-compare",
    )
    return Catalog.model_validate(data)


def deploy_compare(catalog: Catalog, url: str, timeout_s: float = 900.0) -> str:
    """Deploy the comparison catalog beside the running platform (Serve connected); its base URL."""
    from llmaas.deploy import apply_catalog
    from llmaas.launch import wait_catalog

    apply_catalog(catalog, route_prefix=COMPARE_PREFIX)
    wait_catalog(catalog, timeout_s)
    return url.rstrip("/") + COMPARE_PREFIX


def remove_compare(catalog: Catalog) -> None:
    """Delete the comparison catalog's applications from the running platform."""
    from ray import serve

    from llmaas.plan import plan_catalog

    for name in plan_catalog(catalog).app_names():
        serve.delete(name)


def _run_step(report: SuiteReport, name: str, step: Callable[[], None], log: Callable[[str], None]) -> None:
    log(f"bench: {name} ...")
    started = time.perf_counter()
    try:
        step()
    except Exception as exc:  # a baseline that cannot run here is reported, not fatal
        if name == "llmaas":
            raise
        report.skipped[name] = f"{type(exc).__name__}: {exc}"[:500]
        log(f"bench: {name} skipped: {report.skipped[name]}")
    report.durations_s[name] = round(time.perf_counter() - started, 1)


def _roofline(spec: ModelSpec, model_dir: Path) -> Roofline:
    from llmaas.bench.roofline import measure_roofline

    return measure_roofline(model_dir, spec.torch_dtype_name, spec.quantization)


def _baseline_step(
    name: Baseline, report: SuiteReport, spec: ModelSpec, model_dir: Path, levels: list[int]
) -> Callable[[], None]:
    config = report.config
    base = _levels(config, levels)
    runners: dict[Baseline, Callable[[], None]] = {
        "limit": lambda: setattr(
            report, "limit", static_limit(model_dir, spec, config, sorted({1, *config.concurrency, 128}))
        ),
        "engine": lambda: report.results.update(
            engine=engine_sweep(model_dir, spec, _levels(config, config.concurrency))
        ),
        "naive": lambda: report.results.update(naive=run_naive(model_dir, spec, base)),
        "serve-batch": lambda: report.results.update({"serve-batch": run_serve_batch(model_dir, spec, base)}),
        "hf-serve": lambda: report.results.update({"hf-serve": run_hf_serve(model_dir, spec, base)}),
    }
    return runners[name]
