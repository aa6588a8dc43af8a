"""Benchmark output: the run's JSON report, a PNG plot (every target against concurrency) and the
console summary (every level, TTFT by turn, interference, side-by-side ratios)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from llmaas.bench.suite import SuiteReport


def write_suite_json(path: Path, report: SuiteReport) -> None:
    path.write_text(report.model_dump_json(indent=2))


def _pair(a: float | None, b: float | None) -> str:
    return "-" if a is None or b is None else f"{a:.0f}/{b:.0f}"


def _num(value: float | None, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def format_levels(report: SuiteReport) -> list[str]:
    """One row per level of every target: throughput, goodput, latency p50/p99, cache hits."""
    lines = [
        f"{'target':<13}{'mode':<13}{'level':>6}{'ok':>6}{'err':>5}{'tok/s':>9}{'req/s':>8}{'good/s':>8}"
        f"{'TTFT p50/p99':>15}{'TPOT p50/p99':>15}{'ITL p50/p99':>15}{'e2e p50/p99':>15}{'cached':>8}"
    ]
    for name, levels in report.results.items():
        for r in levels:
            lines.append(
                f"{name:<13}{r.mode:<13}{r.level:>6g}{r.requests - r.errors:>6}{r.errors:>5}"
                f"{r.output_tok_s:>9.1f}{r.req_s:>8.2f}{_num(r.goodput_req_s):>8}"
                f"{_pair(r.ttft_p50_ms, r.ttft_p99_ms):>15}{_pair(r.tpot_p50_ms, r.tpot_p99_ms):>15}"
                f"{_pair(r.itl_p50_ms, r.itl_p99_ms):>15}{_pair(r.e2e_p50_ms, r.e2e_p99_ms):>15}"
                f"{_num(r.cache_hit_rate, '.1%'):>8}"
            )
    return lines


def format_workload(report: SuiteReport) -> list[str]:
    """Multi-turn TTFT by turn; the interference figures. Latencies in ms."""
    lines = []
    for name, levels in report.results.items():
        for r in levels:
            if r.turns:
                turns = ", ".join(
                    f"{t.turn}: {_num(t.ttft_p50_ms, '.0f')}/{_num(t.ttft_p99_ms, '.0f')}"
                    + (f" ({t.cache_hit_rate:.0%} cached)" if t.cache_hit_rate is not None else "")
                    for t in r.turns
                )
                lines.append(f"{name} {r.mode} {r.level:g}: TTFT p50/p99 ms by turn {{{turns}}}")
            if r.interference is not None:
                x = r.interference
                lines.append(
                    f"{name} interference: {x.decodes} decodes x {x.rounds} round(s), long prompt "
                    f"{x.long_prompt_tokens} tokens (TTFT {_num(x.long_ttft_ms, '.0f')} ms); decode gaps "
                    f"before p50 {_num(x.before_itl_p50_ms, '.1f')} ({x.before_gaps}), during p50/p99/max "
                    f"{_num(x.during_itl_p50_ms, '.1f')}/{_num(x.during_itl_p99_ms, '.1f')}/"
                    f"{_num(x.during_itl_max_ms, '.1f')} ({x.during_gaps}); p99 / p50 "
                    f"{_num(x.p99_over_p50)}; decode TPOT p50/p99 "
                    f"{_pair(x.decode_tpot_p50_ms, x.decode_tpot_p99_ms)}"
                )
    return lines


def format_comparison(report: SuiteReport) -> list[str]:
    """The side-by-side ratios (this / other) of every level both ran."""
    c = report.comparison
    if c is None:
        return []
    lines = [
        f"side by side: {c.this} / {c.other} ({c.other_source}); best closed-loop tok/s ratio "
        f"{_num(c.saturation_tok_s, '.3f')}",
        f"{'mode':<13}{'level':>6}{'err':>5}{'tok/s':>8}{'req/s':>8}{'good/s':>8}{'TTFT p50':>9}"
        f"{'TTFT p99':>9}{'TPOT p50':>9}{'ITL p99':>9}{'e2e p50':>9}  TTFT p50 by turn",
    ]
    for x in c.levels:
        turns = ", ".join(f"{k}: {_num(v, '.3f')}" for k, v in (x.ttft_p50_by_turn or {}).items())
        if x.interference_p99_over_p50 is not None:
            turns = f"interference p99/p50 ratio {x.interference_p99_over_p50:.3f}"
        lines.append(
            f"{x.mode:<13}{x.level:>6g}{x.errors:>5}{_num(x.output_tok_s, '.3f'):>8}{_num(x.req_s, '.3f'):>8}"
            f"{_num(x.goodput_req_s, '.3f'):>8}{_num(x.ttft_p50, '.3f'):>9}{_num(x.ttft_p99, '.3f'):>9}"
            f"{_num(x.tpot_p50, '.3f'):>9}{_num(x.itl_p99, '.3f'):>9}{_num(x.e2e_p50, '.3f'):>9}  {turns}"
        )
    return lines


def format_report(report: SuiteReport) -> str:
    """What ``llmaas bench`` prints: the levels, the workload's figures, the comparison, the summary."""
    lines = format_levels(report) + format_workload(report) + format_comparison(report)
    if report.limit:
        by_batch = ", ".join(f"{b}: {v:.0f}" for b, v in report.limit.tok_s_by_batch.items())
        lines.append(
            f"limit: static generate tok/s by batch size {{{by_batch}}}; "
            f"prefill p50 {report.limit.prefill_ms_p50} ms"
        )
    lines += [f"skipped {name}: {reason}" for name, reason in report.skipped.items()]
    lines += [f"  {key}: {value}" for key, value in report.summary.model_dump().items() if value is not None]
    return "\n".join(lines)


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
    turned = any(r.turns for levels in series.values() for r in levels)
    fig, axes = plt.subplots(1, 4 if turned else 3, figsize=(22 if turned else 17, 4.5))
    panels = (
        ("output tokens/s (higher is better)", "output_tok_s"),
        ("TTFT p50, ms (streaming targets)", "ttft_p50_ms"),
        ("end-to-end p50, ms", "e2e_p50_ms"),
    )
    # NOTE: one colour per target in every panel, also where a target has no points (TTFT of unary ones)
    colours = {name: f"C{i}" for i, name in enumerate(series)}
    for ax, (title, key) in zip(axes[:3], panels, strict=True):
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
    if turned:
        styles = ("-", "--", ":", "-.")
        for name, levels in series.items():
            for i, r in enumerate(levels):
                points = [(t.turn, t.ttft_p50_ms) for t in r.turns or [] if t.ttft_p50_ms is not None]
                if points:
                    axes[3].plot(
                        *zip(*points, strict=True),
                        marker="o",
                        color=colours[name],
                        linestyle=styles[i % len(styles)],
                        label=f"{name}, {r.level:g} streams",
                    )
        axes[3].set(title="TTFT p50 by turn, ms", xlabel="turn", yscale="log")
        axes[3].set_xticks(sorted({t.turn for v in series.values() for r in v for t in r.turns or []}))
        axes[3].grid(alpha=0.3)
        axes[3].legend(fontsize=7)
    fig.suptitle(
        f"llmaas bench: {report.model}, {report.config.workload} workload, "
        f"on {report.machine.get('cpus')} CPUs"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
