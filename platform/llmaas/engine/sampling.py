"""Token selection for a batch of sequences, each with its own sampling controls.

``sample_batch`` picks the next token of every row of a ``[batch, vocab]`` logits tensor. The
controls (OpenAI's presence/frequency penalties and ``logit_bias``, vLLM's
``repetition_penalty`` and ``min_tokens``, then temperature, top-k and top-p) run as batched
tensor operations over the rows that use them, with per-row parameters as tensors: no Python
loop over the vocabulary. Penalties and bias touch only the tokens they concern (a gather and
a scatter over each row's distinct seen tokens), so they cost O(distinct tokens), not
O(vocab). The only loop over rows asks each sampled sequence's own seeded generator for one
uniform number (so a seed gives the same tokens whatever else is batched); the draw itself
inverts the batch's cumulative distributions at once, top-k draws from one ``topk`` and top-p
by rejection (no sort of the vocabulary). A batch where no row uses any control is one
``argmax``, as before the controls existed.

Order, as vLLM's sampler: repetition, frequency and presence penalties, ``logit_bias``, the
``min_tokens`` ban of EOS and the row's ``stop_token_ids``, the grammar mask of structured
output (every constrained row of the step at once, ``llmaas.engine.guided_matcher``), then
(sampled rows) temperature, top-k, top-p. Logprobs are the model's own log-softmax, before any
of these (vLLM's default), so a greedy token's logprob is the top one. A constrained row's
matcher advances past each token it gets (``SequenceSampler.record``).

NOTE: one row never fails the batch. Every processed row is kept finite (NaN logits become
-inf, +inf and overflow are clamped to a finite ceiling, temperatures below ``SAMPLING_EPS``
are greedy, top-p always keeps the top token), so a row can only be unsamplable when no
token has a finite logit; that row alone gets an error. So does a constrained row whose
matcher fails (a grammar error, a token it rejects). An unexpected exception in the batched
path re-runs the rows one by one, so it too ends only the row that raises.
"""

from __future__ import annotations

import contextlib
import math
import random
from collections import Counter
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch

from llmaas.engine.guided_matcher import GrammarMatcher, apply_grammar_masks
from llmaas.engine.types import SamplingParams, TokenLogprob

#: Temperatures below this are greedy (vLLM's ``_SAMPLING_EPS``): dividing by them overflows.
SAMPLING_EPS = 1e-5
#: Ceiling for processed logits: extreme settings (a repetition penalty near 0, a huge bias)
#: cannot make +inf, which would turn softmax into NaN. Divided by ``SAMPLING_EPS`` it stays finite.
MAX_LOGIT = 1e30
#: Repetition penalties are clamped to at least this (1/0 would be +inf, 0/0 NaN).
MIN_REPETITION_PENALTY = 1e-4
#: Top-k rows draw from one ``torch.topk`` of their largest k up to this; beyond, a full sort.
_TOPK_CANDIDATES = 1024
#: Rejection rounds a top-p row gets before it sorts its row instead (see ``_draw_top_p``).
_TOP_P_ROUNDS = 8
#: Prompt positions whose logprobs are computed together.
_PROMPT_SLICE = 256

_NEG_INF = float("-inf")
NO_FINITE_LOGIT = "sampling failed: no token has a finite logit (NaN model output, or every token banned)"


def make_generator(params: SamplingParams) -> torch.Generator | None:
    """A private RNG per sequence, so the same seed gives the same tokens whatever else is batched."""
    if params.temperature < SAMPLING_EPS:
        return None
    seed = params.seed if params.seed is not None else random.getrandbits(63)
    generator = torch.Generator(device="cpu")
    generator.manual_seed(seed % 2**64)  # NOTE: any int: torch takes 64 bits (negatives as two's complement)
    return generator


