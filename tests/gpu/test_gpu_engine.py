"""GPU-only checks: bf16/fp16 DeepSpeed-inference, with and without kernel injection."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch

from llmaas.config.catalog import ModelSpec
from llmaas.engine.deepspeed_engine import DeepSpeedEngine
from llmaas.engine.types import GenerationRequest, SamplingParams

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_generation_on_gpu(chat_model_path: Path, dtype: str):
    spec = ModelSpec.model_validate(
        {"id": "g", "source": {"demo": "tiny-llama-chat"}, "dtype": dtype, "resources": {"num_gpus": 1}}
    )
    engine = DeepSpeedEngine(spec, chat_model_path)

    async def run() -> list[int]:
        await engine.start()
        request = GenerationRequest(
            request_id="g", prompt_token_ids=[1, 2, 3], sampling=SamplingParams(max_tokens=8, temperature=0.0)
        )
        ids = [t async for chunk in engine.generate(request) for t in chunk.token_ids]
        await engine.shutdown()
        return ids

    assert 1 <= len(asyncio.run(run())) <= 8
