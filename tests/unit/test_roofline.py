"""The roofline's arithmetic: bandwidth from bytes and seconds, weight bytes, and the summary's shares.

No timing is asserted: the bandwidth and decode rates come from the benchmark, not from tests.
"""

from __future__ import annotations

import pytest
import torch

from llmaas.bench import BenchConfig, LevelReport
from llmaas.bench.inprocess import StaticLimit
from llmaas.bench.roofline import (
    Bandwidth,
    Roofline,
    fraction,
    gbs,
    measure_bandwidth,
    roofline_tok_s,
    tensor_bytes,
    weight_bytes,
)
from llmaas.bench.suite import SuiteReport, summarize_suite


def test_kernels_count_the_bytes_they_move():
    gib = 2**30
    assert gbs("copy", gib, 1.0) == pytest.approx(2 * gib / 1e9)  # read a, write b
    assert gbs("triad", gib, 2.0) == pytest.approx(3 * gib / 2e9)  # read b and c, write a
    assert gbs("read", 10**9, 0.5) == pytest.approx(2.0)


def test_roofline_is_bandwidth_over_weight_bytes():
    assert roofline_tok_s(10.0, 500_000_000) == pytest.approx(20.0)  # 10 GB/s over 0.5 GB a token
    assert roofline_tok_s(13.5, 538_000_000) == pytest.approx(25.09, abs=0.01)
    with pytest.raises(ValueError, match="positive"):
        roofline_tok_s(10.0, 0)
    assert fraction(12.5, 25.0) == 0.5
    assert fraction(None, 25.0) is None and fraction(12.5, None) is None


def test_bandwidth_measurement_reports_every_kernel_and_its_best():
    measured = measure_bandwidth(threads=1, size_mib=8, repeats=2)
    assert set(measured.kernels_gbs) == {"copy", "triad", "read"}
    assert all(value > 0 for value in measured.kernels_gbs.values())
    assert measured.best_gbs == max(measured.kernels_gbs.values())
    assert measured.threads == 1 and measured.size_mib == 8


class _TiedLM(torch.nn.Module):
    """An embedding, one hidden layer with a norm, and an output projection tied to the embedding."""

    def __init__(self, vocab: int = 100, hidden: int = 8, tied: bool = True) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, hidden)
        self.norm = torch.nn.LayerNorm(hidden)
        self.proj = torch.nn.Linear(hidden, hidden, bias=False)
        self.head = torch.nn.Linear(hidden, vocab, bias=False)
        if tied:
            self.head.weight = self.embed.weight


def test_weight_bytes_counts_what_a_decode_step_reads_each_parameter_once():
    norm = 2 * 8 * 4  # weight and bias
    proj = 8 * 8 * 4
    table = 100 * 8 * 4
    # tied: the head reads the whole table every step, so it counts once, as streamed
    assert weight_bytes(_TiedLM(tied=True)) == (norm + proj + table, norm + proj + table)
    # untied: the embedding is only gathered (one row a token), the head is read in full
    assert weight_bytes(_TiedLM(tied=False)) == (norm + proj + table, norm + proj + 2 * table)
    # the served dtype decides the bytes
    assert weight_bytes(_TiedLM().to(torch.bfloat16))[0] == (norm + proj + table) // 2


def test_quantized_weights_count_their_int8_values_and_scales():
    pytest.importorskip("torchao")
    from llmaas.engine.quantize import quantize_model

    model = torch.nn.Sequential(torch.nn.Linear(64, 32, bias=False))
    quantize_model(model, "int8-weight-only")
    weight = model[0].weight
    assert type(weight) is not torch.Tensor  # a torchao tensor subclass
    streamed, _ = weight_bytes(model)
    assert 32 * 64 < streamed <= 32 * 64 + 32 * 8  # int8 values plus one scale per output row
    assert tensor_bytes(torch.zeros(3, 4, dtype=torch.float16)) == 24


def _c1(tpot_ms: float) -> LevelReport:
    return LevelReport(
        mode="concurrency", level=1, requests=8, errors=0, duration_s=1.0, output_tok_s=10.0, req_s=1.0,
        ttft_p50_ms=50.0, ttft_p99_ms=60.0, tpot_p50_ms=tpot_ms, tpot_p99_ms=tpot_ms,
        e2e_p50_ms=1.0, e2e_p99_ms=1.0,
    )  # fmt: skip


def test_suite_summary_sets_batch_1_decode_against_the_roofline():
    roofline = Roofline(
        memory_bandwidth_gbs=12.0,
        bandwidth=[
            Bandwidth(threads=1, size_mib=256, kernels_gbs={"copy": 11.0, "triad": 12.0, "read": 10.0})
        ],
        weight_bytes=400_000_000,
        resident_weight_bytes=500_000_000,
        dtype="float32",
        roofline_tok_s=roofline_tok_s(12.0, 400_000_000),  # 30 tok/s
    )
    report = SuiteReport(
        model="m", model_dir="", machine={}, config=BenchConfig(model="m"), baseline_concurrency=[1],
        results={"llmaas": [_c1(tpot_ms=50.0)]},  # 20 tok/s between tokens
        limit=StaticLimit(
            output_tokens=80, tok_s_by_batch={1: 24.0, 32: 300.0}, best_tok_s=300.0, best_batch_size=32,
            prefill_ms_p50=35.0,
        ),
        roofline=roofline,
    )  # fmt: skip
    summary = summarize_suite(report)
    assert summary.memory_bandwidth_gbs == 12.0 and summary.weight_bytes == 400_000_000
    assert summary.roofline_tok_s == pytest.approx(30.0)
    assert summary.static_b1_tok_s == 24.0 and summary.static_b1_vs_roofline == 0.8
    assert summary.llmaas_c1_decode_tok_s == 20.0
    assert summary.llmaas_c1_vs_roofline == pytest.approx(0.667)
    # the other fields are still there
    assert summary.saturation_tok_s == 10.0 and summary.prefill_p50_ms == 35.0


def test_suite_summary_without_a_roofline_leaves_its_fields_empty():
    report = SuiteReport(
        model="m", model_dir="", machine={}, config=BenchConfig(model="m"), baseline_concurrency=[1],
        results={"llmaas": [_c1(tpot_ms=40.0)]},
    )  # fmt: skip
    summary = summarize_suite(report)
    assert summary.llmaas_c1_decode_tok_s == 25.0
    assert summary.roofline_tok_s is None and summary.llmaas_c1_vs_roofline is None
    assert Roofline.model_validate_json(
        Roofline(
            memory_bandwidth_gbs=1.0, bandwidth=[], weight_bytes=1, resident_weight_bytes=1,
            dtype="float32", roofline_tok_s=1e9,
        ).model_dump_json()
    ).quantization == "none"  # fmt: skip
