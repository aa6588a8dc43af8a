"""Structured output below the engine contract: compiling specs, bounds, matchers and the batched mask."""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from pathlib import Path
from typing import Annotated, Literal

import jsonschema
import pytest
import torch
from pydantic import BaseModel, ConfigDict, Field
from transformers import AutoTokenizer

from llmaas.engine.errors import EngineOverloaded, InvalidStructuredOutput
from llmaas.engine.guided import CompiledGrammar, GrammarCompiler, GuidedLimits, apply_grammar_masks
from llmaas.engine.types import StructuredOutput

EOS = 2


class Address(BaseModel):
    model_config = ConfigDict(extra="forbid")  # additionalProperties: false, as OpenAI's strict mode asks

    city: str = Field(max_length=12)
    zip_code: str = Field(pattern=r"^[0-9]{5}$")


class Person(BaseModel):
    """A typical application schema: bounded strings, an integer range, an enum, an array, a nested object."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(max_length=10)
    age: int = Field(ge=0, le=150)
    role: Literal["admin", "user", "guest"]
    tags: list[Annotated[str, Field(max_length=8)]] = Field(max_length=3)
    address: Address
    active: bool


PERSON = json.dumps(Person.model_json_schema())


@pytest.fixture(scope="module")
def tokenizer(chat_model_path: Path):
    return AutoTokenizer.from_pretrained(chat_model_path)


@pytest.fixture(scope="module")
def compiler(tokenizer):
    compiler = GrammarCompiler(tokenizer, eos_token_ids=[EOS], name="tiny")
    yield compiler
    compiler.shutdown()


def spec(kind: str = "json", **fields) -> StructuredOutput:
    return StructuredOutput(kind=kind, **fields)


def walk(
    grammar: CompiledGrammar,
    tokenizer,
    seed: int,
    *,
    vocab: int | None = None,
    steps: int = 400,
    closing: str = "",
) -> str:
    """Generate by the grammar alone: random logits, masked, the best allowed token, until the
    grammar ends (or EOS): what a model of random weights would produce, constrained. After 30
    tokens, the tokens of ``closing``'s characters (and EOS) are favoured, so that grammars with
    unbounded strings or nesting end too."""
    vocab = vocab or len(tokenizer)
    matcher = grammar.matcher()
    gen = torch.Generator().manual_seed(seed)
    closers = [EOS, *(tokenizer.convert_tokens_to_ids(c) for c in closing)]
    tokens: list[int] = []
    for step in range(steps):
        logits = torch.randn((1, vocab), generator=gen)
        if step >= 30:
            logits[0, closers] += 10.0
        assert apply_grammar_masks(logits, [matcher]) == [None]
        token = int(logits.argmax())
        assert torch.isfinite(logits[0, token])
        if token == EOS:
            break
        assert matcher.accept(token) is None
        tokens.append(token)
        if matcher.finished:
            break
    else:
        pytest.fail(f"the grammar did not end within {steps} tokens")
    assert matcher.accepting
    return tokenizer.decode(tokens)


def refusal(compiler: GrammarCompiler, structured: StructuredOutput) -> tuple[InvalidStructuredOutput, float]:
    started = time.perf_counter()
    with pytest.raises(InvalidStructuredOutput) as caught:
        asyncio.run(compiler.compile(structured))
    return caught.value, time.perf_counter() - started


# ---- output valid by construction ----------------------------------------------------------
@pytest.mark.parametrize("seed", range(6))
def test_json_schema_output_is_valid_by_construction(compiler, tokenizer, seed):
    grammar = asyncio.run(compiler.compile(spec(json_schema=PERSON)))
    text = walk(grammar, tokenizer, seed)
    value = json.loads(text)
    jsonschema.validate(value, Person.model_json_schema())
    Person.model_validate(value)
    assert text == json.dumps(value, separators=(",", ":"), ensure_ascii=False)  # compact: no free whitespace


def test_json_object_mode_gives_a_json_object(compiler, tokenizer):
    grammar = asyncio.run(compiler.compile(spec()))
    for seed in range(4):
        assert isinstance(json.loads(walk(grammar, tokenizer, seed, closing='"}]')), dict)


def test_regex_output_matches_in_full(compiler, tokenizer):
    pattern = r"[A-Z][a-z]{2,6}-[0-9]{3}"
    grammar = asyncio.run(compiler.compile(spec("regex", regex=pattern)))
    for seed in range(6):
        assert re.fullmatch(pattern, walk(grammar, tokenizer, seed))


def test_choice_output_is_one_of_the_choices(compiler, tokenizer):
    choices = ("positive", "negative", "neutral", 'a "quoted"\nchoice', "日本")
    grammar = asyncio.run(compiler.compile(spec("choice", choice=choices)))
    seen = {walk(grammar, tokenizer, seed) for seed in range(12)}
    assert seen <= set(choices)
    assert len(seen) > 1


def test_smollm2_tokenizer_follows_a_schema(smollm2_model_path: Path):
    tokenizer = AutoTokenizer.from_pretrained(smollm2_model_path)
    compiler = GrammarCompiler(tokenizer, eos_token_ids=[EOS], name="smol")
    try:
        grammar = compiler.compile_blocking(spec(json_schema=PERSON))
        for seed in range(3):
            # NOTE: a model vocabulary wider than the tokenizer's: the extra ids are never allowed
            Person.model_validate_json(walk(grammar, tokenizer, seed, vocab=len(tokenizer) + 64))
    finally:
        compiler.shutdown()


# ---- the mask --------------------------------------------------------------------------
def test_mask_bans_everything_but_the_allowed_tokens_and_pads_a_wider_model_vocabulary(compiler, tokenizer):
    grammar = asyncio.run(compiler.compile(spec("choice", choice=("yes", "no"))))
    matchers = [grammar.matcher(), grammar.matcher()]
    assert matchers[1].accept(tokenizer.encode("yes", add_special_tokens=False)[0]) is None
    width = len(tokenizer) + 40
    logits = torch.zeros((2, width))
    assert apply_grammar_masks(logits, matchers) == [None, None]
    allowed = [set(torch.isfinite(row).nonzero()[:, 0].tolist()) for row in logits]
    firsts = {tokenizer.encode(word, add_special_tokens=False)[0] for word in ("yes", "no")}
    assert firsts <= allowed[0]
    assert all(
        "yes".startswith(tokenizer.decode([t])) or "no".startswith(tokenizer.decode([t])) for t in allowed[0]
    )
    assert all(t < len(tokenizer) for row in allowed for t in row)
    assert EOS not in allowed[0]  # EOS only where the grammar accepts


def test_a_failed_matcher_bans_every_token_and_reports_its_error(compiler, tokenizer):
    grammar = asyncio.run(compiler.compile(spec("choice", choice=("yes",))))
    broken, fine = grammar.matcher(), grammar.matcher()
    assert broken.accept(tokenizer.encode("no", add_special_tokens=False)[0]) is not None
    logits = torch.zeros((2, len(tokenizer)))
    errors = apply_grammar_masks(logits, [broken, fine])
    assert errors[0] is not None and errors[1] is None
    assert not torch.isfinite(logits[0]).any()
    assert torch.isfinite(logits[1]).any()


# ---- bounds and refusals -----------------------------------------------------------------
#: A valid schema that takes about 0.1 s to compile (0.3 s on a loaded machine).
SLOW = StructuredOutput(
    kind="json", json_schema=json.dumps({"enum": [f"value number {i}" for i in range(9000)]})
)


def nested(depth: int) -> str:
    schema: dict = {"type": "object"}
    for _ in range(depth):
        schema = {"type": "object", "properties": {"a": schema}, "required": ["a"]}
    return json.dumps(schema)


HOSTILE = {
    "100 nested objects": spec(json_schema=nested(100)),
    "50,000 enum values": spec(json_schema=json.dumps({"enum": [f"v{i}" for i in range(50_000)]})),
    "a 300 kB schema": spec(json_schema=json.dumps({"type": "string", "description": "x" * 300_000})),
    "a lexer that explodes": spec("regex", regex="(a{1000}){1000}"),
    "an unclosed group": spec("regex", regex="(unclosed"),
    "a look-ahead": spec("regex", regex="(?=a)a"),
    "an unsupported keyword": spec(json_schema='{"not": {"type": "string"}}'),
    "not JSON": spec(json_schema="{'type': 'object'}"),
    "not an object": spec(json_schema="[1, 2]"),
    "a 20,000-character regex": spec("regex", regex="a" * 20_000),
    "20,000 choices": spec("choice", choice=tuple(f"c{i}" for i in range(20_000))),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_specs_are_refused_within_the_bound(compiler, name):
    structured = HOSTILE[name].model_copy(update={"param": "tools"})
    error, elapsed = refusal(compiler, structured)
    assert error.param == "tools"
    assert error.message.startswith(("the JSON schema ", "the regex ", "the choices "))
    assert elapsed < compiler.limits.compile_timeout_s + 1.0  # NOTE: at worst, the time bound refuses it


def test_refusals_are_cached_and_name_each_requests_param(compiler):
    structured = spec("regex", regex="(b{1000}){1000}")
    first, _ = refusal(compiler, structured)
    second, elapsed = refusal(compiler, structured.model_copy(update={"param": "guided_regex"}))
    assert second.message == first.message
    assert second.param == "guided_regex"
    assert elapsed < 0.1


def test_compiled_grammars_are_cached_and_concurrent_requests_share_one_compile(compiler):
    structured = spec(json_schema=json.dumps({"type": "array", "items": {"type": "integer"}}))

    async def both():
        return await asyncio.gather(compiler.compile(structured), compiler.compile(structured))

    first, second = asyncio.run(both())
    assert first is second
    assert asyncio.run(compiler.compile(structured.model_copy(update={"param": "x"}))) is first


def test_a_compile_slower_than_the_bound_is_refused_and_remembered(tokenizer):
    compiler = GrammarCompiler(tokenizer, eos_token_ids=[EOS], limits=GuidedLimits(compile_timeout_s=0.02))
    try:
        asyncio.run(compiler.compile(spec()))  # the tokenizer tables (not under the bound)
        error, elapsed = refusal(compiler, SLOW)
        assert "did not compile within 0.02 s" in error.message
        assert elapsed < 1.0  # NOTE: the caller is answered at the bound, not when the compile ends
        deadline = time.monotonic() + 30
        while not all(entry.future.done() for entry in compiler._cache.values()):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        error, elapsed = refusal(compiler, SLOW)
        assert "to compile, more than the 0.02 s allowed" in error.message
        assert elapsed < 0.1
    finally:
        compiler.shutdown()


def test_a_compile_queued_past_the_bound_is_overload_and_then_skipped(tokenizer):
    queued = spec("regex", regex="[0-9]+")
    compiler = GrammarCompiler(tokenizer, eos_token_ids=[EOS], limits=GuidedLimits(compile_timeout_s=0.05))
    release = threading.Event()

    async def main() -> None:
        await compiler.compile(spec())
        compiler._executor.submit(release.wait, 10.0)  # the compiler's thread, busy with earlier work
        with pytest.raises(EngineOverloaded, match="busy"):
            await compiler.compile(queued)

    try:
        asyncio.run(main())
        release.set()
        compiler.limits = GuidedLimits(compile_timeout_s=5.0)
        # nobody waited for the queued compile when its turn came: it was skipped, and compiles now
        assert asyncio.run(compiler.compile(queued)).compile_s < 5.0
    finally:
        release.set()
        compiler.shutdown()


def test_a_tokenizer_that_cannot_make_grammars_refuses_structured_output():
    class SlowTokenizer:
        eos_token_id = 2

    compiler = GrammarCompiler(SlowTokenizer(), eos_token_ids=[EOS], name="slow")
    try:
        error, _ = refusal(compiler, spec(param="response_format"))
        assert "model 'slow' cannot constrain its output" in error.message
        assert error.param == "response_format"
    finally:
        compiler.shutdown()


def test_limits_are_validated():
    with pytest.raises(ValueError):
        GuidedLimits(compile_timeout_s=0)
    with pytest.raises(ValueError):
        GuidedLimits(max_enum_values=0)


def test_a_compiler_that_shut_down_answers_not_ready(tokenizer):
    from llmaas.engine.errors import EngineNotReady

    compiler = GrammarCompiler(tokenizer, eos_token_ids=[EOS], name="gone")
    compiler.shutdown()
    with pytest.raises(EngineNotReady, match="shutting down"):
        asyncio.run(compiler.compile(spec()))
