"""Baseline "naive": the per-request server that tutorials show.

A FastAPI app holding one ``transformers.pipeline("text-generation")``, built once at startup;
every ``POST /v1/completions`` is one pipeline call on that one prompt. The handler is a plain
``def``, so FastAPI runs it in its threadpool: concurrent requests each run their own
``generate`` at the same time in separate threads, sharing the model and the CPU, with no
batching at all. This is what "just wrap the model in FastAPI" gives, and the floor every serving
system should beat.

Non-streaming only (``stream: true`` is answered 400). ``ignore_eos`` maps to
``min_new_tokens=max_tokens``; ``temperature: 0`` is greedy. Token counts come from the tokenizer:
the prompt is counted as the pipeline encodes it (no special tokens added), and the completion by
re-encoding the pipeline's new text (``return_full_text=False``).

Run: ``python -m llmaas.bench.naive_server --model-dir DIR --port PORT [--host 127.0.0.1]``.
"""

from __future__ import annotations

import argparse
from typing import Any

from fastapi import FastAPI, HTTPException

from llmaas.bench.servers import CompletionRequest, completion_response


def load_pipeline(model_dir: str) -> Any:
    """The text-generation pipeline on ``model_dir``, on the CPU, as a tutorial builds it."""
    from transformers import pipeline

    return pipeline("text-generation", model=model_dir)


def generate_kwargs(request: CompletionRequest) -> dict[str, Any]:
    """Pipeline keyword arguments for one request."""
    kwargs: dict[str, Any] = {"max_new_tokens": request.max_tokens, "return_full_text": False}
    if request.temperature == 0:
        kwargs["do_sample"] = False
    else:
        kwargs.update(do_sample=True, temperature=request.temperature, top_p=request.top_p)
    if request.ignore_eos:
        kwargs["min_new_tokens"] = request.max_tokens
    return kwargs


def count_tokens(tokenizer: Any, text: str) -> int:
    """Tokens in ``text`` as the pipeline encodes a prompt (no special tokens added)."""
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def complete(pipe: Any, model_name: str, request: CompletionRequest) -> dict[str, Any]:
    """One blocking pipeline call, answered as an OpenAI text completion."""
    outputs = pipe(request.prompt, **generate_kwargs(request))
    text = str(outputs[0]["generated_text"])
    prompt_tokens = count_tokens(pipe.tokenizer, request.prompt)
    completion_tokens = count_tokens(pipe.tokenizer, text)
    finish_reason = "length" if request.ignore_eos or completion_tokens >= request.max_tokens else "stop"
    return completion_response(model_name, text, prompt_tokens, completion_tokens, finish_reason)


def build_app(model_dir: str) -> FastAPI:
    """The FastAPI app, its pipeline loaded now (once, at startup)."""
    pipe = load_pipeline(model_dir)
    app = FastAPI(title="naive transformers pipeline server")

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/completions")
    def completions(request: CompletionRequest) -> dict[str, Any]:
        if request.stream:
            raise HTTPException(status_code=400, detail="the naive baseline does not stream")
        return complete(pipe, request.model or model_dir, request)

    return app


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--model-dir", required=True, help="local Hugging Face model directory")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument(
        "--torch-threads", type=int, default=None, help="torch.set_num_threads (default: torch's own)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    args = parse_args(argv)
    if args.torch_threads is not None:
        import torch

        torch.set_num_threads(args.torch_threads)
    uvicorn.run(build_app(args.model_dir), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
