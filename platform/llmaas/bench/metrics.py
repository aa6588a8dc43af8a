"""The benchmark's metrics: what one request measured, and the figures a level of requests adds up to.

As ``vllm bench serve`` reports them:

- TTFT: time to the first visible text; TPOT: ``(e2e - TTFT) / (completion_tokens - 1)`` per request;
  ITL: the gaps between a stream's messages after the first (one message holds ``stream_interval``
  tokens, by default more than one under load); e2e: the whole request. Each as p50 / p90 / p99.
- Goodput under SLOs (``--goodput ttft:500,tpot:100``, in ms): requests per second that met every
  SLO; a failed request meets none.
- Prefix-cache hits: ``usage.prompt_tokens_details.cached_tokens`` summed where the server reports
  it, over the prompt tokens of the same requests.

Also the multi-turn workload's TTFT by turn, the long-prompt interference figures, and the ratios
between two targets run side by side (``compare_levels``). Pure functions over recorded results:
no HTTP, no Ray.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from itertools import pairwise

from pydantic import BaseModel, Field

from llmaas.config.base import BaseConfig


def percentile(values: Sequence[float], q: float) -> float | None:
    """The nearest-rank ``q``-th percentile of ``values``; None for none."""
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 3)


def ratio(this: float | None, other: float | None) -> float | None:
    """``this / other`` to 3 decimals; None when either is missing or ``other`` is 0."""
    if this is None or not other:
        return None
    return round(this / other, 3)


class RequestResult(BaseModel):
    """One request as the client saw it (times in seconds from when it was sent)."""

    ok: bool
    status: int
    ttft_s: float | None = None
    e2e_s: float
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int | None = Field(
        default=None, description="usage.prompt_tokens_details.cached_tokens; None: not reported."
    )
    error: str | None = None
    sent_at: float = Field(default=0.0, description="time.perf_counter() when it was sent.")
    chunk_s: list[float] = Field(
        default_factory=list, description="When each streamed message with text arrived, from sent_at."
    )
    text: str = Field(default="", description="The answer (multi-turn sends it back).")
    turn: int | None = Field(default=None, description="Multi-turn: the turn's index, from 1.")

    @property
    def tpot_s(self) -> float | None:
        if self.ttft_s is None or self.completion_tokens < 2:
            return None
        return (self.e2e_s - self.ttft_s) / (self.completion_tokens - 1)

    @property
    def itl_s(self) -> list[float]:
        return [b - a for a, b in pairwise(self.chunk_s)]


class Slo(BaseConfig):
    """Service-level objectives for goodput, in milliseconds (vLLM's ``--goodput`` keys)."""

    ttft: float | None = Field(default=None, gt=0, description="Time to first token.")
    tpot: float | None = Field(default=None, gt=0, description="Time per output token after the first.")
    e2el: float | None = Field(default=None, gt=0, description="End-to-end latency.")

    @classmethod
    def parse(cls, text: str) -> Slo:
        """``"ttft:500,tpot:100"``; raises ValueError naming a bad item and the form it takes."""
        values: dict[str, float] = {}
        for item in (part.strip() for part in text.split(",")):
            if not item:
                continue
            key, sep, value = item.partition(":")
            key = key.strip()
            if not sep or key not in cls.model_fields:
                raise ValueError(
                    f"goodput {item!r}: write KEY:MILLISECONDS with KEY one of "
                    f"{', '.join(cls.model_fields)}, e.g. ttft:500,tpot:100"
                )
            try:
                values[key] = float(value)
            except ValueError:
                raise ValueError(f"goodput {item!r}: {value!r} is not a number of milliseconds") from None
            if values[key] <= 0:
                raise ValueError(f"goodput {item!r}: the limit must be above 0 ms")
        if not values:
            raise ValueError("goodput: name at least one SLO, e.g. ttft:500,tpot:100")
        return cls(**values)

    def met(self, result: RequestResult) -> bool:
        """Whether ``result`` met every SLO. Without a streamed first token, the whole answer is it."""
        if not result.ok:
            return False
        ttft = result.ttft_s if result.ttft_s is not None else result.e2e_s
        tpot = result.tpot_s or 0.0  # NOTE: as vLLM, a one-token answer has no TPOT to miss
        checks = ((self.ttft, ttft), (self.tpot, tpot), (self.e2el, result.e2e_s))
        return all(limit is None or value * 1000 <= limit for limit, value in checks)


class TurnStats(BaseModel):
    """The multi-turn workload's requests of one turn index, over every conversation of a level."""

    turn: int
    requests: int
    errors: int
    prompt_tokens_mean: float | None
    ttft_p50_ms: float | None
    ttft_p90_ms: float | None
    ttft_p99_ms: float | None
    cached_tokens: int | None = None
    cache_hit_rate: float | None = None


class InterferenceStats(BaseModel):
    """Running decodes' message gaps before and while one long prompt is served.

    ``before``: gaps ending before the long prompt was sent; ``during``: gaps ending while it was
    served (sent until its last message). Without chunked prefill, its prefill stalls every decode
    once, which shows in ``during_itl_p99_ms``; the target is ``p99_over_p50 <= 2``.
    """

    rounds: int
    decodes: int
    long_prompt_tokens: int = Field(description="As the server counted them (usage).")
    long_ttft_ms: float | None
    before_gaps: int
    during_gaps: int
    before_itl_p50_ms: float | None
    during_itl_p50_ms: float | None
    during_itl_p99_ms: float | None
    during_itl_max_ms: float | None
    p99_over_p50: float | None = Field(description="during_itl_p99_ms / before_itl_p50_ms.")
    decode_tpot_p50_ms: float | None = Field(description="The decodes' per-request TPOT, whole run.")
    decode_tpot_p99_ms: float | None


class LevelReport(BaseModel):
    mode: str  # "concurrency", "rate" or "interference" (level: the running decodes)
    level: float
    requests: int
    errors: int
    duration_s: float
    output_tok_s: float
    req_s: float
    ttft_p50_ms: float | None
    ttft_p99_ms: float | None
    tpot_p50_ms: float | None
    tpot_p99_ms: float | None
    e2e_p50_ms: float | None
    e2e_p99_ms: float | None
    ttft_p90_ms: float | None = None
    tpot_p90_ms: float | None = None
    itl_p50_ms: float | None = None
    itl_p90_ms: float | None = None
    itl_p99_ms: float | None = None
    e2e_p90_ms: float | None = None
    goodput_req_s: float | None = Field(default=None, description="Requests/s that met every SLO.")
    slo_met: int | None = None
    prompt_tokens: int = 0
    cached_tokens: int | None = Field(default=None, description="Summed where the server reported it.")
    cache_hit_rate: float | None = Field(default=None, description="cached / prompt tokens, same requests.")
    turns: list[TurnStats] | None = None
    interference: InterferenceStats | None = None


def _cache(results: Iterable[RequestResult]) -> tuple[int | None, float | None]:
    reported = [r for r in results if r.ok and r.cached_tokens is not None]
    if not reported:
        return None, None
    cached = sum(r.cached_tokens or 0 for r in reported)
    prompt = sum(r.prompt_tokens for r in reported)
    return cached, (round(cached / prompt, 4) if prompt else None)


def _turns(results: list[RequestResult]) -> list[TurnStats] | None:
    indexes = sorted({r.turn for r in results if r.turn is not None})
    if not indexes:
        return None
    stats = []
    for turn in indexes:
        mine = [r for r in results if r.turn == turn]
        ok = [r for r in mine if r.ok]
        ttft = [r.ttft_s for r in ok if r.ttft_s is not None]
        cached, hit_rate = _cache(ok)
        stats.append(
            TurnStats(
                turn=turn,
                requests=len(mine),
                errors=len(mine) - len(ok),
                prompt_tokens_mean=round(sum(r.prompt_tokens for r in ok) / len(ok), 1) if ok else None,
                ttft_p50_ms=ms(percentile(ttft, 50)),
                ttft_p90_ms=ms(percentile(ttft, 90)),
                ttft_p99_ms=ms(percentile(ttft, 99)),
                cached_tokens=cached,
                cache_hit_rate=hit_rate,
            )
        )
    return stats


def summarize(
    mode: str, level: float, results: list[RequestResult], duration_s: float, slo: Slo | None = None
) -> LevelReport:
    ok = [r for r in results if r.ok]
    tokens = sum(r.completion_tokens for r in ok)
    ttft = [r.ttft_s for r in ok if r.ttft_s is not None]
    tpot = [t for t in (r.tpot_s for r in ok) if t is not None]
    itl = [gap for r in ok for gap in r.itl_s]
    e2e = [r.e2e_s for r in ok]
    good = sum(slo.met(r) for r in results) if slo is not None else None
    cached, hit_rate = _cache(ok)

    def per_s(count: float) -> float:
        return round(count / duration_s, 3) if duration_s > 0 else 0.0

    return LevelReport(
        mode=mode,
        level=level,
        requests=len(results),
        errors=len(results) - len(ok),
        duration_s=round(duration_s, 3),
        output_tok_s=round(tokens / duration_s, 2) if duration_s > 0 else 0.0,
        req_s=per_s(len(ok)),
        ttft_p50_ms=ms(percentile(ttft, 50)),
        ttft_p90_ms=ms(percentile(ttft, 90)),
        ttft_p99_ms=ms(percentile(ttft, 99)),
        tpot_p50_ms=ms(percentile(tpot, 50)),
        tpot_p90_ms=ms(percentile(tpot, 90)),
        tpot_p99_ms=ms(percentile(tpot, 99)),
        itl_p50_ms=ms(percentile(itl, 50)),
        itl_p90_ms=ms(percentile(itl, 90)),
        itl_p99_ms=ms(percentile(itl, 99)),
        e2e_p50_ms=ms(percentile(e2e, 50)),
        e2e_p90_ms=ms(percentile(e2e, 90)),
        e2e_p99_ms=ms(percentile(e2e, 99)),
        goodput_req_s=None if good is None else per_s(good),
        slo_met=good,
        prompt_tokens=sum(r.prompt_tokens for r in ok),
        cached_tokens=cached,
        cache_hit_rate=hit_rate,
        turns=_turns(results),
    )


def interference_stats(rounds: list[tuple[list[RequestResult], RequestResult]]) -> InterferenceStats:
    """The decodes' gaps around the long prompt, pooled over ``rounds`` of (decodes, long prompt)."""
    before: list[float] = []
    during: list[float] = []
    tpot: list[float] = []
    long_ttft: list[float] = []
    long_tokens = 0
    for decodes, long in rounds:
        window = (long.sent_at, long.sent_at + long.e2e_s)
        if long.ok and long.ttft_s is not None:
            long_ttft.append(long.ttft_s)
        long_tokens = max(long_tokens, long.prompt_tokens)
        for decode in decodes:
            if decode.tpot_s is not None:
                tpot.append(decode.tpot_s)
            times = [decode.sent_at + t for t in decode.chunk_s]
            for start, end in pairwise(times):
                if end < window[0]:
                    before.append(end - start)
                elif end <= window[1]:
                    during.append(end - start)
    before_p50 = percentile(before, 50)
    during_p99 = percentile(during, 99)
    return InterferenceStats(
        rounds=len(rounds),
        decodes=max((len(d) for d, _ in rounds), default=0),
        long_prompt_tokens=long_tokens,
        long_ttft_ms=ms(percentile(long_ttft, 50)),
        before_gaps=len(before),
        during_gaps=len(during),
        before_itl_p50_ms=ms(before_p50),
        during_itl_p50_ms=ms(percentile(during, 50)),
        during_itl_p99_ms=ms(during_p99),
        during_itl_max_ms=ms(max(during, default=None)),
        p99_over_p50=ratio(during_p99, before_p50),
        decode_tpot_p50_ms=ms(percentile(tpot, 50)),
        decode_tpot_p99_ms=ms(percentile(tpot, 99)),
    )


class LevelRatio(BaseModel):
    """One level run on two targets: each figure as this target's over the other's."""

    mode: str
    level: float
    errors: int = Field(description="Both targets' failed requests at this level.")
    output_tok_s: float | None
    req_s: float | None
    goodput_req_s: float | None = None
    ttft_p50: float | None
    ttft_p99: float | None
    tpot_p50: float | None
    itl_p99: float | None
    e2e_p50: float | None
    ttft_p50_by_turn: dict[int, float | None] | None = None
    interference_p99_over_p50: float | None = None
    this_cache_hit_rate: float | None = None
    other_cache_hit_rate: float | None = None


class Comparison(BaseModel):
    """The same workload on two targets, level by level (this / other: below 1 is less, e.g. faster TTFT)."""

    this: str
    other: str
    other_source: str = Field(default="", description="What the other target is (URL, catalog, changes).")
    saturation_tok_s: float | None = Field(
        default=None, description="Best closed-loop output tok/s, this over the other's."
    )
    levels: list[LevelRatio] = Field(default_factory=list)


def _turn_ratios(this: LevelReport, other: LevelReport) -> dict[int, float | None] | None:
    if not this.turns or not other.turns:
        return None
    theirs = {t.turn: t.ttft_p50_ms for t in other.turns}
    return {t.turn: ratio(t.ttft_p50_ms, theirs.get(t.turn)) for t in this.turns}


def compare_levels(
    this_name: str, this: list[LevelReport], other_name: str, other: list[LevelReport], source: str = ""
) -> Comparison:
    """Ratios of every level both targets ran (matched on mode and level)."""
    theirs = {(r.mode, r.level): r for r in other}
    levels = []
    for mine in this:
        match = theirs.get((mine.mode, mine.level))
        if match is None:
            continue
        levels.append(
            LevelRatio(
                mode=mine.mode,
                level=mine.level,
                errors=mine.errors + match.errors,
                output_tok_s=ratio(mine.output_tok_s, match.output_tok_s),
                req_s=ratio(mine.req_s, match.req_s),
                goodput_req_s=ratio(mine.goodput_req_s, match.goodput_req_s),
                ttft_p50=ratio(mine.ttft_p50_ms, match.ttft_p50_ms),
                ttft_p99=ratio(mine.ttft_p99_ms, match.ttft_p99_ms),
                tpot_p50=ratio(mine.tpot_p50_ms, match.tpot_p50_ms),
                itl_p99=ratio(mine.itl_p99_ms, match.itl_p99_ms),
                e2e_p50=ratio(mine.e2e_p50_ms, match.e2e_p50_ms),
                ttft_p50_by_turn=_turn_ratios(mine, match),
                interference_p99_over_p50=ratio(
                    mine.interference.p99_over_p50 if mine.interference else None,
                    match.interference.p99_over_p50 if match.interference else None,
                ),
                this_cache_hit_rate=mine.cache_hit_rate,
                other_cache_hit_rate=match.cache_hit_rate,
            )
        )
    closed = [r.output_tok_s for r in this if r.mode == "concurrency"]
    closed_other = [r.output_tok_s for r in other if r.mode == "concurrency"]
    return Comparison(
        this=this_name,
        other=other_name,
        other_source=source,
        saturation_tok_s=ratio(max(closed, default=None), max(closed_other, default=None)),
        levels=levels,
    )
