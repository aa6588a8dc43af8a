"""Load generation against the OpenAI routes: closed-loop concurrency sweeps and fixed-rate runs."""

from llmaas.bench.loadgen import BenchConfig, LevelReport, RequestResult, run_bench, summarize

__all__ = ["BenchConfig", "LevelReport", "RequestResult", "run_bench", "summarize"]
