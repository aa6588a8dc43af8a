"""The batched sampler: each control's effect, extreme values next to plain rows, row isolation."""

from __future__ import annotations

import math
import re
from typing import Any

import pytest
import torch

from llmaas.engine.sampling import SequenceSampler, prompt_logprobs, sample_batch
from llmaas.engine.types import SamplingParams

VOCAB = 64
EOS = 2


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: intra-op threads only wait on each other (badly, on a loaded machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def rows_of(*params: SamplingParams, prompt: list[int] | None = None) -> list[SequenceSampler]:
    return [SequenceSampler(p, prompt or []) for p in params]


def sp(**fields: Any) -> SamplingParams:
    return SamplingParams(**fields)


def bigram(seed: int = 0, vocab: int = VOCAB) -> torch.Tensor:
    """A toy model: the next token's logits depend on the last one; greedy decoding falls into loops."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn((vocab, vocab), generator=gen) * 3


def decode(params: SamplingParams, steps: int = 40, model: torch.Tensor | None = None) -> list[int]:
    """``steps`` tokens of one sequence on the bigram model, prompt [1]."""
    model = bigram() if model is None else model
    row = SequenceSampler(params, [1])
    last, out = 1, []
    for _ in range(steps):
        result = sample_batch(model[last : last + 1], [row], eos_token_ids={EOS})
        assert result.errors == [None]
        last = result.tokens[0]
        out.append(last)
    return out


def repeats(tokens: list[int]) -> int:
    """Tokens that already occurred earlier in the sequence."""
    return len(tokens) - len(set(tokens))


# ---- the plain fast path and seeds -------------------------------------------------------
def test_greedy_rows_take_the_argmax():
    logits = torch.tensor([[0.1, 3.0, 0.2], [5.0, 0.0, 1.0]])
    result = sample_batch(logits, rows_of(sp(temperature=0.0), sp(temperature=0.0)))
    assert result.tokens == [1, 0]
    assert result.logprobs == [None, None] and result.errors == [None, None]


def test_same_seed_same_tokens_different_seed_differs():
    logits = torch.zeros((1, 1000))

    def draws(seed: int) -> list[int]:
        row = SequenceSampler(sp(temperature=1.0, seed=seed))
        return [sample_batch(logits, [row]).tokens[0] for _ in range(20)]

    assert draws(7) == draws(7)
    assert draws(7) != draws(8)


def test_sampled_tokens_respect_top_k():
    logits = torch.tensor([[1.0, 4.0, 3.0, 2.0]])
    row = SequenceSampler(sp(temperature=2.0, top_k=2, seed=0))
    assert {sample_batch(logits, [row]).tokens[0] for _ in range(200)} == {1, 2}


def test_sampled_tokens_respect_top_p():
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    row = SequenceSampler(sp(temperature=1.0, top_p=0.75, seed=0))
    assert {sample_batch(logits, [row]).tokens[0] for _ in range(300)} == {0, 1}
    # the top token always survives, however small top_p is (vLLM's rule)
    tiny = SequenceSampler(sp(temperature=1.0, top_p=1e-300, seed=0))
    assert {sample_batch(logits, [tiny]).tokens[0] for _ in range(50)} == {0}


def test_top_k_and_top_p_together_in_one_row_and_apart_in_others():
    logits = torch.tensor([[4.0, 3.9, 3.8, 0.0, -1.0]] * 3)
    rows = rows_of(
        sp(temperature=1.0, top_k=2, top_p=0.99, seed=1),
        sp(temperature=1.0, top_k=3, seed=2),
        sp(temperature=1.0, seed=3),
    )
    seen: list[set[int]] = [set(), set(), set()]
    for _ in range(300):
        for i, token in enumerate(sample_batch(logits, rows).tokens):
            seen[i].add(token)
    assert seen[0] == {0, 1}
    assert seen[1] == {0, 1, 2}
    assert seen[2] > {0, 1, 2}, "the unrestricted row draws beyond its neighbours' top-k"


# ---- each control's effect ---------------------------------------------------------------
@pytest.mark.parametrize(
    "control",
    [
        {"frequency_penalty": 1.0},
        {"presence_penalty": 1.5},
        {"repetition_penalty": 2.0},
        {"frequency_penalty": 0.5, "presence_penalty": 0.5, "repetition_penalty": 1.3},
    ],
)
@pytest.mark.parametrize("temperature", [0.0, 0.7])
def test_penalties_reduce_repetition_measurably(control: dict[str, float], temperature: float):
    plain = sum(repeats(decode(sp(temperature=temperature, seed=s))) for s in range(10))
    penalised = sum(repeats(decode(sp(temperature=temperature, seed=s, **control))) for s in range(10))
    assert penalised < plain * 0.7, (plain, penalised)


def test_negative_penalties_encourage_repetition():
    plain = sum(repeats(decode(sp(temperature=0.7, seed=s))) for s in range(10))
    encouraged = sum(
        repeats(decode(sp(temperature=0.7, seed=s, frequency_penalty=-2.0, presence_penalty=-2.0)))
        for s in range(10)
    )
    assert encouraged > plain


def test_penalties_follow_openai_and_vllm_formulas():
    logits = torch.tensor([[2.0, -2.0, 1.0, 0.5]])
    row = SequenceSampler(
        sp(temperature=0.0, frequency_penalty=0.25, presence_penalty=0.5, repetition_penalty=2.0, logprobs=0),
        [1],
    )
    for token in (0, 0, 2):
        row.record(token)
    # repetition (prompt and output: tokens 0, 1, 2): 2/2, -2*2, 1/2; then 0: -(2*0.25+0.5), 2: -(0.25+0.5)
    expected = torch.tensor([1.0 - 1.0, -4.0, 0.5 - 0.75, 0.5])
    result = sample_batch(logits, [row])
    assert result.tokens == [int(expected.argmax())] == [3]
    # logprobs are the model's, before any processor
    assert result.logprobs[0] is not None
    assert result.logprobs[0].logprob == pytest.approx(float(torch.log_softmax(logits[0], -1)[3]), abs=1e-6)


def test_logit_bias_minus_100_bans_and_plus_100_forces():
    logits = torch.randn((1, VOCAB), generator=torch.Generator().manual_seed(0))
    top = int(logits.argmax())
    banned_greedy = SequenceSampler(sp(temperature=0.0, logit_bias=((top, -100.0),)))
    banned_sampled = SequenceSampler(sp(temperature=1.5, seed=0, logit_bias=((top, -100.0),)))
    forced = SequenceSampler(sp(temperature=2.0, seed=0, logit_bias=((5, 100.0),)))
    for _ in range(300):
        tokens = sample_batch(logits.repeat(3, 1), [banned_greedy, banned_sampled, forced]).tokens
        assert tokens[0] != top and tokens[1] != top
        assert tokens[2] == 5


def test_min_tokens_bans_eos_until_reached():
    logits = torch.zeros((1, VOCAB))
    logits[0, EOS] = 50.0
    greedy = SequenceSampler(sp(temperature=0.0, min_tokens=4))
    sampled = SequenceSampler(sp(temperature=1.0, seed=0, min_tokens=4))
    got = [sample_batch(logits.repeat(2, 1), [greedy, sampled], eos_token_ids={EOS}).tokens for _ in range(6)]
    assert all(EOS not in step for step in got[:4])
    assert got[4] == [EOS, EOS]


# ---- logprobs ----------------------------------------------------------------------------
def test_logprobs_are_the_models_log_softmax_and_greedy_takes_the_top():
    logits = torch.randn((3, VOCAB), generator=torch.Generator().manual_seed(1)) * 4
    rows = rows_of(
        sp(temperature=0.0, logprobs=5),
        sp(temperature=1.0, seed=4, logprobs=0, logit_bias=((7, 100.0),)),
        sp(temperature=0.0),
    )
    result = sample_batch(logits, rows)
    reference = torch.log_softmax(logits, dim=-1)
    greedy, sampled, plain = result.logprobs
    assert plain is None
    assert greedy is not None and sampled is not None
    assert greedy.token_id == result.tokens[0] == int(logits[0].argmax())
    assert greedy.logprob == pytest.approx(greedy.top[0][1], abs=1e-6)
    assert [t for t, _ in greedy.top] == reference[0].topk(5).indices.tolist()
    for (token, value), expected in zip(greedy.top, reference[0].topk(5).values.tolist(), strict=True):
        assert value == pytest.approx(expected, abs=1e-5)
        assert value == pytest.approx(float(reference[0, token]), abs=1e-5)
    assert sampled.token_id == 7 and sampled.top == []
    assert sampled.logprob == pytest.approx(float(reference[1, 7]), abs=1e-5), "logprobs precede logit_bias"


def test_prompt_logprobs_match_log_softmax_right_aligned():
    prompt = [4, 9, 1, 30]
    logits = torch.randn((6, VOCAB), generator=torch.Generator().manual_seed(2))  # 2 columns of padding
    out = prompt_logprobs(logits, prompt, 3)
    reference = torch.log_softmax(logits[2:], dim=-1)
    assert out[0] is None
    for i, entry in enumerate(out[1:], start=1):
        assert entry is not None and entry.token_id == prompt[i]
        assert entry.logprob == pytest.approx(float(reference[i - 1, prompt[i]]), abs=1e-5)
        assert [t for t, _ in entry.top] == reference[i - 1].topk(3).indices.tolist()
    assert prompt_logprobs(logits, [5], 2) == [None]


# ---- one row never fails the batch -------------------------------------------------------
EXTREMES: list[dict[str, Any]] = [
    {"temperature": 0.0},
    {"temperature": 2.0},
    {"temperature": 1e-300},
    {"temperature": 1e-6},
    {"temperature": 1e300},
    {"temperature": 1.0, "top_p": 1e-300},
    {"temperature": 1e-300, "top_p": 1e-300, "top_k": 1},
    {"temperature": 1.0, "top_k": 1},
    {"temperature": 1.0, "top_k": 10**9},
    {"temperature": 1.0, "top_k": 2000},
    {"temperature": 0.5, "top_k": VOCAB - 1, "top_p": 0.999999},
    {"presence_penalty": 2.0, "frequency_penalty": 2.0},
    {"presence_penalty": -2.0, "frequency_penalty": -2.0},
    {"repetition_penalty": 10.0},
    {"repetition_penalty": 1e-300},
    {"logit_bias": tuple((t, 100.0) for t in range(VOCAB))},
    {"logit_bias": tuple((t, -100.0) for t in range(VOCAB))},
    {"logit_bias": ((3, 100.0), (3, -100.0), (10**9, 100.0), (-1, 5.0))},
    {"temperature": 1e-300, "logit_bias": tuple((t, 100.0) for t in range(0, VOCAB, 2))},
    {"min_tokens": 10**6},
    {"seed": 0},
    {"seed": 2**63 - 1},
    {"seed": -(2**63)},
    {"logprobs": 20},
    {
        "temperature": 1e-300,
        "top_p": 1e-300,
        "top_k": 1,
        "presence_penalty": 2.0,
        "frequency_penalty": -2.0,
        "repetition_penalty": 1e-300,
        "logit_bias": tuple((t, 100.0) for t in range(VOCAB)),
        "min_tokens": 10**6,
        "logprobs": 20,
    },
]


def test_extreme_values_never_touch_plain_rows_and_every_row_samples():
    model = bigram(5)
    # NOTE: EOS is a real token here (eos_token_ids), so min_tokens bans have something to ban
    extreme = rows_of(*(sp(**{"temperature": 1.0, **fields}) for fields in EXTREMES), prompt=[1, 2, 3])
    plain = rows_of(*(sp(temperature=0.0) for _ in range(4)))
    rows = plain[:2] + extreme + plain[2:]
    last = [1] * len(rows)
    for _ in range(30):
        logits = model[torch.tensor(last)]
        result = sample_batch(logits, rows, eos_token_ids={EOS})
        assert result.errors == [None] * len(rows)
        for i in (0, 1, len(rows) - 2, len(rows) - 1):
            assert result.tokens[i] == int(logits[i].argmax()), "a plain row's token changed"
        assert all(0 <= t < VOCAB for t in result.tokens)
        for entry in result.logprobs:
            assert entry is None or (math.isfinite(entry.logprob) and len(entry.top) == 20)
        last = result.tokens


def test_a_mixed_batch_gives_each_row_what_it_gets_alone():
    model = bigram(6)
    params = [
        sp(temperature=0.0),
        sp(temperature=0.0, frequency_penalty=1.0, logprobs=3),
        sp(temperature=0.9, seed=11, presence_penalty=0.8, top_p=0.9),
        sp(temperature=0.0, repetition_penalty=1.5, logit_bias=((4, 3.0),)),
        sp(temperature=1.3, seed=12, top_k=5, min_tokens=3),
        sp(temperature=1.0, top_p=1e-300, seed=13),
        sp(temperature=0.0, logprobs=2),
    ]

    def run(together: bool) -> list[list[int]]:
        rows = rows_of(*params, prompt=[1])
        outs: list[list[int]] = [[] for _ in params]
        last = [1] * len(params)
        for _ in range(25):
            logits = model[torch.tensor(last)]
            if together:
                tokens = sample_batch(logits, rows, eos_token_ids={EOS}).tokens
            else:
                tokens = [
                    sample_batch(logits[i : i + 1], [row], eos_token_ids={EOS}).tokens[0]
                    for i, row in enumerate(rows)
                ]
            for out, token in zip(outs, tokens, strict=True):
                out.append(token)
            last = tokens
        return outs

    assert run(together=True) == run(together=False)


def test_a_row_with_nan_logits_fails_alone():
    logits = torch.randn((3, VOCAB), generator=torch.Generator().manual_seed(3))
    logits[1] = float("nan")
    rows = rows_of(sp(temperature=0.0), sp(temperature=0.7, seed=1), sp(temperature=0.9, seed=2))
    result = sample_batch(logits, rows)
    assert result.errors[0] is None and result.errors[2] is None
    assert result.tokens[0] == int(logits[0].argmax()) and 0 <= result.tokens[2] < VOCAB
    assert result.tokens[1] == -1 and "finite" in (result.errors[1] or "")


def test_a_row_with_every_token_banned_fails_alone():
    logits = torch.zeros((2, 2))
    rows = rows_of(sp(temperature=0.0, min_tokens=5), sp(temperature=0.0, logprobs=1))
    result = sample_batch(logits, rows, eos_token_ids={0, 1})
    assert result.tokens[0] == -1 and result.errors[0] is not None
    assert result.tokens[1] == 0 and result.errors[1] is None and result.logprobs[1] is not None


def test_an_exception_in_one_row_ends_only_that_row():
    logits = torch.randn((3, VOCAB), generator=torch.Generator().manual_seed(4))
    broken = SequenceSampler(sp(temperature=1.0, seed=1))
    broken.generator = "not a generator"  # type: ignore[assignment]
    rows = [SequenceSampler(sp(temperature=0.0)), broken, SequenceSampler(sp(temperature=0.5, seed=3))]
    result = sample_batch(logits, rows)
    assert result.errors[0] is None and result.errors[2] is None
    assert result.tokens[0] == int(logits[0].argmax())
    assert result.tokens[1] == -1 and (result.errors[1] or "").startswith("sampling failed")


def frequencies(logits: torch.Tensor, draws: int, **fields: Any) -> torch.Tensor:
    """How often each token comes out of ``draws`` rows of the same logits, seeded 0..draws-1."""
    rows = rows_of(*(sp(seed=seed, **fields) for seed in range(draws)))
    result = sample_batch(logits.repeat(draws, 1), rows)
    assert result.errors == [None] * draws
    return torch.bincount(torch.tensor(result.tokens), minlength=logits.shape[-1]).float() / draws


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"temperature": 1.0}, [0.4, 0.3, 0.15, 0.1, 0.05]),
        ({"temperature": 0.5}, [16 / 28.5, 9 / 28.5, 2.25 / 28.5, 1 / 28.5, 0.25 / 28.5]),
        ({"temperature": 1.0, "top_k": 2}, [4 / 7, 3 / 7, 0, 0, 0]),
        ({"temperature": 1.0, "top_p": 0.8}, [0.4 / 0.85, 0.3 / 0.85, 0.15 / 0.85, 0, 0]),
        ({"temperature": 1.0, "top_k": 4, "top_p": 0.8}, [0.4 / 0.85, 0.3 / 0.85, 0.15 / 0.85, 0, 0]),
        ({"temperature": 1.0, "top_k": 3, "top_p": 0.75}, [0.4 / 0.7, 0.3 / 0.7, 0, 0, 0]),
    ],
)
def test_draws_follow_the_filtered_distribution(fields: dict[str, Any], expected: list[float]):
    logits = torch.tensor([[0.4, 0.3, 0.15, 0.1, 0.05]]).log()
    got = frequencies(logits, 4000, **fields)
    assert got.tolist() == pytest.approx(expected, abs=0.03)


@pytest.mark.parametrize("nucleus", [40, 500, 3000])
def test_top_p_nuclei_wider_than_the_first_candidates(nucleus: int):
    """A gently sloped head of ``nucleus`` tokens holding most of the mass: top-p 0.9 keeps its
    first ~90%, whether that fits the first candidates (64), the second (1024) or needs a sort."""
    vocab = 5000
    logits = torch.full((1, vocab), -30.0)
    logits[0, :nucleus] = -torch.arange(nucleus) * (1.0 / nucleus)
    cum = torch.softmax(logits[0], -1).cumsum(-1)
    cut = int((cum < 0.9).sum())  # the last kept position: the mass before it is below 0.9
    got = frequencies(logits, 1000, temperature=1.0, top_p=0.9)
    drawn = got.nonzero()[:, 0]
    assert int(drawn.max()) == pytest.approx(cut, rel=0.05), "the nucleus ends where its mass reaches 0.9"
    assert int(drawn.max()) <= cut


# ---- stop_token_ids and structured output ----------------------------------------------------
def test_min_tokens_bans_stop_token_ids_too_only_in_rows_that_name_them():
    logits = torch.zeros((2, VOCAB))
    logits[:, 7] = 50.0
    named = SequenceSampler(sp(temperature=0.0, min_tokens=2, stop_token_ids=(7, 9)))
    other = SequenceSampler(sp(temperature=0.0, min_tokens=2))
    got = [sample_batch(logits, [named, other], eos_token_ids={EOS}).tokens for _ in range(3)]
    assert got[0][0] not in (7, 9, EOS) and got[1][0] not in (7, 9, EOS)
    assert got[2][0] == 7
    assert [step[1] for step in got] == [7, 7, 7]


@pytest.fixture(scope="module")
def grammars(chat_model_path):
    from transformers import AutoTokenizer

    from llmaas.engine.guided import GrammarCompiler

    tokenizer = AutoTokenizer.from_pretrained(chat_model_path)
    compiler = GrammarCompiler(tokenizer, eos_token_ids=[EOS], name="tiny")
    yield tokenizer, compiler
    compiler.shutdown()


def structured(compiler, **fields: Any):
    from llmaas.engine.types import StructuredOutput

    return compiler.compile_blocking(StructuredOutput(**fields))


def test_a_constrained_row_follows_its_grammar_and_is_not_the_fast_path(grammars):
    tokenizer, compiler = grammars
    vocab = len(tokenizer)
    model = bigram(7, vocab)
    row = SequenceSampler(
        sp(temperature=0.0),
        [1],
        matcher=structured(compiler, kind="regex", regex="[0-9]{3}-[a-z]{2}").matcher(),
    )
    assert not row.plain
    last, out = 1, []
    for _ in range(12):
        result = sample_batch(model[last : last + 1], [row], eos_token_ids={EOS})
        assert result.errors == [None]
        last = result.tokens[0]
        if last == EOS:
            break
        out.append(last)
        if row.matcher is not None and row.matcher.finished:
            break
    assert re.fullmatch("[0-9]{3}-[a-z]{2}", tokenizer.decode(out))


def test_a_batch_mixing_constrained_penalised_and_plain_rows_gives_each_what_it_gets_alone(grammars):
    tokenizer, compiler = grammars
    vocab = len(tokenizer)
    model = bigram(8, vocab)
    schema = (
        '{"type":"object","properties":{"a":{"type":"integer"},"b":{"enum":["x","yy"]}},"required":["a","b"]}'
    )
    specs: list[dict[str, Any] | None] = [
        {"kind": "json", "json_schema": schema},
        None,
        {"kind": "choice", "choice": ("alpha", "beta", "gamma")},
        None,
        {"kind": "regex", "regex": "[a-z]+@[a-z]+"},
        None,
    ]
    params = [
        sp(temperature=0.0),
        sp(temperature=0.0),
        sp(temperature=0.9, seed=5, top_p=0.9),
        sp(temperature=0.0, repetition_penalty=1.3, frequency_penalty=0.5, logprobs=2),
        sp(temperature=0.0, presence_penalty=1.0, min_tokens=2),
        sp(temperature=0.7, seed=6),
    ]

    def run(together: bool) -> list[list[int]]:
        rows = [
            SequenceSampler(p, [1], matcher=None if s is None else structured(compiler, **s).matcher())
            for p, s in zip(params, specs, strict=True)
        ]
        outs: list[list[int]] = [[] for _ in params]
        last = [1] * len(params)
        for _ in range(20):
            logits = model[torch.tensor(last)]
            if together:
                result = sample_batch(logits, rows, eos_token_ids={EOS})
                tokens, errors = result.tokens, result.errors
            else:
                parts = [
                    sample_batch(logits[i : i + 1], [r], eos_token_ids={EOS}) for i, r in enumerate(rows)
                ]
                tokens, errors = [p.tokens[0] for p in parts], [p.errors[0] for p in parts]
            assert errors == [None] * len(rows)
            for out, token in zip(outs, tokens, strict=True):
                out.append(token)
            # NOTE: a finished grammar allows EOS only: the row keeps a valid (ended) state
            last = tokens
        return outs

    together, alone = run(together=True), run(together=False)
    assert together == alone
    choice = tokenizer.decode([t for t in together[2] if t != EOS])
    assert any(choice.startswith(c) for c in ("alpha", "beta", "gamma"))


def test_a_constrained_row_whose_matcher_fails_ends_alone(grammars):
    tokenizer, compiler = grammars
    grammar = structured(compiler, kind="choice", choice=("yes",))
    broken = grammar.matcher()
    assert broken.accept(tokenizer.encode("no", add_special_tokens=False)[0]) is not None
    logits = torch.randn((3, len(tokenizer)), generator=torch.Generator().manual_seed(9))
    rows = [
        SequenceSampler(sp(temperature=0.0)),
        SequenceSampler(sp(temperature=0.0), matcher=broken),
        SequenceSampler(sp(temperature=0.0), matcher=grammar.matcher()),
    ]
    result = sample_batch(logits, rows, eos_token_ids={EOS})
    assert result.tokens[0] == int(logits[0].argmax())
    assert result.tokens[1] == -1 and (result.errors[1] or "").startswith("structured output failed")
    assert result.errors[2] is None
    assert "yes".startswith(tokenizer.decode([result.tokens[2]]))
