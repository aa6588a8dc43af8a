from __future__ import annotations

import random

import pytest

from llmaas.bench import BenchConfig, LevelReport, RequestResult, summarize
from llmaas.bench.inprocess import StaticLimit
from llmaas.bench.loadgen import make_requests
from llmaas.bench.suite import SuiteReport, summarize_suite


def test_summary_counts_tokens_latencies_and_errors():
    results = [
        RequestResult(ok=True, status=200, ttft_s=0.1, e2e_s=1.1, completion_tokens=11),
        RequestResult(ok=True, status=200, ttft_s=0.3, e2e_s=2.3, completion_tokens=21),
        RequestResult(ok=False, status=503, e2e_s=0.01, error="overloaded"),
    ]
    report = summarize("concurrency", 2, results, duration_s=4.0)
    assert (report.requests, report.errors) == (3, 1)
    assert report.output_tok_s == 8.0  # 32 tokens in 4 s; failed requests add nothing
    assert report.req_s == 0.5
    assert report.ttft_p50_ms in (100.0, 300.0) and report.ttft_p99_ms == 300.0
    assert report.tpot_p50_ms == 100.0  # (1.1 - 0.1) / 10 and (2.3 - 0.3) / 20
    assert report.e2e_p99_ms == 2300.0


def test_requests_follow_the_configured_distributions():
    config = BenchConfig(model="m", prompt_words=(3, 5), output_tokens=(7, 9))
    bodies = make_requests(config, 50, random.Random(0))
    assert all(3 <= len(b["prompt"].split()) <= 5 for b in bodies)
    assert {b["max_tokens"] for b in bodies} <= {7, 8, 9}
    assert all(b["stream"] and b["ignore_eos"] for b in bodies)
    assert bodies == make_requests(config, 50, random.Random(0))  # seeded: rerunnable


def _level(level: int, tok_s: float, ttft_ms: float | None = None, errors: int = 0) -> LevelReport:
    return LevelReport(
        mode="concurrency", level=level, requests=8, errors=errors, duration_s=1.0, output_tok_s=tok_s,
        req_s=1.0, ttft_p50_ms=ttft_ms, ttft_p99_ms=ttft_ms, tpot_p50_ms=None, tpot_p99_ms=None,
        e2e_p50_ms=1.0, e2e_p99_ms=1.0,
    )  # fmt: skip


def test_suite_summary_states_the_targets_as_ratios():
    report = SuiteReport(
        model="m", model_dir="", machine={}, config=BenchConfig(model="m"), baseline_concurrency=[1, 32],
        results={
            "llmaas": [_level(1, 50, ttft_ms=40.0), _level(32, 300), _level(64, 360)],
            "engine": [_level(1, 55), _level(64, 400)],
            "llmaas-unary": [_level(1, 60), _level(32, 330)],
            "naive": [_level(1, 30), _level(32, 20)],
            "serve-batch": [_level(1, 20), _level(32, 150)],
            "hf-serve": [_level(1, 25), _level(32, 999, errors=1)],  # a level with errors is no comparison
        },
        limit=StaticLimit(
            output_tokens=80, tok_s_by_batch={64: 400.0}, best_tok_s=400.0, best_batch_size=64,
            prefill_ms_p50=35.0,
        ),
    )  # fmt: skip
    summary = summarize_suite(report)
    assert summary.saturation_tok_s == 360
    assert summary.saturation_vs_limit == 0.9 and summary.saturation_vs_engine == 0.9
    assert summary.at_level == 32
    assert summary.vs_naive == 15.0
    assert summary.vs_best_batching_baseline == 2.0
    assert summary.unary_vs_naive == 16.5 and summary.unary_vs_best_batching_baseline == 2.2
    assert summary.ttft_c1_above_prefill_ms == 5.0


def test_the_workload_summary_reads_the_comparison_at_the_summary_level():
    from llmaas.bench.metrics import TurnStats, compare_levels
    from llmaas.bench.report import format_report

    def level(ttft_ms: float, tok_s: float, cached: int | None) -> LevelReport:
        report = _level(32, tok_s, ttft_ms=ttft_ms)
        report.prompt_tokens, report.cached_tokens = 1000, cached
        report.cache_hit_rate = None if cached is None else cached / 1000
        report.turns = [
            TurnStats(turn=t, requests=8, errors=0, prompt_tokens_mean=100.0 * t, ttft_p50_ms=ttft_ms * t,
                      ttft_p90_ms=None, ttft_p99_ms=None)
            for t in (1, 4)
        ]  # fmt: skip
        return report

    on, off = [level(20.0, 300, 750)], [level(80.0, 310, None)]
    report = SuiteReport(
        model="m", model_dir="", machine={}, config=BenchConfig(model="m", workload="multi-turn"),
        baseline_concurrency=[], results={"llmaas": on, "compare": off},
        comparison=compare_levels("llmaas", on, "compare", off, "catalog off.yaml"),
    )  # fmt: skip
    summary = summarize_suite(report)
    assert summary.workload == "multi-turn" and summary.cache_hit_rate == 0.75
    assert summary.vs_compare_ttft_p50 == 0.25 and summary.vs_compare_last_turn_ttft_p50 == 0.25
    assert summary.vs_compare_saturation_tok_s == round(300 / 310, 3)
    assert summary.last_turn_ttft_p50_ms == 80.0
    report.summary = summary
    text = format_report(report)
    assert "side by side: llmaas / compare (catalog off.yaml)" in text
    assert "TTFT p50/p99 ms by turn {1: 20/-, 4: 80/-}" in text


def test_compare_settings_patch_the_benched_model_alone():
    from llmaas.api import load_catalog
    from llmaas.bench.suite import compare_catalog, parse_settings
    from llmaas.errors import CatalogEditError, CatalogModelNotFound

    patch = parse_settings(["batching.max_batch_size=8", "batching.stream_interval=1", "kernel_inject=false"])
    assert patch == {"batching": {"max_batch_size": 8, "stream_interval": 1}, "kernel_inject": False}
    base = load_catalog("bench")
    other = compare_catalog(base, "bench-llama", patch)
    assert other.app_name == "llmaas-compare" and [m.id for m in other.models] == ["bench-llama"]
    assert other.models[0].batching.max_batch_size == 8 and other.models[0].batching.stream_interval == 1
    assert base.get("bench-llama").batching.max_batch_size == 64  # type: ignore[union-attr]
    with pytest.raises(CatalogEditError, match=r"models\.0\.prefix_cache"):  # not a setting (yet)
        compare_catalog(base, "bench-llama", parse_settings(["prefix_cache=false"]))
    with pytest.raises(CatalogModelNotFound, match="no model 'nope'"):
        compare_catalog(base, "nope", {})
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_settings(["prefix_cache"])


def test_bench_refuses_option_mixes_before_starting_anything(capsys):
    from llmaas.cli import main

    assert main(["bench", "--model", "m", "--workload", "multi-turn", "--baselines", "naive"]) == 2
    assert "random workload only" in capsys.readouterr().err
    assert main(["bench", "--model", "m", "--goodput", "ttft=5"]) == 2
    assert "KEY:MILLISECONDS" in capsys.readouterr().err
    assert main(["bench", "--model", "m", "--compare-url", "http://x", "--compare-set", "a=1"]) == 2
    assert "--compare-url" in capsys.readouterr().err
    assert main(["bench", "--model", "m", "--output-min", "9", "--output-max", "3"]) == 2
    assert "output_tokens" in capsys.readouterr().err
