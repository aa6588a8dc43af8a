"""Benchmark output: the run's JSON report and a PNG plot (every target against concurrency)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from llmaas.bench.suite import SuiteReport


def write_suite_json(path: Path, report: SuiteReport) -> None:
    path.write_text(report.model_dump_json(indent=2))


def write_suite_plot(path: Path, report: SuiteReport) -> bool:
    """Output tok/s, TTFT p50 and e2e p50 per target; False when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    series = {
        name: [r for r in levels if r.mode == "concurrency" and r.requests > r.errors]
        for name, levels in report.results.items()
    }
    series = {name: levels for name, levels in series.items() if levels}
    if not series:
        return False
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.5))
    panels = (
        ("output tokens/s (higher is better)", "output_tok_s"),
        ("TTFT p50, ms (streaming targets)", "ttft_p50_ms"),
        ("end-to-end p50, ms", "e2e_p50_ms"),
    )
    # NOTE: one colour per target in every panel, also where a target has no points (TTFT of unary ones)
    colours = {name: f"C{i}" for i, name in enumerate(series)}
    for ax, (title, key) in zip(axes, panels, strict=True):
        for name, levels in series.items():
            points = [(r.level, getattr(r, key)) for r in levels if getattr(r, key) is not None]
            if points:
                ax.plot(*zip(*points, strict=True), marker="o", label=name, color=colours[name])
        ax.set(title=title, xlabel="concurrent streams", xscale="log")
        ax.grid(alpha=0.3)
    if report.limit:
        axes[0].axhline(
            report.limit.best_tok_s,
            linestyle="--",
            color="gray",
            label=f"in-process limit (static batch {report.limit.best_batch_size})",
        )
    if report.roofline:
        axes[0].scatter(
            [1],
            [report.roofline.roofline_tok_s],
            marker="*",
            s=120,
            color="black",
            label=f"roofline at 1 stream ({report.roofline.memory_bandwidth_gbs:.0f} GB/s / weights)",
            zorder=3,
        )
    axes[0].legend(fontsize=8)
    axes[1].set_yscale("log")
    axes[2].set_yscale("log")
    fig.suptitle(f"llmaas bench: {report.model} on {report.machine.get('cpus')} CPUs")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
