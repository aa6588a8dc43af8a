"""Shared plumbing for the benchmark's baseline servers: the request and response they speak, and
starting, waiting for and stopping a baseline that runs as its own process.

Every baseline answers the same non-streaming ``POST /v1/completions`` body the load generator
sends (``model``, ``prompt``, ``max_tokens``, ``temperature``, ``ignore_eos``, ``stream``) with an
OpenAI ``text_completion`` object whose ``usage`` holds the token counts the benchmark sums.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel, Field


class CompletionRequest(BaseModel):
    """The part of an OpenAI completions body the baselines read; other fields are ignored."""

    model: str = ""
    prompt: str
    max_tokens: int = Field(default=16, ge=1)
    temperature: float = Field(default=1.0, ge=0.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    ignore_eos: bool = False
    stream: bool = False


def completion_response(
    model: str, text: str, prompt_tokens: int, completion_tokens: int, finish_reason: str
) -> dict[str, Any]:
    """An OpenAI ``text_completion`` object with one choice and its usage."""
    return {
        "id": f"cmpl-{uuid.uuid4().hex}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def load_model(model_dir: str | Path, dtype: Any = None) -> tuple[Any, Any]:
    """Tokenizer (left padding, pad = EOS when the model has none) and model (eval mode)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer: Any = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).eval()
    return tokenizer, model


def offline_env(**extra: str) -> dict[str, str]:
    """This process's environment, with the Hugging Face Hub switched off (local directories only)."""
    env = dict(os.environ)
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"})
    env.update(extra)
    return env


def default_log_path(name: str, port: int) -> Path:
    """Where a baseline's stdout and stderr go unless the caller says otherwise."""
    return Path(tempfile.gettempdir()) / f"llmaas-bench-{name}-{port}.log"


def spawn(command: list[str], log_path: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start ``command`` with its output (both streams) appended to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        return subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env if env is not None else offline_env(),
        )


def start_naive_server(
    model_dir: Path,
    port: int,
    host: str = "127.0.0.1",
    torch_threads: int | None = None,
    log_path: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``python -m llmaas.bench.naive_server`` (one pipeline call per request) on ``port``.

    Returns at once; call :func:`wait_ready` on ``http://{host}:{port}`` before sending load.
    """
    command = [
        sys.executable,
        "-m",
        "llmaas.bench.naive_server",
        "--model-dir",
        str(model_dir),
        "--port",
        str(port),
        "--host",
        host,
    ]
    if torch_threads is not None:
        command += ["--torch-threads", str(torch_threads)]
    return spawn(command, log_path or default_log_path("naive", port))


def _log_tail(log_path: Path | None, chars: int = 2000) -> str:
    if log_path is None or not log_path.exists():
        return ""
    text = log_path.read_text(errors="replace")
    return f"\n--- last output ({log_path}) ---\n{text[-chars:]}"


def wait_ready(
    url: str,
    timeout_s: float,
    process: subprocess.Popen[bytes] | None = None,
    log_path: Path | None = None,
    health_path: str = "/health",
) -> None:
    """Poll ``{url}{health_path}`` until it answers 200.

    Raises ``RuntimeError`` when ``timeout_s`` passes first, or as soon as ``process`` (when given)
    exits; the error ends with the tail of ``log_path`` (when given).
    """
    deadline = time.monotonic() + timeout_s
    target = url.rstrip("/") + health_path
    last_error = "no answer yet"
    with httpx.Client(timeout=5.0) as client:
        while time.monotonic() < deadline:
            if process is not None and process.poll() is not None:
                raise RuntimeError(
                    f"server for {url} exited with code {process.returncode} before it was ready"
                    + _log_tail(log_path)
                )
            try:
                response = client.get(target)
                if response.status_code == 200:
                    return
                last_error = f"HTTP {response.status_code}: {response.text[:200]}"
            except httpx.HTTPError as exc:
                last_error = f"{type(exc).__name__}: {exc}"
            time.sleep(0.5)
    raise RuntimeError(f"{target} not ready after {timeout_s:.0f}s ({last_error})" + _log_tail(log_path))


def stop_server(process: subprocess.Popen[bytes], timeout_s: float = 15.0) -> int | None:
    """Stop a server started by :func:`spawn`: SIGTERM to it, SIGKILL after ``timeout_s``."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=timeout_s)
    return process.returncode
