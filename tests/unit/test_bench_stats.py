from __future__ import annotations

import random

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
