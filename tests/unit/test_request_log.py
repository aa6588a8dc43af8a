"""The request log: one structured line per request with its id, never its text."""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging

import pytest

from llmaas.metrics import REQUEST_ID, FanOut, LogRecorder, RequestRecord, RequestRecorder, RequestTrace


class Collecting(RequestRecorder):
    def __init__(self) -> None:
        self.records: list[RequestRecord] = []

    def record(self, record: RequestRecord) -> None:
        self.records.append(record)


class Failing(RequestRecorder):
    def record(self, record: RequestRecord) -> None:
        raise RuntimeError("sink down")


def _record(**overrides: object) -> RequestRecord:
    fields: dict[str, object] = {
        "model": "m", "route": "/v1/completions", "status": 200, "prompt_tokens": 7,
        "generation_tokens": 5, "ttft_s": 0.0123, "tpot_s": 0.002, "e2e_s": 0.05,
        "request_id": "req-1", "stream": True,
    }  # fmt: skip
    fields.update(overrides)
    return RequestRecord(**fields)  # type: ignore[arg-type]


def test_one_json_line_with_id_model_tokens_status_and_latency(caplog: pytest.LogCaptureFixture):
    log = logging.getLogger("test.requests")
    with caplog.at_level(logging.INFO, logger="test.requests"):
        LogRecorder(log).record(_record())
    (line,) = caplog.records
    message = line.getMessage()
    assert message.startswith("llmaas request ")
    fields = json.loads(message.removeprefix("llmaas request "))
    assert fields == {
        "request_id": "req-1", "key_id": None, "model": "m", "route": "/v1/completions", "stream": True,
        "status": 200, "prompt_tokens": 7, "completion_tokens": 5, "ttft_ms": 12.3, "latency_ms": 50.0,
    }  # fmt: skip
    assert line.llmaas == fields  # type: ignore[attr-defined]  # for JSON log encodings


def test_the_log_holds_no_text_field():
    # NOTE: a record has no text to leak: the trace never sees prompt or completion strings
    assert not {"prompt", "text", "messages", "content", "input"} & set(_record().log_fields())


def test_trace_takes_the_request_id_from_the_context_or_makes_one():
    collected = Collecting()

    def run(request_id: str | None) -> RequestRecord:
        REQUEST_ID.set(request_id)
        RequestTrace(collected, "m", "/v1/completions").finish()
        return collected.records[-1]

    assert contextvars.copy_context().run(run, "from-header").request_id == "from-header"
    made = contextvars.copy_context().run(run, None).request_id
    other = contextvars.copy_context().run(run, None).request_id
    assert made and other and made != other


def test_request_ids_do_not_leak_between_concurrent_requests():
    collected = Collecting()

    async def request(request_id: str) -> None:
        REQUEST_ID.set(request_id)
        trace = RequestTrace(collected, "m", "/v1/completions")
        await asyncio.sleep(0.01)  # the other request sets its id meanwhile
        trace.finish()

    async def main() -> None:
        await asyncio.gather(request("a"), request("b"))

    asyncio.run(main())
    assert sorted(r.request_id for r in collected.records) == ["a", "b"]


def test_fan_out_reaches_every_sink_even_when_one_fails():
    first, last = Collecting(), Collecting()
    FanOut(first, Failing(), last).record(_record())
    assert len(first.records) == len(last.records) == 1
