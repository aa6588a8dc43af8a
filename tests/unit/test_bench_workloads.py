"""The benchmark's workloads (shared prefix, multi-turn, long-prompt interference) and their metrics."""

from __future__ import annotations

import asyncio
import json
import random

import httpx
import pytest
from pydantic import ValidationError

from llmaas.bench.loadgen import (
    WARM_MESSAGES,
    BenchConfig,
    Target,
    body_for,
    interference_round,
    run_conversation,
)
from llmaas.bench.metrics import RequestResult, Slo, compare_levels, interference_stats, summarize
from llmaas.bench.workloads import (
    Conversation,
    TextSource,
    Work,
    WorkloadConfig,
    WorkloadError,
    conversations,
    interference_work,
    shared_prefix_work,
)

CORPUS = " ".join(f"w{i}" for i in range(500))


class WordCodec:
    """A tokenizer with one token per whitespace-separated word: counts are exact."""

    def __init__(self) -> None:
        self.vocab: dict[str, int] = {}

    def encode(self, text: str) -> list[int]:
        return [self.vocab.setdefault(word, len(self.vocab)) for word in text.split()]

    def decode(self, ids: list[int]) -> str:
        words = {i: w for w, i in self.vocab.items()}
        return " ".join(words[i] for i in ids)


@pytest.fixture
def source() -> TextSource:
    return TextSource(WordCodec(), CORPUS)


def tokens(text: str) -> int:
    return len(text.split())


def test_text_is_cut_to_the_requested_tokens_and_wraps_past_the_corpus(source: TextSource):
    assert tokens(source.text(32, 0)) == 32
    long = source.text(1200, 490)  # longer than the corpus: it repeats end to end
    assert tokens(long) == 1200 and long.startswith("w490 ")
    texts = source.texts(40, 8, random.Random(0))
    assert len(set(texts)) == 40 and {t.split()[0] for t in texts}.__len__() == 40  # distinct starts
    assert texts == source.texts(40, 8, random.Random(0))


def test_shared_prefix_requests_share_one_system_prompt_and_ask_distinct_questions(source: TextSource):
    config = BenchConfig(model="m", workload="shared-prefix", prefix_tokens=100, question_tokens=12)
    work = shared_prefix_work(config, source, 16, random.Random("a"), seed=0)
    assert len({w.system for w in work}) == 1 and tokens(work[0].system or "") == 100
    assert len({w.prompt for w in work}) == 16 and all(tokens(w.prompt) == 12 for w in work)
    assert all(32 <= w.max_tokens <= 128 for w in work)
    other_level = shared_prefix_work(config, source, 4, random.Random("b"), seed=0)
    assert other_level[0].system == work[0].system  # one prefix for the whole run
    assert shared_prefix_work(config, source, 1, random.Random("b"), seed=1)[0].system != work[0].system
    body = body_for(config.target(), work[0])
    assert config.target().path == "/v1/chat/completions"
    assert body["messages"] == [
        {"role": "system", "content": work[0].system},
        {"role": "user", "content": work[0].prompt},
    ]
    assert body["stream"] and body["stream_options"] == {"include_usage": True} and body["ignore_eos"]


def test_the_random_workload_stays_on_completions():
    config = BenchConfig(model="m")
    assert config.target().path == "/v1/completions" and not config.target().chat
    with pytest.raises(ValueError, match="chat target"):
        body_for(config.target(), Work(prompt="q", max_tokens=4, system="s"))


def test_conversations_open_with_their_own_document_then_ask_a_question_a_turn(source: TextSource):
    config = WorkloadConfig(workload="multi-turn", prefix_tokens=50, question_tokens=10, turns=3)
    convs = conversations(config, source, 4, random.Random(0))
    assert len(convs) == 4
    assert all(len(c.user_turns) == 3 and len(c.max_tokens) == 3 for c in convs)
    assert all(tokens(c.user_turns[0]) == 60 and tokens(c.user_turns[2]) == 10 for c in convs)
    assert len({c.user_turns[0].split()[0] for c in convs}) == 4  # no shared opening across conversations
    no_document = conversations(config.model_copy(update={"prefix_tokens": 0}), source, 1, random.Random(0))
    assert tokens(no_document[0].user_turns[0]) == 10


def test_interference_has_short_decodes_with_long_outputs_and_one_long_prompt(source: TextSource):
    config = WorkloadConfig(
        workload="long-prompt-interference", decodes=5, long_prompt_tokens=700, output_tokens=(8, 64)
    )
    decodes, long = interference_work(config, source, random.Random(0))
    assert len(decodes) == 5 and all(w.max_tokens == 64 and tokens(w.prompt) == 32 for w in decodes)
    assert tokens(long.prompt) == 700 and long.max_tokens == 8
    assert long.prompt.split()[0] not in {w.prompt.split()[0] for w in decodes}


