"""The request log in the router replica's log file: the caller's X-Request-Id, no prompt text."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx

PROMPT = "zebra-quartz-lantern"  # a phrase no other log line holds


def _router_logs() -> list[Path]:
    import ray

    node = ray._private.worker.global_worker.node
    assert node is not None, "Ray is not initialized in this process"
    logs = Path(node.get_logs_dir_path()) / "serve"
    return sorted(logs.glob("replica_llmaas_router_*.log"))


def _request_lines(request_id: str, timeout_s: float = 30) -> list[dict[str, object]]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = []
        for path in _router_logs():
            for line in path.read_text(errors="replace").splitlines():
                _, marker, payload = line.partition("llmaas request ")
                if marker and f'"request_id": "{request_id}"' in payload:
                    found.append(json.loads(payload))
        if found:
            return found
        time.sleep(0.5)
    return []


def test_one_line_per_request_with_the_callers_id_and_no_text(http: httpx.Client):
    request_id = f"test-log-{time.time_ns()}"
    body = {"model": "tiny-llama", "prompt": PROMPT, "max_tokens": 5, "ignore_eos": True}
    response = http.post("/v1/completions", json=body, headers={"X-Request-Id": request_id})
    assert response.status_code == 200, response.text
    assert response.headers["x-request-id"] == request_id  # echoed
    usage = response.json()["usage"]

    (line,) = _request_lines(request_id)
    assert line["model"] == "tiny-llama" and line["route"] == "/v1/completions"
    assert line["status"] == 200 and line["stream"] is False
    assert (line["prompt_tokens"], line["completion_tokens"]) == (
        usage["prompt_tokens"],
        usage["completion_tokens"],
    )
    assert isinstance(line["latency_ms"], float) and line["latency_ms"] > 0
    logged = "\n".join(p.read_text(errors="replace") for p in _router_logs())
    assert PROMPT not in logged
    completion = response.json()["choices"][0]["text"]
    if len(completion.strip()) >= 12:  # long enough not to occur in a log by chance
        assert completion not in logged


def test_errors_are_logged_with_their_status(http: httpx.Client):
    request_id = f"test-log-error-{time.time_ns()}"
    response = http.post(
        "/v1/completions",
        json={"model": "tiny-llama", "prompt": PROMPT, "max_tokens": 5, "best_of": 3},
        headers={"X-Request-Id": request_id},
    )
    assert response.status_code == 400
    (line,) = _request_lines(request_id)
    assert line["status"] == 400 and line["completion_tokens"] == 0