class TokenTally:
    """Distinct token ids and a count for each, in buffers that grow by doubling.

    What the penalties read: they touch only the tokens a sequence has seen, so a step costs
    O(distinct tokens) per row, not O(vocab), and adding a token costs O(1).
    """

    def __init__(self, token_ids: Iterable[int] = ()) -> None:
        tally = Counter(int(t) for t in token_ids)
        self._pos = {token: i for i, token in enumerate(tally)}
        size = max(16, 2 * len(tally))
        self._ids = torch.zeros(size, dtype=torch.long)
        self._counts = torch.zeros(size, dtype=torch.float32)
        if tally:
            self._ids[: len(tally)] = torch.tensor(list(tally), dtype=torch.long)
            self._counts[: len(tally)] = torch.tensor(list(tally.values()), dtype=torch.float32)

    def __len__(self) -> int:
        return len(self._pos)

    def add(self, token_id: int) -> None:
        pos = self._pos.get(token_id)
        if pos is not None:
            self._counts[pos] += 1.0
            return
        pos = len(self._pos)
        if pos == self._ids.shape[0]:
            self._ids = torch.cat([self._ids, torch.zeros_like(self._ids)])
            self._counts = torch.cat([self._counts, torch.zeros_like(self._counts)])
        self._pos[token_id] = pos
        self._ids[pos] = token_id
        self._counts[pos] = 1.0

    @property
    def ids(self) -> torch.Tensor:
        return self._ids[: len(self._pos)]

    @property
    def counts(self) -> torch.Tensor:
        return self._counts[: len(self._pos)]


class SequenceSampler:
    """One sequence's sampling state: its controls, its RNG, the token history penalties read,
    and its grammar matcher when its output is constrained (``matcher``)."""

    def __init__(
        self,
        params: SamplingParams,
        prompt_token_ids: Sequence[int] = (),
        *,
        generator: torch.Generator | None = None,
        matcher: GrammarMatcher | None = None,
    ) -> None:
        self.params = params
        self.matcher = matcher
        self.greedy = params.temperature < SAMPLING_EPS
        self.generator = generator if generator is not None else make_generator(params)
        self.num_generated = 0
        self.uses_counts = params.presence_penalty != 0.0 or params.frequency_penalty != 0.0
        self.uses_repetition = params.repetition_penalty != 1.0
        self.uses_bias = bool(params.logit_bias)
        # generated tokens (presence, frequency); prompt and generated tokens (repetition)
        self.generated = TokenTally() if self.uses_counts else None
        self.seen = TokenTally(prompt_token_ids) if self.uses_repetition else None
        bias = {int(t): float(b) for t, b in params.logit_bias}  # NOTE: a repeated id: the last one wins
        self.bias = (
            (
                torch.tensor(list(bias), dtype=torch.long),
                torch.tensor(list(bias.values()), dtype=torch.float32),
            )
            if bias
            else None
        )

    @property
    def processes(self) -> bool:
        """Whether a logits processor (penalty, bias, min_tokens ban, grammar) changes this step's logits."""
        return (
            self.uses_counts
            or self.uses_repetition
            or self.uses_bias
            or self.matcher is not None
            or self.num_generated < self.params.min_tokens
        )

    @property
    def plain(self) -> bool:
        """Greedy on the raw logits with nothing to report: the fast path."""
        return self.greedy and self.params.logprobs is None and not self.processes

    def record(self, token_id: int) -> str | None:
        """The sequence generated ``token_id``: update what the penalties, ``min_tokens`` and the
        grammar read. Returns the grammar's error when its matcher rejects the token (else None)."""
        self.num_generated += 1
        if self.generated is not None:
            self.generated.add(token_id)
        if self.seen is not None:
            self.seen.add(token_id)
        return self.matcher.accept(token_id) if self.matcher is not None else None


@dataclass
class SampleResult:
    """Per row: the token (-1 where the row failed), its logprobs when asked, and the row's error."""

    tokens: list[int]
    logprobs: list[TokenLogprob | None]
    errors: list[str | None]