def test_workload_sizes_are_checked():
    with pytest.raises(ValidationError, match=r"output_tokens \(9, 3\)"):
        WorkloadConfig(output_tokens=(9, 3))
    with pytest.raises(ValidationError, match="workload"):
        WorkloadConfig.model_validate({"workload": "chatty"})
    config = WorkloadConfig(workload="long-prompt-interference", long_prompt_tokens=2000)
    config.check_context(4096)
    with pytest.raises(WorkloadError, match="--long-prompt-tokens"):
        config.check_context(2000)
    multi = WorkloadConfig(workload="multi-turn", prefix_tokens=1000, turns=4)
    with pytest.raises(WorkloadError, match="--turns"):
        multi.check_context(1024)
    WorkloadConfig().check_context(16)  # random prompts are sized in words: not checked


def _sse(*events: dict[str, object]) -> bytes:
    return "".join(f"data: {json.dumps(e)}\n\n" for e in events).encode() + b"data: [DONE]\n\n"


def _chat_reply(text: str, prompt_tokens: int, cached: int | None) -> bytes:
    usage: dict[str, object] = {"prompt_tokens": prompt_tokens, "completion_tokens": 2}
    if cached is not None:
        usage["prompt_tokens_details"] = {"cached_tokens": cached}
    return _sse(
        {"choices": [{"index": 0, "delta": {"content": text[:3]}}]},
        {"choices": [{"index": 0, "delta": {"content": text[3:]}}]},
        {"choices": [], "usage": usage},
    )


def test_each_turn_resends_the_conversation_with_the_real_answers():
    bodies: list[dict[str, object]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        bodies.append(body)
        turn = len(bodies)
        return httpx.Response(200, content=_chat_reply(f"answer {turn}", 10 * turn, 8 * (turn - 1)))

    target = BenchConfig(model="m", workload="multi-turn").target()
    conversation = Conversation(user_turns=["first", "second", "third"], max_tokens=[4, 5, 6])

    async def main() -> list[RequestResult]:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            return await run_conversation(client, target, conversation)

    results = asyncio.run(main())
    assert [r.turn for r in results] == [1, 2, 3] and all(r.ok for r in results)
    assert bodies[2]["messages"] == [
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "answer 1"},
        {"role": "user", "content": "second"},
        {"role": "assistant", "content": "answer 2"},
        {"role": "user", "content": "third"},
    ]
    assert [b["max_tokens"] for b in bodies] == [4, 5, 6]
    assert results[2].cached_tokens == 16 and results[0].text == "answer 1"
    assert len(results[0].chunk_s) == 2 and results[0].ttft_s == results[0].chunk_s[0]
    report = summarize("concurrency", 1, results, duration_s=1.0)
    assert report.turns is not None and [t.turn for t in report.turns] == [1, 2, 3]
    assert report.turns[2].cache_hit_rate == round(16 / 30, 4)
    assert report.cached_tokens == 24 and report.cache_hit_rate == round(24 / 60, 4)


def test_a_failed_turn_ends_its_conversation():
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503, json={"error": {"message": "full"}})

    target = BenchConfig(model="m", workload="multi-turn").target()

    async def main() -> list[RequestResult]:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            return await run_conversation(
                client, target, Conversation(user_turns=["a", "b"], max_tokens=[1, 1])
            )

    results = asyncio.run(main())
    assert len(results) == 1 and results[0].status == 503 and results[0].turn == 1


def test_the_long_prompt_is_sent_once_every_decode_is_running():
    order: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        prompt = json.loads(request.content)["prompt"]
        order.append(prompt)
        events: list[dict[str, object]] = [
            {"choices": [{"index": 0, "text": f"t{i}"}]} for i in range(WARM_MESSAGES + 2)
        ]
        return httpx.Response(200, content=_sse(*events, {"choices": [], "usage": {"prompt_tokens": 3}}))

    target = Target(name="t", url="http://x", model="m")
    decodes = [Work(prompt=f"decode {i}", max_tokens=8) for i in range(3)]

    async def main() -> tuple[list[RequestResult], RequestResult]:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            return await interference_round(client, target, decodes, Work(prompt="long", max_tokens=2))

    finished, long = asyncio.run(main())
    assert order[-1] == "long" and len(finished) == 3
    assert all(len(r.chunk_s) == WARM_MESSAGES + 2 for r in finished) and long.ok
    unary = target.model_copy(update={"stream": False})
    with pytest.raises(ValueError, match="streaming"):
        asyncio.run(interference_round(httpx.AsyncClient(), unary, decodes, decodes[0]))


def _decode(sent_at: float, times: list[float], tokens: int = 20) -> RequestResult:
    return RequestResult(
        ok=True, status=200, sent_at=sent_at, chunk_s=times, ttft_s=times[0], e2e_s=times[-1],
        completion_tokens=tokens,
    )  # fmt: skip


