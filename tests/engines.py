"""A real ``DeepSpeedEngine`` on its own event loop, for engine tests (started and stopped here)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from llmaas.config.catalog import ModelSpec
from llmaas.engine.deepspeed_engine import DeepSpeedEngine


def start_engine(path: Path, **spec: Any) -> tuple[DeepSpeedEngine, asyncio.AbstractEventLoop]:
    """The tiny chat Llama at ``path`` served by an engine whose catalog entry adds ``spec``."""
    model = ModelSpec.model_validate({"source": {"demo": "tiny-llama-chat"}, **spec})
    engine = DeepSpeedEngine(model, path)
    loop = asyncio.new_event_loop()
    loop.run_until_complete(engine.start())
    return engine, loop


def stop_engine(engine: DeepSpeedEngine, loop: asyncio.AbstractEventLoop) -> None:
    loop.run_until_complete(engine.shutdown())
    loop.close()