def sample_batch(
    logits: torch.Tensor,
    rows: Sequence[SequenceSampler],
    *,
    eos_token_ids: Collection[int] = (),
) -> SampleResult:
    """Pick the next token for each row of ``logits`` ([batch, vocab]); record it in each row's state.

    ``eos_token_ids`` (and each row's ``stop_token_ids``) are banned for rows that have not yet
    generated ``min_tokens`` tokens.
    """
    count = len(rows)
    if all(row.plain for row in rows):  # the fast path: what a batch cost before the controls
        tokens = torch.argmax(logits, dim=-1).tolist()
        for row in rows:
            row.num_generated += 1
        return SampleResult(tokens, [None] * count, [None] * count)
    try:
        with _one_thread():
            result = _sample(logits.float(), rows, eos_token_ids)
    except Exception as exc:
        if count == 1:
            return SampleResult([-1], [None], [f"sampling failed: {type(exc).__name__}: {exc}"])
        # NOTE: something in the batched path raised; find the row(s) it was by sampling alone.
        parts = [
            sample_batch(logits[i : i + 1], [row], eos_token_ids=eos_token_ids) for i, row in enumerate(rows)
        ]
        return SampleResult(
            [p.tokens[0] for p in parts], [p.logprobs[0] for p in parts], [p.errors[0] for p in parts]
        )
    for i, (row, token, error) in enumerate(zip(rows, result.tokens, result.errors, strict=True)):
        if error is None:
            rejected = row.record(token)
            if rejected is not None:  # NOTE: the mask allowed it, so only a broken matcher gets here
                result.tokens[i], result.errors[i], result.logprobs[i] = -1, rejected, None
    return result


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Run on one intra-op thread, then restore the count.

    NOTE: the controlled path is many small operations (a pass over a few rows' vocabulary,
    gathers of a few hundred entries); several torch kernels split even tiny tensors across
    threads, and on a CPU shared with other processes every such split waits for a preempted
    thread (measured: a step of 16 controlled rows 9 ms on one thread, 330 ms on two under
    load). The reason the catalog's ``parallel_min_tokens`` gives small forward steps one
    thread; switching costs well under a microsecond.
    """
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _index(rows: list[int]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.long)


def _sample(
    logits: torch.Tensor, rows: Sequence[SequenceSampler], eos_token_ids: Collection[int]
) -> SampleResult:
    count, vocab = logits.shape
    errors: list[str | None] = [None] * count
    busy = [i for i, row in enumerate(rows) if not row.greedy or row.processes]
    if not busy:
        tokens = torch.argmax(logits, dim=-1)
    else:  # greedy rows on raw logits take the argmax; the others are picked below
        tokens = torch.zeros(count, dtype=torch.long)
        idle = [i for i, row in enumerate(rows) if row.greedy and not row.processes]
        if idle:
            index = _index(idle)
            tokens.index_copy_(0, index, torch.argmax(logits.index_select(0, index), dim=-1))
        sub = [rows[i] for i in busy]
        x = logits.index_select(0, _index(busy))  # a copy: the raw logits stay for logprobs
        grammar_errors = _apply_processors(x, sub, vocab, eos_token_ids)
        best, picked = x.max(dim=-1)
        # NOTE: max propagates NaN, so a finite row maximum means no NaN and no +inf in the row
        broken = (~torch.isfinite(best)).nonzero()[:, 0]
        if broken.numel():
            x.index_copy_(0, broken, _finite(x.index_select(0, broken)))
            best, picked = x.max(dim=-1)
        finite = torch.isfinite(best).tolist()
        drawn = [j for j, row in enumerate(sub) if not row.greedy and finite[j]]
        if len(drawn) == len(busy):
            picked = _draw(x, best, sub)
        elif drawn:
            index = _index(drawn)
            draws = _draw(x.index_select(0, index), best.index_select(0, index), [sub[j] for j in drawn])
            picked.index_copy_(0, index, draws)
        tokens.index_copy_(0, _index(busy), picked)
        for j, i in enumerate(busy):
            if not finite[j]:
                errors[i] = NO_FINITE_LOGIT
        for j, error in grammar_errors.items():
            errors[busy[j]] = error
    token_list = tokens.tolist()
    logprobs = _token_logprobs(logits, rows, token_list, errors)
    return SampleResult([-1 if e else t for t, e in zip(token_list, errors, strict=True)], logprobs, errors)


def _finite(x: torch.Tensor) -> torch.Tensor:
    """NaN to -inf (never drawn), +inf and overflow to ``MAX_LOGIT``: softmax stays finite."""
    return torch.nan_to_num(x, nan=_NEG_INF, posinf=MAX_LOGIT, neginf=_NEG_INF).clamp_(max=MAX_LOGIT)


def _entries(
    per_row: Sequence[tuple[torch.Tensor, torch.Tensor]], rows: list[int], vocab: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Flatten per-row (token ids, values) into (row index, token id, value) per entry.

    Token ids outside the vocabulary are dropped (a tokenizer larger than the model's embedding,
    or an id a request made up), never used as an index.
    """
    lengths = torch.tensor([len(ids) for ids, _ in per_row], dtype=torch.long)
    row_ids = torch.repeat_interleave(_index(rows), lengths)
    ids = torch.cat([ids for ids, _ in per_row])
    values = torch.cat([values for _, values in per_row])
    valid = (ids >= 0) & (ids < vocab)
    if not bool(valid.all()):
        return row_ids[valid], ids[valid], values[valid]
    return row_ids, ids, values


