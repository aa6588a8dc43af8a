"""Prometheus metrics per model: the definitions in one place, and the two recorders.

Metrics go through Ray's metrics API (``ray.serve.metrics``, which adds the ``deployment``,
``replica`` and ``application`` tags by itself); every node's metrics agent serves them as
Prometheus text on its metrics export port, with a ``ray_`` prefix, histograms as
``_bucket`` / ``_sum`` / ``_count`` series. Names follow vLLM's (``vllm:time_to_first_token_seconds``
becomes ``llmaas_time_to_first_token_seconds``); every series carries the ``model`` tag.

- Request metrics are recorded by ``OpenAIService`` (the one place that HTTP and handle
  callers both go through), once per request when it ends: one counter increment per metric,
  never one per token.
- Replica gauges (running and waiting sequences, batch and KV occupancy) are set by each
  model replica from its engine's ``health()`` every ``REPORT_INTERVAL_S``.

Ray metric objects are created lazily, only where Ray is initialized: importing this module,
and recording into the no-op recorder that unit tests get, needs no Ray.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
import uuid
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Literal

from llmaas.engine.types import EngineHealth

logger = logging.getLogger(__name__)

#: Ray prefixes every user metric with this in its Prometheus output.
RAY_PROMETHEUS_PREFIX = "ray_"
#: The ``model`` tag of a request for a model the catalog does not hold (bounds cardinality).
UNKNOWN_MODEL = "_unknown"
#: The ``status`` of a request whose caller went away (client disconnect, handle cancelled).
STATUS_CLIENT_CLOSED = 499
#: How often a replica copies its engine's health numbers into the gauges.
REPORT_INTERVAL_S = 1.0

MetricKind = Literal["counter", "gauge", "histogram"]


@dataclass(frozen=True)
class MetricDef:
    """One metric: its Ray name (the Prometheus name less ``ray_``), kind, tags and buckets."""

    name: str
    kind: MetricKind
    description: str
    tag_keys: tuple[str, ...]
    boundaries: tuple[float, ...] = ()

    @property
    def prometheus_name(self) -> str:
        return RAY_PROMETHEUS_PREFIX + self.name

    def prometheus_series(self) -> tuple[str, ...]:
        """The series names a scrape shows for this metric."""
        if self.kind == "histogram":
            return tuple(f"{self.prometheus_name}_{s}" for s in ("bucket", "sum", "count"))
        return (self.prometheus_name,)


# NOTE: buckets follow vLLM's, with finer low ends: a small model on a GPU answers in milliseconds.
_TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75,
    1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0,
)  # fmt: skip
_TPOT_BUCKETS = (
    0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5,
    0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
)  # fmt: skip
_E2E_BUCKETS = (
    0.01, 0.025, 0.05, 0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0,
    30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0,
)  # fmt: skip

REQUESTS = MetricDef(
    "llmaas_request_total",
    "counter",
    "Requests per model, route and HTTP status (499: the caller went away before the end).",
    ("model", "route", "status"),
)
PROMPT_TOKENS = MetricDef(
    "llmaas_prompt_tokens_total",
    "counter",
    "Prompt tokens of requests that reached the model (embeddings: input tokens).",
    ("model",),
)
GENERATION_TOKENS = MetricDef(
    "llmaas_generation_tokens_total",
    "counter",
    "Tokens generated, all choices, finished or not.",
    ("model",),
)
TIME_TO_FIRST_TOKEN = MetricDef(
    "llmaas_time_to_first_token_seconds",
    "histogram",
    "Time from the request's arrival at the router to its first generated text, successful requests.",
    ("model",),
    _TTFT_BUCKETS,
)
TIME_PER_OUTPUT_TOKEN = MetricDef(
    "llmaas_time_per_output_token_seconds",
    "histogram",
    "Time per generated token after the first (the longest choice), successful requests.",
    ("model",),
    _TPOT_BUCKETS,
)
E2E_LATENCY = MetricDef(
    "llmaas_e2e_request_latency_seconds",
    "histogram",
    "Time from the request's arrival at the router to its last byte, successful requests.",
    ("model",),
    _E2E_BUCKETS,
)
REQUESTS_RUNNING = MetricDef(
    "llmaas_num_requests_running",
    "gauge",
    "Sequences in the replica's running batch.",
    ("model",),
)
REQUESTS_WAITING = MetricDef(
    "llmaas_num_requests_waiting",
    "gauge",
    "Sequences admitted to the replica and waiting for a place in the batch or the KV cache.",
    ("model",),
)
BATCH_USAGE = MetricDef(
    "llmaas_batch_usage_ratio",
    "gauge",
    "Running sequences over the batch's max_batch_size (0..1).",
    ("model",),
)
KV_CACHE_USAGE = MetricDef(
    "llmaas_kv_cache_usage_ratio",
    "gauge",
    "KV-cache token slots held by the running batch over the budget's capacity (0..1).",
    ("model",),
)

REQUEST_METRICS = (
    REQUESTS,
    PROMPT_TOKENS,
    GENERATION_TOKENS,
    TIME_TO_FIRST_TOKEN,
    TIME_PER_OUTPUT_TOKEN,
    E2E_LATENCY,
)
REPLICA_METRICS = (REQUESTS_RUNNING, REQUESTS_WAITING, BATCH_USAGE, KV_CACHE_USAGE)
METRICS = REQUEST_METRICS + REPLICA_METRICS

#: Ray Serve's own series that the dashboard uses (replica counts per deployment).
RAY_SERVE_SERIES = (
    "ray_serve_deployment_replica_healthy",
    "ray_serve_autoscaling_target_replicas",
)


def prometheus_series() -> frozenset[str]:
    """Every series name llmaas itself exports."""
    return frozenset(s for m in METRICS for s in m.prometheus_series())


def ray_initialized() -> bool:
    """True in a Serve replica or a Ray driver; never imports Ray to find out."""
    ray = sys.modules.get("ray")
    return ray is not None and bool(ray.is_initialized())


_created: dict[str, Any] = {}


def _ray_metric(metric: MetricDef) -> Any:
    """The Ray metric object for ``metric``, created once per process (inside a replica, so that
    ``ray.serve.metrics`` can add the replica's tags)."""
    made = _created.get(metric.name)
    if made is None:
        from ray.serve import metrics as serve_metrics

        tag_keys: Any = metric.tag_keys  # Ray annotates Tuple[str] and takes any tuple of str
        if metric.kind == "counter":
            made = serve_metrics.Counter(metric.name, metric.description, tag_keys=tag_keys)
        elif metric.kind == "gauge":
            made = serve_metrics.Gauge(metric.name, metric.description, tag_keys=tag_keys)
        else:
            made = serve_metrics.Histogram(
                metric.name, metric.description, list(metric.boundaries), tag_keys=tag_keys
            )
        _created[metric.name] = made
    return made


# ---- request metrics ---------------------------------------------------------------------------
def status_of(exc: BaseException | None) -> int:
    """The HTTP status a request ended with: 200 without an error, the ``status`` of an error that
    carries one (``OpenAIError``), 499 when the caller went away (cancelled, or the stream
    closed before its end), 500 for anything else."""
    if exc is None:
        return 200
    status = getattr(exc, "status", None)
    if isinstance(status, int):
        return status
    if isinstance(exc, asyncio.CancelledError | GeneratorExit):
        return STATUS_CLIENT_CLOSED
    return 500


#: The id of the request being served (the router sets it from ``X-Request-Id``, which Serve's
#: proxy accepts from the client or makes up, and echoes in the response).
REQUEST_ID: ContextVar[str | None] = ContextVar("llmaas_request_id", default=None)
#: The id of the API key the current request came with (None: auth is off, or a handle caller).
KEY_ID: ContextVar[str | None] = ContextVar("llmaas_key_id", default=None)


def set_request_id(request_id: str | None, key_id: str | None = None) -> None:
    """The id of the request the current task serves (None: traces make one up), and its key's."""
    REQUEST_ID.set(request_id)
    KEY_ID.set(key_id)


def current_key_id() -> str | None:
    """The current request's API key id (None: no gateway, or a handle call)."""
    return KEY_ID.get()


def current_request_id() -> str | None:
    return REQUEST_ID.get()


@dataclass(frozen=True)
class RequestRecord:
    """What one finished request contributes to the metrics and the request log."""

    model: str
    route: str
    status: int
    prompt_tokens: int
    generation_tokens: int
    ttft_s: float | None
    tpot_s: float | None
    e2e_s: float
    request_id: str = ""
    stream: bool = False
    key_id: str | None = None
    cached: bool = False  # answered from the router's response cache

    def log_fields(self) -> dict[str, Any]:
        """The request log's fields. NOTE: never the prompt or the completion text."""
        return {
            "request_id": self.request_id,
            "key_id": self.key_id,
            "model": self.model,
            "route": self.route,
            "stream": self.stream,
            "status": self.status,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.generation_tokens,
            "ttft_ms": None if self.ttft_s is None else round(self.ttft_s * 1000, 1),
            "latency_ms": round(self.e2e_s * 1000, 1),
        }


class RequestRecorder:
    """Records finished requests; this base records nothing (unit tests, no Ray)."""

    def record(self, record: RequestRecord) -> None:
        """Called once per request, when it ends."""


class RayRequestRecorder(RequestRecorder):
    """Records into Ray's metrics; create it where Ray is initialized (a router replica)."""

    def __init__(self) -> None:
        self._requests = _ray_metric(REQUESTS)
        self._prompt = _ray_metric(PROMPT_TOKENS)
        self._generated = _ray_metric(GENERATION_TOKENS)
        self._ttft = _ray_metric(TIME_TO_FIRST_TOKEN)
        self._tpot = _ray_metric(TIME_PER_OUTPUT_TOKEN)
        self._e2e = _ray_metric(E2E_LATENCY)

    def record(self, record: RequestRecord) -> None:
        model = {"model": record.model}
        try:
            self._requests.inc(
                1, tags={"model": record.model, "route": record.route, "status": str(record.status)}
            )
            if record.prompt_tokens > 0:
                self._prompt.inc(record.prompt_tokens, tags=model)
            if record.generation_tokens > 0:
                self._generated.inc(record.generation_tokens, tags=model)
            if record.status == 200:
                if record.ttft_s is not None:
                    self._ttft.observe(record.ttft_s, tags=model)
                if record.tpot_s is not None:
                    self._tpot.observe(record.tpot_s, tags=model)
                self._e2e.observe(record.e2e_s, tags=model)
        except Exception:  # metrics must never fail a request
            logger.exception("recording request metrics failed")


class LogRecorder(RequestRecorder):
    """One structured line per request (JSON after ``llmaas request``) in the replica's log.

    NOTE: Serve writes the ``ray.serve`` logger to each replica's log file (and with
    ``logging_config: {encoding: JSON}`` as JSON records, with these fields under ``llmaas``).
    """

    def __init__(self, log: logging.Logger | None = None) -> None:
        self.log = log or logging.getLogger("ray.serve")

    def record(self, record: RequestRecord) -> None:
        fields = record.log_fields()
        self.log.info("llmaas request %s", json.dumps(fields), extra={"llmaas": fields})


class FanOut(RequestRecorder):
    """Every record to each of several recorders; one failing never stops the others."""

    def __init__(self, *recorders: RequestRecorder) -> None:
        self.recorders = recorders

    def record(self, record: RequestRecord) -> None:
        for recorder in self.recorders:
            try:
                recorder.record(record)
            except Exception:  # a sink must never fail a request
                logger.exception("recording a request failed")


def default_request_recorder() -> RequestRecorder:
    """Where Ray is initialized, Ray's metrics and the request log; else nothing (unit tests)."""
    return FanOut(RayRequestRecorder(), LogRecorder()) if ray_initialized() else RequestRecorder()


class RequestTrace:
    """One request's timings and token counts, kept by the service while it runs.

    Cheap on the request path: ``first_token`` and ``tokens`` are plain attribute updates;
    the recorder is called once, from ``finish``. Time to first token (and so time per output
    token) is kept for streamed requests only: a non-streamed one gets its whole answer in one
    message, so its first text comes at the end.
    """

    __slots__ = (
        "_done",
        "_recorder",
        "cached",
        "first_token_at",
        "key_id",
        "model",
        "prompt_tokens",
        "request_id",
        "route",
        "started",
        "stream",
        "tokens",
    )

    def __init__(self, recorder: RequestRecorder, model: str, route: str, stream: bool = False) -> None:
        self._recorder = recorder
        self._done = False
        self.model = model
        self.route = route
        self.stream = stream
        self.started = time.perf_counter()
        self.first_token_at: float | None = None
        self.prompt_tokens = 0
        self.tokens: list[int] = []  # generated tokens so far, per choice
        self.request_id = REQUEST_ID.get() or uuid.uuid4().hex
        self.key_id = KEY_ID.get()
        self.cached = False

    def __enter__(self) -> RequestTrace:
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        self.finish(exc)

    def first_token(self) -> None:
        """The first text or token reached the caller (kept once, streamed requests only)."""
        if self.first_token_at is None and self.stream:
            self.first_token_at = time.perf_counter()

    def finish(self, exc: BaseException | None = None) -> None:
        """Record the request once (later calls are ignored), with the status ``exc`` implies."""
        if self._done:
            return
        self._done = True
        end = time.perf_counter()
        ttft = tpot = None
        if self.first_token_at is not None:
            ttft = self.first_token_at - self.started
            longest = max(self.tokens, default=0)
            if longest > 1:
                tpot = (end - self.first_token_at) / (longest - 1)
        self._recorder.record(
            RequestRecord(
                model=self.model,
                route=self.route,
                status=status_of(exc),
                prompt_tokens=self.prompt_tokens,
                generation_tokens=sum(self.tokens),
                ttft_s=ttft,
                tpot_s=tpot,
                e2e_s=end - self.started,
                request_id=self.request_id,
                stream=self.stream,
                key_id=self.key_id,
                cached=self.cached,
            )
        )


# ---- replica gauges -----------------------------------------------------------------------------
@dataclass(frozen=True)
class ReplicaLoad:
    """The gauge values one engine health report gives."""

    running: int
    waiting: int
    batch_usage: float
    kv_usage: float

    @classmethod
    def from_health(cls, health: EngineHealth, max_batch_size: int) -> ReplicaLoad:
        batch = health.running / max_batch_size if max_batch_size > 0 else 0.0
        return cls(
            running=health.running,
            waiting=health.waiting,
            batch_usage=min(batch, 1.0),
            kv_usage=health.kv_usage or 0.0,
        )


class ReplicaGauges:
    """Sets one replica's gauges (Ray's metrics; create it inside the replica)."""

    def __init__(self, model: str, max_batch_size: int) -> None:
        self.model = model
        self.max_batch_size = max_batch_size
        self._tags = {"model": model}
        self._gauges = [
            _ray_metric(m) for m in (REQUESTS_RUNNING, REQUESTS_WAITING, BATCH_USAGE, KV_CACHE_USAGE)
        ]

    def update(self, health: EngineHealth) -> None:
        load = ReplicaLoad.from_health(health, self.max_batch_size)
        values = (load.running, load.waiting, load.batch_usage, load.kv_usage)
        for gauge, value in zip(self._gauges, values, strict=True):
            gauge.set(value, tags=self._tags)

    async def report_forever(
        self, health: Callable[[], EngineHealth], interval_s: float = REPORT_INTERVAL_S
    ) -> None:
        """Copy ``health()`` into the gauges every ``interval_s`` until cancelled."""
        while True:
            try:
                self.update(health())
            except Exception:  # a failed report must not end the loop
                logger.exception("updating replica gauges for %s failed", self.model)
            await asyncio.sleep(interval_s)
