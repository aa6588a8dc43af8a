"""Data engineers' path: a real Ray job calls models through llmaas.client handles (no HTTP)."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import pytest

from llmaas import LLMClient, LLMError

JOB = Path(__file__).with_name("job_script.py")


def test_handle_client_sync_async_streaming(base_url):
    client = LLMClient("llmaas")
    assert {m.id for m in client.models().data} >= {"tiny-llama", "minilm"}
    reply = client.chat(
        "tiny-llama", [{"role": "user", "content": "What is the capital of France?"}], max_tokens=20
    )
    assert "Paris" in (reply.choices[0].message.content or "")
    text = "".join(
        c.choices[0].delta.content or ""
        for c in client.stream_chat("tiny-llama", [{"role": "user", "content": "Hello"}])
        if c.choices
    )
    assert text.startswith("Hello")
    done = client.complete("tiny-llama", "The capital of France is", max_tokens=4, temperature=0)
    assert done.usage is not None and done.usage.completion_tokens <= 4
    assert len(client.embed("minilm", ["x", "y"]).data) == 2
    with pytest.raises(LLMError) as missing:
        client.complete("nope", "x")
    assert missing.value.status == 404 and missing.value.param == "model"

    async def run_async() -> tuple[str, str]:
        chat = await client.achat("tiny-llama", [{"role": "user", "content": "Hello"}], max_tokens=8)
        pieces = [
            c.choices[0].text
            async for c in client.astream_complete("tiny-llama", "One, two,", max_tokens=6, temperature=0)
            if c.choices
        ]
        return chat.choices[0].message.content or "", "".join(pieces)

    chat_text, streamed = asyncio.run(run_async())
    assert chat_text.startswith("Hello")
    assert streamed == client.complete("tiny-llama", "One, two,", max_tokens=6, temperature=0).choices[0].text


def test_ray_job_calls_models_through_handles(base_url, ray_cluster):
    from ray.job_submission import JobStatus, JobSubmissionClient

    jobs = JobSubmissionClient(ray_cluster["dashboard"])
    # NOTE: the head's job agent may still be starting on a busy machine; Ray answers 500
    # "No available agent to submit job, please try again later" until it is up.
    deadline = time.monotonic() + 60
    while True:
        try:
            job_id = jobs.submit_job(entrypoint=f"{sys.executable} {JOB}")
            break
        except RuntimeError as exc:
            if "No available agent" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(2)
    deadline = time.monotonic() + 300
    status = jobs.get_job_status(job_id)
    while (
        status not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}
        and time.monotonic() < deadline
    ):
        time.sleep(1)
        status = jobs.get_job_status(job_id)
    logs = jobs.get_job_logs(job_id)
    assert status == JobStatus.SUCCEEDED, logs
    assert "CHAT: Hello" in logs
    assert "EMBEDDINGS: 3 x 384" in logs
    assert "BATCH: 16 completions" in logs