def _apply_processors(
    x: torch.Tensor, rows: list[SequenceSampler], vocab: int, eos_token_ids: Collection[int]
) -> dict[int, str]:
    """Penalties, logit bias, the min_tokens ban and grammar masks, in place on ``x`` ([rows, vocab]).

    The first three touch only the tokens they concern (a gather and a scatter over the rows'
    seen tokens, bias entries or EOS ids), so their cost does not grow with the vocabulary; the
    grammar masks are one pass over the constrained rows. Returns the constrained rows whose
    matcher failed, with its error (they have no token left).
    """
    rep = [j for j, row in enumerate(rows) if row.seen is not None]
    if rep:
        penalty = [max(rows[j].params.repetition_penalty, MIN_REPETITION_PENALTY) for j in rep]
        per_row = []
        for j, p in zip(rep, penalty, strict=True):
            seen = rows[j].seen
            assert seen is not None
            per_row.append((seen.ids, torch.full((len(seen),), p, dtype=torch.float32)))
        row_ids, ids, factor = _entries(per_row, rep, vocab)
        values = x[row_ids, ids]
        # HF / vLLM: a seen token's positive logit is divided by the penalty, a negative one multiplied
        x[row_ids, ids] = torch.where(values > 0, values / factor, values * factor)
    pen = [j for j, row in enumerate(rows) if row.generated is not None and len(row.generated)]
    if pen:
        per_row = []
        for j in pen:
            tally, params = rows[j].generated, rows[j].params
            assert tally is not None
            per_row.append(
                (
                    tally.ids,
                    tally.counts * params.frequency_penalty + params.presence_penalty,
                )
            )
        row_ids, ids, penalty_values = _entries(per_row, pen, vocab)
        # OpenAI: logit -= frequency * count + presence * (count > 0), over the generated tokens
        x.index_put_((row_ids, ids), -penalty_values, accumulate=True)
    biases = [(j, row.bias) for j, row in enumerate(rows) if row.bias is not None]
    if biases:
        row_ids, ids, bias = _entries([b for _, b in biases], [j for j, _ in biases], vocab)
        x.index_put_((row_ids, ids), bias, accumulate=True)
    banned = [j for j, row in enumerate(rows) if row.num_generated < row.params.min_tokens]
    if banned:  # EOS and the row's stop_token_ids end a sequence: not before min_tokens
        eos = [t for t in eos_token_ids if 0 <= t < vocab]
        if not any(rows[j].params.stop_token_ids for j in banned):
            if eos:
                x[_index(banned)[:, None], _index(eos)[None, :]] = _NEG_INF
        else:
            ends = [_index([*eos, *rows[j].params.stop_token_ids]) for j in banned]
            row_ids, ids, _ = _entries([(e, torch.zeros(len(e))) for e in ends], banned, vocab)
            x[row_ids, ids] = _NEG_INF
    constrained = [j for j, row in enumerate(rows) if row.matcher is not None]
    matchers = [matcher for row in rows if (matcher := row.matcher) is not None]
    if not matchers:
        return {}
    if len(matchers) == len(rows):
        errors = apply_grammar_masks(x, matchers)
    else:  # NOTE: one op over the constrained rows, on a copy of them (the others stay as they are)
        index = _index(constrained)
        part = x.index_select(0, index)
        errors = apply_grammar_masks(part, matchers)
        x.index_copy_(0, index, part)
    return {j: error for j, error in zip(constrained, errors, strict=True) if error is not None}


def _draw(x: torch.Tensor, best: torch.Tensor, rows: list[SequenceSampler]) -> torch.Tensor:
    """Temperature, top-k, top-p, then one draw per row from its own generator.

    ``x`` holds finite row maxima ``best``; no NaN, no +inf. A draw inverts the row's cumulative
    distribution at a uniform number from the row's generator (what ``torch.multinomial`` does,
    batched): the per-row loop only asks each generator for its number.
    """
    temperature = torch.tensor([row.params.temperature for row in rows], dtype=torch.float32)
    temperature = temperature.clamp_(min=SAMPLING_EPS)[:, None]
    x = x / temperature
    overflow = (~torch.isfinite(best[:, None] / temperature)[:, 0]).nonzero()[:, 0]
    if overflow.numel():  # a logit beyond 3e33 at a tiny temperature: +inf after the division
        x.index_copy_(0, overflow, _finite(x.index_select(0, overflow)))
    uniform = _uniforms(rows)
    vocab = x.shape[1]
    top_k = [j for j, row in enumerate(rows) if 0 < row.params.top_k < vocab]
    top_p = [j for j, row in enumerate(rows) if row.params.top_p < 1.0 and not 0 < row.params.top_k < vocab]
    if not top_k and not top_p:
        return _inverse_cdf(torch.softmax(x, dim=-1), uniform)
    out = torch.empty(len(rows), dtype=torch.long)
    filtered = {*top_k, *top_p}
    for group, method in (
        ([j for j in range(len(rows)) if j not in filtered], None),
        (top_k, _draw_top_k),
        (top_p, _draw_top_p),
    ):
        if not group:
            continue
        index = _index(group)
        if len(group) == len(rows):
            part, part_uniform = x, uniform
        else:
            part, part_uniform = x.index_select(0, index), uniform.index_select(0, index)
        if method is None:
            draws = _inverse_cdf(torch.softmax(part, dim=-1), part_uniform)
        else:
            draws = method(part, [rows[j] for j in group], part_uniform)
        out.index_copy_(0, index, draws)
    return out


