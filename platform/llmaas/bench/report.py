"""Benchmark output: a JSON report and a PNG plot (throughput and latency per load level)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from llmaas.bench.loadgen import BenchConfig, LevelReport


def write_json(
    path: Path, config: BenchConfig, reports: list[LevelReport], extra: dict[str, Any] | None = None
) -> None:
    payload = {
        "config": config.model_dump(mode="json"),
        "levels": [r.model_dump() for r in reports],
        **(extra or {}),
    }
    path.write_text(json.dumps(payload, indent=2))


def write_plot(path: Path, reports: list[LevelReport], title: str) -> bool:
    """Throughput, TTFT and TPOT against concurrency; False when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    closed = [r for r in reports if r.mode == "concurrency"]
    if not closed:
        return False
    levels = [r.level for r in closed]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    axes[0].plot(levels, [r.output_tok_s for r in closed], marker="o")
    axes[0].set(title="output tokens/s", xlabel="concurrent streams", xscale="log")
    for name, key in (("TTFT", "ttft"), ("TPOT", "tpot")):
        ax = axes[1] if name == "TTFT" else axes[2]
        ax.plot(levels, [getattr(r, f"{key}_p50_ms") or 0 for r in closed], marker="o", label="p50")
        ax.plot(levels, [getattr(r, f"{key}_p99_ms") or 0 for r in closed], marker="x", label="p99")
        ax.set(title=f"{name} (ms)", xlabel="concurrent streams", xscale="log")
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
