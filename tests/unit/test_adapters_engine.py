"""LoRA adapters on the base model's replica (issue 17): rows of one batch run different adapters,
each row's greedy output is the one of its adapter merged into the base, and adapters load and
unload between steps."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import torch

from llmaas.engine.deepspeed_engine import DeepSpeedEngine
from llmaas.engine.errors import EngineError
from llmaas.engine.types import AdapterRef, GenerationRequest, SamplingParams
from tests.engines import start_engine, stop_engine

PROMPTS = [[5, 17, 29, 41, 7, 19, 23, 31], [11, 23, 35, 47, 9, 3], [13, 19, 31, 43, 2 + 1, 8, 9]]


def _make_adapter(base: Path, out: Path, seed: int, rank: int = 4, targets: tuple[str, ...] = ()) -> Path:
    """A LoRA adapter with random (not zero) B matrices, so that it changes the base's answers."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    config = LoraConfig(
        r=rank, lora_alpha=2 * rank, target_modules=list(targets or ("q_proj", "v_proj", "up_proj"))
    )
    peft_model = get_peft_model(model, config)
    for name, param in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.5)
    peft_model.save_pretrained(str(out))
    return out


@pytest.fixture(scope="module")
def adapters(chat_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, AdapterRef]:
    root = tmp_path_factory.mktemp("adapters")
    # NOTE: ranks and layers differ: ft-c's rank is twice the others', on layers they leave alone
    shapes: dict[str, tuple[int, int, tuple[str, ...]]] = {
        "ft-a": (1, 4, ()),
        "ft-b": (2, 4, ()),
        "ft-c": (3, 8, ("o_proj", "down_proj", "gate_proj", "q_proj")),
    }
    paths = {
        name: _make_adapter(chat_model_path, root / name, seed, rank, targets)
        for name, (seed, rank, targets) in shapes.items()
    }
    return {name: AdapterRef(name=name, path=str(path)) for name, path in paths.items()}


@pytest.fixture(scope="module")
def engine(chat_model_path: Path):
    eng, loop = start_engine(chat_model_path, id="lora-base", batching={"batch_wait_ms": 20})
    yield eng, loop
    stop_engine(eng, loop)


async def _run(eng: DeepSpeedEngine, prompt: list[int], adapter: AdapterRef | None, **kw: Any):
    request = GenerationRequest(
        request_id="r",
        prompt_token_ids=prompt,
        sampling=SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True),
        adapter=adapter,
        **kw,
    )
    ids: list[int] = []
    cached = 0
    async for chunk in eng.generate(request):
        ids.extend(chunk.token_ids)
        cached = chunk.num_cached_tokens
    return ids, cached


def _merged_greedy(base: Path, adapter: AdapterRef | None, prompt: list[int]) -> list[int]:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter.path).merge_and_unload()
    ids = list(prompt)
    with torch.inference_mode():  # greedy, EOS included (the requests ignore it)
        for _ in range(12):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(prompt) :]


def test_a_mixed_batch_gives_each_row_its_merged_adapters_output(engine, adapters, chat_model_path):
    eng, loop = engine
    for ref in adapters.values():
        loop.run_until_complete(eng.load_adapter(ref))
    assert eng.health().adapters == sorted(adapters)
    rows = [(prompt, ref) for prompt in PROMPTS for ref in (None, *adapters.values())]

    async def together():
        return await asyncio.gather(*(_run(eng, prompt, ref) for prompt, ref in rows))

    mixed = [ids for ids, _ in loop.run_until_complete(together())]
    solo = [loop.run_until_complete(_run(eng, prompt, ref))[0] for prompt, ref in rows]
    assert mixed == solo
    for (prompt, ref), ids in zip(rows[:4], mixed[:4], strict=True):
        assert ids == _merged_greedy(chat_model_path, ref, prompt), ref
    base_ids = mixed[0]
    assert all(ids != base_ids for ids in mixed[1:4]), "each adapter changes the base's answer"


def test_an_adapters_prefix_cache_is_its_own(engine, adapters):
    eng, loop = engine
    ref = adapters["ft-a"]
    loop.run_until_complete(eng.load_adapter(ref))
    prompt = [(i * 37) % 700 + 3 for i in range(48)]
    base_first = loop.run_until_complete(_run(eng, prompt, None))
    adapter_first = loop.run_until_complete(_run(eng, prompt, ref))
    adapter_again = loop.run_until_complete(_run(eng, prompt, ref))
    assert adapter_first[1] == 0, "the base's cached KV is never an adapter's"
    assert adapter_again[1] > 0 and adapter_again[0] == adapter_first[0]
    assert base_first[0] != adapter_first[0]


def test_unloaded_once_unused_and_loaded_again(engine, adapters):
    eng, loop = engine
    ref = adapters["ft-b"]
    loop.run_until_complete(eng.load_adapter(ref))
    expected = loop.run_until_complete(_run(eng, PROMPTS[0], ref))[0]

    async def unload_while_running():
        stream = asyncio.create_task(_run(eng, PROMPTS[1], ref))
        await asyncio.sleep(0)
        eng.unload_adapter(ref.name)  # let go while a sequence uses it: unloaded when it ends
        result = await stream
        for _ in range(50):  # the unload runs between two steps of the model thread
            if ref.name not in eng.health().adapters:
                break
            await asyncio.sleep(0.02)
        return result

    running = loop.run_until_complete(unload_while_running())
    assert len(running[0]) == 12
    assert ref.name not in eng.health().adapters
    with pytest.raises(EngineError, match="not loaded"):
        loop.run_until_complete(_run(eng, PROMPTS[0], ref))
    loop.run_until_complete(eng.load_adapter(ref))
    assert loop.run_until_complete(_run(eng, PROMPTS[0], ref))[0] == expected


def test_a_bad_adapter_is_an_error_naming_it(engine, tmp_path):
    eng, loop = engine
    with pytest.raises(EngineError, match="adapter 'ft-missing' could not be loaded"):
        loop.run_until_complete(eng.load_adapter(AdapterRef(name="ft-missing", path=str(tmp_path))))
    assert loop.run_until_complete(_run(eng, PROMPTS[0], None))[0]


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"peft_type": "IA3"}, "it is a IA3 adapter, not LoRA"),
        ({"peft_type": "LORA", "use_dora": True}, "it sets use_dora=True"),
        ({"peft_type": "LORA", "modules_to_save": ["lm_head"]}, "it sets modules_to_save"),
        ({"peft_type": "LORA", "bias": "all"}, "it sets bias='all'"),
    ],
)
def test_what_only_merging_supports_is_refused_with_the_reason(tmp_path, config, message):
    import json

    from llmaas.engine.lora import UnsupportedAdapter, read_adapter

    (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedAdapter, match=message):
        read_adapter(tmp_path)