def _uniforms(rows: Sequence[SequenceSampler]) -> torch.Tensor:
    """One uniform number in [0, 1) per row, from the row's own generator."""
    return torch.cat([torch.rand(1, generator=row.generator) for row in rows])


def _inverse_cdf(weights: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """Per row of ``weights`` (>= 0, some > 0), the position where ``uniform`` ([0, 1)) falls in
    their cumulative sum: a draw with probability proportional to the weights."""
    cdf = weights.cumsum(dim=-1)
    total = cdf[:, -1:]
    # NOTE: strictly below the total (u * total can round up to it), so a position with weight is found
    target = torch.minimum(uniform[:, None] * total, torch.nextafter(total, torch.zeros_like(total)))
    return torch.searchsorted(cdf, target, right=True)[:, 0].clamp_(max=weights.shape[1] - 1)


def _draw_top_k(x: torch.Tensor, rows: list[SequenceSampler], uniform: torch.Tensor) -> torch.Tensor:
    """Draws from each row's top-k, renormalised, then cut to its top-p nucleus (vLLM's order).

    The candidates are one ``torch.topk`` of the largest k (a sort of the vocabulary only when
    some k exceeds ``_TOPK_CANDIDATES``). The top token always stays.
    """
    vocab = x.shape[1]
    k = torch.tensor([row.params.top_k for row in rows])[:, None]
    width = int(k.max())
    if width <= _TOPK_CANDIDATES:
        values, ids = torch.topk(x, width, dim=-1)
    else:
        values, ids = torch.sort(x, dim=-1, descending=True)
        width = vocab
    probs = torch.softmax(values.masked_fill(torch.arange(width)[None, :] >= k, _NEG_INF), dim=-1)
    limit = torch.tensor([row.params.top_p if row.params.top_p < 1.0 else math.inf for row in rows])
    drop = (probs.cumsum(dim=-1) - probs) >= limit[:, None]  # the mass before a token reaches top_p
    drop[:, 0] = False
    where = _inverse_cdf(probs.masked_fill(drop, 0.0), uniform)
    return ids.gather(1, where[:, None])[:, 0]


def _draw_top_p(x: torch.Tensor, rows: list[SequenceSampler], uniform: torch.Tensor) -> torch.Tensor:
    """Draws from each row's top-p nucleus, without sorting the vocabulary.

    The nucleus is every token whose strictly more likely tokens hold less than top_p of the
    mass (the top token always). Rows whose top token alone reaches top_p take it. The others
    draw by rejection (as FlashInfer's top-p sampling): draw from the tokens above a pivot; keep
    the draw if it is in the nucleus, else raise the pivot to its probability (every token at or
    below it is outside the nucleus too) and draw again. Each draw is one pass over the row and a
    top-p of 0.95 keeps the first 95% of the time; after ``_TOP_P_ROUNDS`` a row sorts instead.
    """
    probs = torch.softmax(x, dim=-1)
    count = probs.shape[0]
    limit = torch.tensor([row.params.top_p for row in rows], dtype=torch.float32)
    first, first_ids = probs.max(dim=-1)
    out = first_ids.clone()
    pending = (first < limit).nonzero()[:, 0]
    pivot = torch.full((count,), -1.0)
    draw_uniform = uniform.index_select(0, pending)
    for round_ in range(_TOP_P_ROUNDS):
        if not pending.numel():
            return out
        part = probs if round_ == 0 and pending.numel() == count else probs.index_select(0, pending)
        # the first draw is from the whole distribution, later ones from above each row's pivot
        weights = (
            part if round_ == 0 else part.masked_fill(part <= pivot.index_select(0, pending)[:, None], 0.0)
        )
        where = _inverse_cdf(weights, draw_uniform)
        chosen = part.gather(1, where[:, None])
        above = part.masked_fill(part <= chosen, 0.0).sum(dim=-1)  # mass strictly more likely
        accept = (above < limit.index_select(0, pending)) | (above == 0)
        out.index_copy_(0, pending[accept], where[accept])
        pivot.index_copy_(0, pending[~accept], chosen[~accept, 0])
        pending = pending[~accept]
        draw_uniform = _uniforms([rows[i] for i in pending.tolist()]) if pending.numel() else uniform[:0]
    if pending.numel():  # rare: a tiny top_p over a flat distribution
        ordered, ids = torch.sort(probs.index_select(0, pending), dim=-1, descending=True)
        drop = (ordered.cumsum(dim=-1) - ordered) >= limit.index_select(0, pending)[:, None]
        drop[:, 0] = False
        where = _inverse_cdf(ordered.masked_fill(drop, 0.0), draw_uniform)
        out.index_copy_(0, pending, ids.gather(1, where[:, None])[:, 0])
    return out


def _token_logprobs(
    logits: torch.Tensor, rows: Sequence[SequenceSampler], tokens: list[int], errors: list[str | None]
) -> list[TokenLogprob | None]:
    out: list[TokenLogprob | None] = [None] * len(rows)
    asked = [i for i, row in enumerate(rows) if row.params.logprobs is not None and errors[i] is None]
    if not asked:
        return out
    raw = logits.index_select(0, _index(asked))
    # NOTE: logit - logsumexp is log_softmax without writing a [rows, vocab] tensor
    norm = torch.logsumexp(raw, dim=-1, keepdim=True)
    chosen = (raw.gather(1, _index([tokens[i] for i in asked])[:, None]) - norm)[:, 0].tolist()
    tops = _top(raw, [rows[i].params.logprobs or 0 for i in asked], norm)
    for j, i in enumerate(asked):
        out[i] = TokenLogprob(token_id=tokens[i], logprob=chosen[j], top=tops[j])
    return out


def _top(
    logits: torch.Tensor, sizes: list[int], norm: torch.Tensor | None = None
) -> list[list[tuple[int, float]]]:
    """The ``sizes[r]`` most likely (token, logprob) pairs of each row, best first.

    ``logits`` are logprobs, or logits whose log-normaliser per row is ``norm`` ([rows, 1]).
    """
    most = min(max(sizes, default=0), logits.shape[-1])
    if most == 0:
        return [[] for _ in sizes]
    values, ids = torch.topk(logits, most, dim=-1)
    if norm is not None:
        values = values - norm
    values_l, ids_l = values.tolist(), ids.tolist()
    return [list(zip(ids_l[r][:n], values_l[r][:n], strict=True)) for r, n in enumerate(sizes)]


def prompt_logprobs(
    logits: torch.Tensor, prompt_token_ids: Sequence[int], top_n: int
) -> list[TokenLogprob | None]:
    """Each prompt token's logprob given the tokens before it (the first has none), and its top ``top_n``.

    ``logits`` holds the model's logits at the prompt's positions ([len(prompt), vocab] or longer,
    the prompt right-aligned); position i predicts token i + 1.
    """
    length = len(prompt_token_ids)
    if length <= 1:
        return [None] * length
    end = logits.shape[0]
    following = torch.tensor(list(prompt_token_ids[1:]), dtype=torch.long)
    out: list[TokenLogprob | None] = [None]
    # NOTE: in slices of positions, so a long prompt never needs a second [positions, vocab] tensor
    for start in range(0, length - 1, _PROMPT_SLICE):
        stop = min(start + _PROMPT_SLICE, length - 1)
        part = logits[end - length + start : end - length + stop].float()
        norm = torch.logsumexp(part, dim=-1, keepdim=True)
        chosen = (part.gather(1, following[start:stop, None]) - norm)[:, 0].tolist()
        tops = _top(part, [top_n] * (stop - start), norm)
        out.extend(
            TokenLogprob(token_id=int(t), logprob=lp, top=top)
            for t, lp, top in zip(prompt_token_ids[1 + start : 1 + stop], chosen, tops, strict=True)
        )
    return out


__all__ = [
    "MAX_LOGIT",
    "SAMPLING_EPS",
    "SampleResult",
    "SequenceSampler",
    "make_generator",
    "prompt_logprobs",
    "sample_batch",
]
