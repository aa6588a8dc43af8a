"""The benchmark's load generator against the live test app: no errors, sane figures, files written."""

from __future__ import annotations

import json
from pathlib import Path

from llmaas.cli import main


def test_bench_command_writes_json_and_plot(base_url: str, tmp_path: Path):
    out = tmp_path / "bench"
    code = main(
        ["bench", "--url", base_url, "--model", "tiny-llama", "--concurrency", "1,4", "--rate", "20",
         "--requests", "8", "--prompt-min", "4", "--prompt-max", "8", "--output-min", "4",
         "--output-max", "8", "--out", str(out)]
    )  # fmt: skip
    assert code == 0
    report = json.loads((out / "bench.json").read_text())
    levels = report["results"]["llmaas"]
    assert [(lv["mode"], lv["level"]) for lv in levels] == [
        ("concurrency", 1),
        ("concurrency", 4),
        ("rate", 20),
    ]
    for level in levels:
        assert level["errors"] == 0 and level["requests"] == 8
        assert level["output_tok_s"] > 0 and level["ttft_p50_ms"] > 0
        assert level["e2e_p99_ms"] >= level["e2e_p50_ms"]
    assert (out / "bench.png").stat().st_size > 10_000
