from __future__ import annotations

import random

from llmaas.bench import BenchConfig, RequestResult, summarize
from llmaas.bench.loadgen import make_requests


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
