"""Baseline "hf-serve": Hugging Face's own OpenAI-compatible server, ``transformers serve`` (5.x CLI).

What was found (transformers 5.23.0, CPU, offline, local model directory):

- It runs here. Command: ``python -m transformers.cli.transformers serve MODEL_DIR --host H --port P
  --device cpu --dtype auto [--continuous-batching]`` (same as the ``transformers`` console script).
  Flags are spelled with dashes (``--continuous-batching``/``--no-continuous-batching``, ``--cb-*``
  tuning, ``--log-level``, ``--model-timeout``); the positional ``MODEL_DIR`` is the force-model
  (preloaded at startup, never unloaded, every request served by it).
- Dependencies: the serving extra (fastapi, uvicorn, pydantic, openai) must import, else it fails
  with ``ImportError: Missing dependencies for serving. Install with `pip install
  transformers[serving]```; llmaas has openai only through its ``test`` extra. It also needs
  ``accelerate`` (pure Python; installed here as accelerate 1.15.0, the only package added), since
  it always loads with a ``device_map``. Without it the load fails with ``ValueError: Using a
  `device_map`, `tp_plan`, `torch.device` context manager or setting
  `torch.set_default_device(device)` requires `accelerate`. You can install it with `pip install
  accelerate```. :func:`start_hf_serve` checks both first and raises ``RuntimeError``.
- Routes: ``POST /v1/completions`` (legacy completions, raw prompt, no chat template),
  ``/v1/chat/completions``, ``/v1/responses``, ``/v1/systemone``, ``/v1/audio/transcriptions``,
  ``GET /v1/models``, ``GET /health``.
- The ``model`` field: with a force-model it must be exactly the string given on the command line
  (here ``str(model_dir)``) or be left out; anything else is answered 400 "Server is pinned to
  ...". Without a force-model it names the directory to load on demand (``@revision`` is split
  off, so the path must not contain ``@``). Responses name the model ``"<dir>@main"``.
- No ``ignore_eos``: unknown fields are refused (422 "Unexpected fields in the request:
  {'ignore_eos'}"). Approximation used here: the body carries ``generation_config`` (a JSON
  string the server turns into the request's ``GenerationConfig``) with ``max_new_tokens =
  min_new_tokens = max_tokens`` and ``do_sample: false``. Sequential mode honours
  ``min_new_tokens`` (EOS suppressed); in continuous-batching mode only ``max_new_tokens`` and
  ``eos_token_id`` are per request, and a config without ``eos_token_id`` makes it disable EOS
  (logged "`eos_token_id` not set in GenerationConfig. Setting to -1 (disabled)"). Both gave exactly
  ``max_tokens`` completion tokens in every request tried. Continuous batching takes its shared
  sampling settings from the first request it sees.
- Streaming works (SSE); the last chunk always carries ``usage`` (``stream_options`` is accepted
  and ignored with a warning) and there is no ``data: [DONE]`` line: the stream just ends.
- ``--continuous-batching`` works on CPU (paged attention in plain torch). Rough numbers on the tiny
  test model, 8 concurrent requests of 16-40 tokens after one warm-up request, ``OMP_NUM_THREADS=1``,
  on a 2-core machine shared with other work: about 680 tok/s non-streaming (510 streaming) with
  continuous batching vs about 210 (160) sequential. Without the warm-up and with torch's default
  threads under contention both were far slower (about 14 and 20 tok/s): the first request pays
  for setting continuous batching up, so warm up before measuring.
- Sequential mode runs one ``model.generate`` at a time, on one inference thread, in arrival
  order: no batching at all.
- Memory: unless told its size (``--cb-num-blocks`` blocks of ``--cb-block-size`` tokens), the
  paged cache is sized from the memory free at startup; beside a running platform (whose Ray
  object store holds gigabytes of shared memory) the kernel's OOM killer ended it at 10.8 GB
  resident. The benchmark gives it the KV budget the catalog gives llmaas's replica.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from llmaas.bench.servers import default_log_path, offline_env, spawn

REQUIRED_MODULES = {
    "fastapi": "transformers[serving]",
    "uvicorn": "transformers[serving]",
    "openai": "transformers[serving]",
    "accelerate": "accelerate",
}


def missing_requirements() -> list[str]:
    """What ``transformers serve`` needs here and cannot import, as ``module (pip install X)``."""
    return [
        f"{module} (pip install {package})"
        for module, package in REQUIRED_MODULES.items()
        if importlib.util.find_spec(module) is None
    ]


KV_BLOCK_TOKENS = 32  # tokens per block of the continuous-batching paged cache


def hf_serve_command(
    model_dir: Path,
    port: int,
    continuous_batching: bool,
    host: str = "127.0.0.1",
    device: str = "cpu",
    kv_tokens: int | None = None,
) -> list[str]:
    """The ``transformers serve`` command line, pinned to ``model_dir``; with ``kv_tokens``, its
    continuous-batching cache holds that many tokens (else it sizes itself from free memory)."""
    cache = (
        [
            "--cb-block-size",
            str(KV_BLOCK_TOKENS),
            "--cb-num-blocks",
            str(max(1, kv_tokens // KV_BLOCK_TOKENS)),
        ]
        if continuous_batching and kv_tokens is not None
        else []
    )
    return [
        sys.executable,
        "-m",
        "transformers.cli.transformers",
        "serve",
        str(model_dir),
        "--host",
        host,
        "--port",
        str(port),
        "--device",
        device,
        "--dtype",
        "auto",
        "--continuous-batching" if continuous_batching else "--no-continuous-batching",
        "--log-level",
        "warning",
        *cache,
    ]


def start_hf_serve(
    model_dir: Path,
    port: int,
    continuous_batching: bool,
    host: str = "127.0.0.1",
    torch_threads: int | None = None,
    log_path: Path | None = None,
    kv_tokens: int | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``transformers serve`` on ``model_dir`` (offline, CPU) and return at once.

    Call :func:`llmaas.bench.servers.wait_ready` on ``http://{host}:{port}`` (``/health``) before
    sending load. ``torch_threads`` sets ``OMP_NUM_THREADS`` for the server process; ``kv_tokens``
    bounds its paged cache (see :func:`hf_serve_command`).
    """
    missing = missing_requirements()
    if missing:
        raise RuntimeError(
            "transformers serve cannot run here: missing "
            + ", ".join(missing)
            + " (see llmaas.bench.hf_serve)"
        )
    extra = {} if torch_threads is None else {"OMP_NUM_THREADS": str(torch_threads)}
    name = "hf-serve-cb" if continuous_batching else "hf-serve"
    return spawn(
        hf_serve_command(model_dir, port, continuous_batching, host, kv_tokens=kv_tokens),
        log_path or default_log_path(name, port),
        env=offline_env(**extra),
    )


def hf_serve_body(
    model_dir: Path | str, prompt: str, max_tokens: int, stream: bool = False
) -> dict[str, Any]:
    """A request for exactly ``max_tokens`` greedy tokens (``min_new_tokens`` in place of ``ignore_eos``)."""
    generation_config = {"max_new_tokens": max_tokens, "min_new_tokens": max_tokens, "do_sample": False}
    return {
        "model": str(model_dir),
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": stream,
        "generation_config": json.dumps(generation_config),
    }
