"""Request and replica metrics without Ray: status classes, traces, the service's records, gauges."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest

from llmaas import metrics
from llmaas.config.catalog import Catalog
from llmaas.engine.types import (
    EngineHealth,
    FinishReason,
    GenerationChunk,
    GenerationRequest,
    ModelInfo,
)
from llmaas.metrics import (
    METRICS,
    STATUS_CLIENT_CLOSED,
    UNKNOWN_MODEL,
    MetricDef,
    RayRequestRecorder,
    ReplicaGauges,
    ReplicaLoad,
    RequestRecord,
    RequestRecorder,
    RequestTrace,
    status_of,
)
from llmaas.openai.errors import OpenAIError, bad_request
from llmaas.openai.protocol import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from llmaas.openai.service import ROUTE_CHAT, ROUTE_COMPLETIONS, ROUTE_EMBEDDINGS, OpenAIService


class Collecting(RequestRecorder):
    def __init__(self) -> None:
        self.records: list[RequestRecord] = []

    def record(self, record: RequestRecord) -> None:
        self.records.append(record)


# ---- definitions ---------------------------------------------------------------------------------


def test_names_are_unique_prefixed_and_counters_end_in_total():
    names = [m.name for m in METRICS]
    assert len(names) == len(set(names))
    for m in METRICS:
        assert m.name.startswith("llmaas_")
        assert "model" in m.tag_keys
        assert (m.kind == "counter") == m.name.endswith("_total")
        if m.kind == "histogram":
            assert list(m.boundaries) == sorted(set(m.boundaries))
            assert m.boundaries[0] > 0
        else:
            assert m.boundaries == ()


def test_prometheus_series_names():
    hist = MetricDef("llmaas_x_seconds", "histogram", "", ("model",), (1.0,))
    assert hist.prometheus_series() == (
        "ray_llmaas_x_seconds_bucket",
        "ray_llmaas_x_seconds_sum",
        "ray_llmaas_x_seconds_count",
    )
    assert metrics.REQUESTS.prometheus_series() == ("ray_llmaas_request_total",)


# ---- status classes --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "status"),
    [
        (None, 200),
        (bad_request("no"), 400),
        (OpenAIError(404, "gone"), 404),
        (OpenAIError(504, "slow"), 504),
        (asyncio.CancelledError(), STATUS_CLIENT_CLOSED),
        (GeneratorExit(), STATUS_CLIENT_CLOSED),
        (RuntimeError("boom"), 500),
        (KeyError("x"), 500),
    ],
)
def test_status_of(exc: BaseException | None, status: int):
    assert status_of(exc) == status


# ---- the no-op path ----------------------------------------------------------------------------------


def test_without_ray_the_recorder_records_nothing_and_ray_is_not_imported():
    code = (
        "import sys\n"
        "from llmaas.metrics import RequestRecorder, RequestTrace, default_request_recorder\n"
        "import llmaas.openai.service, llmaas.dashboards\n"
        "recorder = default_request_recorder()\n"
        "assert type(recorder) is RequestRecorder, recorder\n"
        "with RequestTrace(recorder, 'm', '/v1/completions', stream=True) as trace:\n"
        "    trace.first_token()\n"
        "    trace.tokens = [3]\n"
        "assert 'ray' not in sys.modules, 'importing llmaas metrics pulled in ray'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_service_defaults_to_the_no_op_recorder_without_ray():
    if "ray" in sys.modules and sys.modules["ray"].is_initialized():
        pytest.skip("Ray is initialized in this process")
    service = OpenAIService(_catalog(), FakeTokenizer(), {})
    assert type(service.metrics) is RequestRecorder


# ---- traces ------------------------------------------------------------------------------------------


def test_streamed_trace_times_first_token_and_tokens_after_it():
    recorder = Collecting()
    trace = RequestTrace(recorder, "m", ROUTE_COMPLETIONS, stream=True)
    trace.started -= 1.0
    trace.first_token()
    first = trace.first_token_at
    trace.first_token()  # kept once
    assert trace.first_token_at == first
    trace.prompt_tokens = 7
    trace.tokens = [5, 11]
    trace.finish()
    trace.finish(RuntimeError("late"))  # recorded once
    [record] = recorder.records
    assert record.status == 200
    assert (record.model, record.route) == ("m", ROUTE_COMPLETIONS)
    assert (record.prompt_tokens, record.generation_tokens) == (7, 16)
    assert record.ttft_s is not None
    assert 1.0 <= record.ttft_s <= record.e2e_s
    assert record.tpot_s is not None
    assert 0 <= record.tpot_s * 10 <= record.e2e_s - record.ttft_s + 1e-9  # over the longest choice


def test_unstreamed_trace_has_no_ttft_and_one_token_no_tpot():
    recorder = Collecting()
    with RequestTrace(recorder, "m", ROUTE_CHAT) as trace:
        trace.first_token()
        trace.tokens = [4]
    assert recorder.records[0].ttft_s is None
    assert recorder.records[0].tpot_s is None
    with RequestTrace(recorder, "m", ROUTE_CHAT, stream=True) as trace:
        trace.first_token()
        trace.tokens = [1]
    assert recorder.records[1].ttft_s is not None
    assert recorder.records[1].tpot_s is None


def test_trace_as_context_records_the_error_status():
    recorder = Collecting()
    with pytest.raises(OpenAIError), RequestTrace(recorder, "m", ROUTE_CHAT):
        raise OpenAIError(503, "busy")
    assert recorder.records[0].status == 503


# ---- the service's records -----------------------------------------------------------------------


def _catalog() -> Catalog:
    return Catalog.model_validate(
        {
            "models": [
                {"id": "gen", "source": {"demo": "tiny-llama-chat"}},
                {"id": "emb", "task": "embed", "source": {"demo": "all-minilm-l6-v2"}},
            ]
        }
    )


class FakeTokenizer:
    async def encode(self, model_id: str, texts: list[str], add_special_tokens: bool) -> list[list[int]]:
        return [[1 + (ord(c) % 50) for c in text] for text in texts]

    async def chat_template(
        self,
        model_id: str,
        messages: list[dict[str, Any]],
        add_generation_prompt: bool,
        tools: list[dict[str, Any]] | None = None,
    ) -> list[int]:
        self.rendered = (messages, tools)
        return [2] * sum(len(m["content"]) for m in messages)

    async def supports_tools(self, model_id: str) -> bool:
        return False

    async def parses_responses(self, model_id: str) -> bool:
        return False

    async def parse_response(
        self, model_id: str, prompt_ids: list[int], text: str, tools: list[dict[str, Any]] | None
    ) -> dict[str, Any]:
        raise AssertionError("no response template")

    async def token_strings(self, model_id: str, ids: list[int]) -> list[str]:
        return [f"<{i}>" for i in ids]

    async def decode(self, model_id: str, ids: list[int], skip_special_tokens: bool) -> str:
        return "".join(f"<{i}>" for i in ids)


class FakeModel:
    """Generates ``max_tokens`` tokens, one chunk each (one chunk in all when not streaming)."""

    def __init__(self, task: str = "generate") -> None:
        self.task = task

    async def info(self) -> ModelInfo:
        labels = ["no", "yes"] if self.task == "classify" else []
        return ModelInfo(
            model_id="x",
            task=self.task,
            max_context_length=64,
            vocab_size=100,
            embedding_dim=3,
            labels=labels,
        )

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        n = request.sampling.max_tokens
        if not request.stream:
            yield GenerationChunk(
                request_id=request.request_id,
                text="x" * n,
                token_ids=[5] * n,
                num_generated_tokens=n,
                finish_reason=FinishReason.LENGTH,
            )
            return
        for i in range(1, n + 1):
            await asyncio.sleep(0)
            yield GenerationChunk(
                request_id=request.request_id,
                text="x",
                token_ids=[5],
                num_generated_tokens=i,
                finish_reason=FinishReason.LENGTH if i == n else None,
            )

    async def embed(self, inputs: list[list[int]]) -> list[list[float]]:
        return [[0.0, 1.0, 0.0] for _ in inputs]

    async def classify(self, inputs: list[list[int]]) -> list[list[float]]:
        """Labels ["no", "yes"]: an input of an odd number of tokens is "yes" (0.9), else "no" (0.8)."""
        return [[0.1, 0.9] if len(ids) % 2 else [0.8, 0.2] for ids in inputs]


def _service() -> tuple[OpenAIService, Collecting]:
    recorder = Collecting()
    models: dict[str, Any] = {"gen": FakeModel(), "emb": FakeModel("embed")}
    return OpenAIService(_catalog(), FakeTokenizer(), models, metrics=recorder), recorder


def test_service_records_a_completion_like_its_usage():
    async def main() -> None:
        service, recorder = _service()
        reply = await service.completion(CompletionRequest(model="gen", prompt="hello", max_tokens=6, n=2))
        [record] = recorder.records
        assert (record.model, record.route, record.status) == ("gen", ROUTE_COMPLETIONS, 200)
        assert reply.usage is not None
        assert record.prompt_tokens == reply.usage.prompt_tokens == 5
        assert record.generation_tokens == reply.usage.completion_tokens == 12
        assert record.ttft_s is None  # one message at the end: no first-token time to tell

    asyncio.run(main())


def test_service_records_a_stream_with_ttft_and_tpot():
    async def main() -> None:
        service, recorder = _service()
        request = ChatCompletionRequest.model_validate(
            {
                "model": "gen",
                "messages": [{"role": "user", "content": "hey"}],
                "max_tokens": 4,
                "stream": True,
                "stream_options": {"include_usage": True},
            }
        )
        chunks = [c async for c in await service.chat_stream(request)]
        usage = chunks[-1].usage
        assert usage is not None
        [record] = recorder.records
        assert (record.route, record.status) == (ROUTE_CHAT, 200)
        assert (record.prompt_tokens, record.generation_tokens) == (usage.prompt_tokens, 4)
        assert record.ttft_s is not None
        assert record.tpot_s is not None
        assert record.ttft_s <= record.e2e_s

    asyncio.run(main())


def test_service_records_errors_with_their_status_and_bounded_model_tag():
    async def main() -> None:
        service, recorder = _service()
        with pytest.raises(OpenAIError):
            await service.completion(CompletionRequest(model="nope", prompt="hi"))
        with pytest.raises(OpenAIError):  # over the context: raised before any byte streams
            await service.completion_stream(
                CompletionRequest(model="gen", prompt="hi", max_tokens=500, stream=True)
            )
        with pytest.raises(OpenAIError):
            await service.embeddings(EmbeddingRequest(model="gen", input="hi"))
        got = [(r.model, r.route, r.status, r.prompt_tokens) for r in recorder.records]
        assert got == [
            (UNKNOWN_MODEL, ROUTE_COMPLETIONS, 404, 0),
            ("gen", ROUTE_COMPLETIONS, 400, 0),
            ("gen", ROUTE_EMBEDDINGS, 400, 0),
        ]

    asyncio.run(main())


def test_refusals_before_the_service_can_be_recorded():
    service, recorder = _service()
    service.record_refused(ROUTE_CHAT, "gen", bad_request("bad"))
    service.record_refused(ROUTE_CHAT, {"not": "a str"}, bad_request("bad"))
    got = [(r.model, r.route, r.status, r.prompt_tokens) for r in recorder.records]
    assert got == [("gen", ROUTE_CHAT, 400, 0), (UNKNOWN_MODEL, ROUTE_CHAT, 400, 0)]


def test_service_records_a_stream_closed_early_as_499_with_tokens_so_far():
    async def main() -> None:
        service, recorder = _service()
        stream = await service.completion_stream(
            CompletionRequest(model="gen", prompt="hello", max_tokens=10, stream=True)
        )
        seen = 0
        async for _ in stream:
            seen += 1
            if seen == 3:
                break
        await stream.aclose()  # type: ignore[attr-defined]
        [record] = recorder.records
        assert record.status == STATUS_CLIENT_CLOSED
        assert 3 <= record.generation_tokens < 10
        assert record.prompt_tokens == 5

    asyncio.run(main())


def test_service_records_embeddings_input_tokens():
    async def main() -> None:
        service, recorder = _service()
        reply = await service.embeddings(EmbeddingRequest(model="emb", input=["ab", "cde"]))
        [record] = recorder.records
        assert (record.route, record.status) == (ROUTE_EMBEDDINGS, 200)
        assert record.prompt_tokens == reply.usage.prompt_tokens == 5
        assert record.generation_tokens == 0

    asyncio.run(main())


# ---- the Ray recorder and gauges over fake metric objects --------------------------------------------


class FakeMetric:
    def __init__(self, definition: MetricDef) -> None:
        self.definition = definition
        self.calls: list[tuple[str, float, dict[str, str]]] = []

    def _check(self, method: str, value: float, tags: dict[str, str]) -> None:
        assert set(tags) == set(self.definition.tag_keys), (self.definition.name, tags)
        self.calls.append((method, value, tags))

    def inc(self, value: float, tags: dict[str, str]) -> None:
        assert self.definition.kind == "counter"
        assert value > 0  # Ray refuses zero increments
        self._check("inc", value, tags)

    def observe(self, value: float, tags: dict[str, str]) -> None:
        assert self.definition.kind == "histogram"
        self._check("observe", value, tags)

    def set(self, value: float, tags: dict[str, str]) -> None:
        assert self.definition.kind == "gauge"
        self._check("set", value, tags)


@pytest.fixture
def fake_metrics(monkeypatch: pytest.MonkeyPatch) -> dict[str, FakeMetric]:
    fakes = {m.name: FakeMetric(m) for m in METRICS}
    monkeypatch.setattr(metrics, "_created", dict(fakes))
    return fakes


def test_ray_recorder_tags_and_skips(fake_metrics: dict[str, FakeMetric]):
    recorder = RayRequestRecorder()
    recorder.record(RequestRecord("m", ROUTE_COMPLETIONS, 200, 7, 3, 0.1, 0.01, 0.2))
    recorder.record(RequestRecord("m", ROUTE_COMPLETIONS, 400, 0, 0, None, None, 0.001))
    assert fake_metrics["llmaas_request_total"].calls == [
        ("inc", 1, {"model": "m", "route": ROUTE_COMPLETIONS, "status": "200"}),
        ("inc", 1, {"model": "m", "route": ROUTE_COMPLETIONS, "status": "400"}),
    ]
    assert fake_metrics["llmaas_prompt_tokens_total"].calls == [("inc", 7, {"model": "m"})]
    assert fake_metrics["llmaas_generation_tokens_total"].calls == [("inc", 3, {"model": "m"})]
    # latency histograms: successful requests only
    assert fake_metrics["llmaas_time_to_first_token_seconds"].calls == [("observe", 0.1, {"model": "m"})]
    assert fake_metrics["llmaas_time_per_output_token_seconds"].calls == [("observe", 0.01, {"model": "m"})]
    assert fake_metrics["llmaas_e2e_request_latency_seconds"].calls == [("observe", 0.2, {"model": "m"})]


def test_ray_recorder_never_raises(fake_metrics: dict[str, FakeMetric]):
    def broken(value: float, tags: dict[str, str]) -> None:
        raise RuntimeError("exporter down")

    fake_metrics["llmaas_request_total"].inc = broken  # type: ignore[method-assign]
    RayRequestRecorder().record(RequestRecord("m", ROUTE_CHAT, 200, 1, 1, None, None, 0.1))


def test_replica_load_from_health():
    health = EngineHealth(healthy=True, running=3, waiting=2, kv_capacity_tokens=1000, kv_used_tokens=250)
    assert ReplicaLoad.from_health(health, max_batch_size=4) == ReplicaLoad(3, 2, 0.75, 0.25)
    empty = ReplicaLoad.from_health(EngineHealth(healthy=False, detail="loading"), max_batch_size=4)
    assert empty == ReplicaLoad(0, 0, 0.0, 0.0)


def test_replica_gauges_report_until_cancelled(fake_metrics: dict[str, FakeMetric]):
    reports = [
        EngineHealth(healthy=True, running=1, kv_capacity_tokens=100, kv_used_tokens=10),
        EngineHealth(healthy=True, running=2, waiting=1, kv_capacity_tokens=100, kv_used_tokens=50),
    ]

    async def main() -> None:
        given = asyncio.Event()

        def health() -> EngineHealth:
            if not reports:
                given.set()
                return EngineHealth(healthy=True)
            return reports.pop(0)

        gauges = ReplicaGauges("gen", max_batch_size=2)
        task = asyncio.create_task(gauges.report_forever(health, interval_s=0.001))
        await asyncio.wait_for(given.wait(), timeout=10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    running = [c[1] for c in fake_metrics["llmaas_num_requests_running"].calls]
    assert running[:2] == [1, 2]
    assert fake_metrics["llmaas_num_requests_waiting"].calls[1] == ("set", 1, {"model": "gen"})
    assert fake_metrics["llmaas_batch_usage_ratio"].calls[1][1] == 1.0
    assert fake_metrics["llmaas_kv_cache_usage_ratio"].calls[1][1] == 0.5