def test_interference_reads_the_stall_the_long_prompt_causes():
    # Decodes stream a message a second; the long prompt is served from t=10.5 to t=20.5 and stalls
    # them 5 s once; gaps ending after it are not counted.
    times = [*range(1, 11), 15, 16, 17, 18, 19, 20, 21, 22]
    decodes = [_decode(0.0, [float(t) for t in times]) for _ in range(2)]
    long = RequestResult(ok=True, status=200, sent_at=10.5, ttft_s=4.5, e2e_s=10.0, prompt_tokens=2000)
    stats = interference_stats([(decodes, long)])
    assert stats.rounds == 1 and stats.decodes == 2 and stats.long_prompt_tokens == 2000
    assert (stats.before_gaps, stats.during_gaps) == (18, 12)
    assert stats.before_itl_p50_ms == 1000.0 and stats.during_itl_p50_ms == 1000.0
    assert stats.during_itl_p99_ms == 5000.0 and stats.during_itl_max_ms == 5000.0
    assert stats.p99_over_p50 == 5.0
    assert stats.long_ttft_ms == 4500.0


def test_metrics_percentiles_goodput_and_itl():
    results = [
        RequestResult(
            ok=True, status=200, ttft_s=0.1, e2e_s=1.1, completion_tokens=11, chunk_s=[0.1, 0.6, 1.1]
        ),
        RequestResult(ok=True, status=200, ttft_s=0.6, e2e_s=2.6, completion_tokens=21, chunk_s=[0.6, 2.6]),
        RequestResult(ok=False, status=503, e2e_s=0.01, error="overloaded"),
    ]  # fmt: skip
    report = summarize("rate", 2.0, results, duration_s=2.0, slo=Slo.parse("ttft:500,tpot:150"))
    assert report.slo_met == 1 and report.goodput_req_s == 0.5  # the 2nd misses TTFT, the 3rd failed
    assert report.itl_p50_ms == 500.0 and report.itl_p99_ms == 2000.0
    assert report.ttft_p90_ms == 600.0 and report.e2e_p90_ms == 2600.0
    assert report.cached_tokens is None and report.cache_hit_rate is None  # not reported by the server
    assert summarize("rate", 2.0, results, 2.0).goodput_req_s is None
    one_token = RequestResult(ok=True, status=200, ttft_s=0.2, e2e_s=0.2, completion_tokens=1)
    assert Slo(tpot=1).met(one_token)  # no TPOT to miss, as vLLM
    unary = RequestResult(ok=True, status=200, e2e_s=0.7, completion_tokens=9)
    assert not Slo(ttft=500).met(unary)  # the answer's arrival is its first token


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("ttft=500", "KEY:MILLISECONDS"),
        ("latency:5", "ttft, tpot, e2el"),
        ("ttft:fast", "not a number"),
        ("tpot:0", "above 0"),
        ("", "at least one"),
    ],
)
def test_goodput_slos_name_the_bad_item(text: str, message: str):
    with pytest.raises(ValueError, match=message):
        Slo.parse(text)


def test_slos_parse_as_vllm_writes_them():
    assert Slo.parse("ttft:500, tpot:100,e2el:3000") == Slo(ttft=500, tpot=100, e2el=3000)


def test_side_by_side_ratios_match_levels_and_turns():
    def run(ttft: float, tok_s_scale: float) -> list:
        results = [
            RequestResult(ok=True, status=200, ttft_s=ttft * turn, e2e_s=1.0, completion_tokens=10, turn=turn)
            for turn in (1, 2)
        ]
        one = summarize("concurrency", 1, results, duration_s=1.0 / tok_s_scale)
        two = summarize("concurrency", 2, results, duration_s=0.5 / tok_s_scale)
        return [one, two]

    comparison = compare_levels("llmaas", run(0.1, 1.0), "compare", run(0.4, 1.25)[:1], "catalog off.yaml")
    assert [x.level for x in comparison.levels] == [1]  # only levels both ran
    row = comparison.levels[0]
    assert row.ttft_p50 == 0.25 and row.ttft_p50_by_turn == {1: 0.25, 2: 0.25}
    assert row.output_tok_s == 0.8
    assert comparison.saturation_tok_s == round(40 / 25, 3)


def test_the_platform_accepts_the_bodies_the_workloads_send():
    from llmaas.openai.protocol import ChatCompletionRequest, CompletionRequest

    history = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    chat = body_for(
        BenchConfig(model="m", workload="multi-turn").target(),
        Work(prompt="q", max_tokens=4, system="s", history=history),
    )
    parsed = ChatCompletionRequest.model_validate(chat)
    assert parsed.ignore_eos and parsed.stream_options is not None and parsed.stream_options.include_usage
    assert [m.role for m in parsed.messages] == ["system", "user", "assistant", "user"]
    completion = body_for(BenchConfig(model="m").target(), Work(prompt="q", max_tokens=4))
    assert CompletionRequest.model_validate(completion).ignore_eos
