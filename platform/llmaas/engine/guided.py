"""Structured output: compiling a ``StructuredOutput`` into a grammar the sampler holds rows to.

The engine builds one ``GrammarCompiler`` per model from its Hugging Face tokenizer. The
scheduler awaits ``compile(spec)`` on its event loop, before a sequence is queued: the work
runs on the compiler's own thread, never on the model's step thread, within a time bound
(``GuidedLimits.compile_timeout_s``, 5 s) and size bounds (``llmaas.engine.guided_checks``), and
what cannot be compiled within them is refused with ``InvalidStructuredOutput`` (a 400 naming
``spec.param``). Each sequence gets a ``GrammarMatcher`` from the ``CompiledGrammar``; the sampler
masks all constrained rows of a step at once (``apply_grammar_masks``).

Library: llguidance, chosen by measurement (``python -m llmaas.bench.grammar``: SmolLM2-135M's
49,152-token tokenizer, 2 CPU cores shared with other work, each case in a fresh process, killed
after 20 s of compiling; compile includes the first mask, as both lazy libraries build their
automata while masking)::

    case                      xgrammar 0.2.9         llguidance 1.9.1         outlines-core 0.2.14
    tokenizer setup           0.24-0.29 s, +14 MB    0.42-0.49 s, +38 MB      0.17-0.20 s, +6 MB
    typical pydantic model    8-29 ms; mask 2 us     4-7 ms; mask 12-18 us    0.16-0.35 s; mask 1 us
    any JSON object           16-31 ms               3-16 ms                  14.6 s / killed
    100 nested objects        0.35-0.98 s            refused in 0.3 ms        refused
    enum of 50,000 strings    19.6 s, +202 MB, then  0.24-0.26 s, +16 MB;     killed
                              masks of 7 ms (51 max) masks of 40 us
    (a|aa)*b, ^(a+)+$         1-5 ms                 2-7 ms                   7 ms; ^...$ refused
    (ab|cd){1000}             1-5 ms                 2-4 ms                   2.2-6.4 s
    [ab]*a[ab]{20} (2^20 DFA) 1 ms                   2 ms                     killed
    a sequence's own matcher  8-18 us                3-5 us (a copy)          1-4 us

(ranges: runs on a quiet and on a loaded machine; "killed": still compiling after 20 s). All
three release the GIL while compiling (a Python thread kept 76-99% of its pace meanwhile).
Why llguidance:

- Every hostile case ends in milliseconds, compiled or refused: it bounds its own work
  (``LLParserLimits``: lexer fuel, grammar size, lexer states, Earley items per step), so no
  compile runs on. xgrammar has no such bound and no way to cancel a compile: the
  50,000-value enum took 20 s and 200 MB (over 20 s on the loaded machine), then 7 ms per mask;
  outlines-core builds a whole DFA up front (15 s for "any JSON object" alone).
- Its matcher is lazy (the lexer grows as the text needs it), so compiles take milliseconds
  and a sequence's matcher is a copy that shares the compiled grammar.
- It installs alone (one abi3 wheel, no dependencies, typed); xgrammar pulls in triton and
  apache-tvm-ffi on Linux.
- The price: a mask costs 10-40 us per row instead of xgrammar's 2 us (``apply_grammar_masks``:
  about 1 ms for 16 constrained rows, next to a decode step of SmolLM2 at batch 32 of 210 ms
  on one thread; ``python -m llmaas.bench.sampler``: the plain rows of a batch that is a third
  plain, a third penalised and a third JSON-constrained keep 0.978-0.980 of their all-plain
  throughput), and the tokenizer's tables take 0.4 s and about 40 MB per model, built on the
  first structured request (not at start).

Choices made here:

- Compact JSON: no free whitespace between tokens (``whitespace_flexible: False``), so a small
  model cannot loop on whitespace, and outputs parse the same way everywhere.
- EOS is allowed only where the grammar accepts; once the grammar is complete (nothing can
  follow), the scheduler ends the sequence at once with finish reason ``stop``.
- Compile bounds: ``check_size`` on the event loop (text lengths, number of choices), the rest
  (parse, nesting, enum values, properties, the library's compile and first mask, and one
  probe step: a lexer that explodes only once text starts, like ``(a{1000}){1000}``, fails
  here rather than on the model's thread) on the compiler's thread. A compile that takes
  longer than the bound is refused and cached as such, so a repeat is refused at once.
- Cancellation: llguidance cannot stop a running compile; its own limits (set below its
  defaults here) bound one to well under a second: the worst measured, the exploding lexer of
  ``(a{1000}){1000}``, is refused after 0.5 s (1-4 s on a loaded machine).
  A queued compile whose every waiter gave up (timed out, disconnected) is skipped, so a
  burst of hostile schemas cannot queue work that runs after nobody waits for it.
- Cache: the least recently used of ``GuidedLimits.cache_size`` compiled grammars (and
  refusals) are kept, keyed by the spec (not by ``param``); concurrent requests for the
  same spec share one compile.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import llguidance
import numpy as np
import torch

from llmaas.engine.errors import EngineNotReady, EngineOverloaded, InvalidStructuredOutput
from llmaas.engine.guided_checks import GrammarRefused, GuidedLimits, check_schema, check_size, describe
from llmaas.engine.guided_matcher import CompiledGrammar, GrammarMatcher, apply_grammar_masks, one_line
from llmaas.engine.types import StructuredOutput

if TYPE_CHECKING:
    from llguidance._lib import JsonCompileOptions

logger = logging.getLogger(__name__)

#: JSON compile options: compact JSON, no whitespace runs between tokens.
JSON_OPTIONS: JsonCompileOptions = {"whitespace_flexible": False}
_ANY_OBJECT = '{"type": "object"}'

_Key = tuple[str, str | None, str | None, tuple[str, ...]]


class _Abandoned(Exception):
    """A queued compile nobody waits for any more: skipped, not cached."""


@dataclass(eq=False)
class _Entry:
    """One spec in the cache: its compile (done or not) and who waits for it."""

    future: concurrent.futures.Future[CompiledGrammar] = field(default_factory=concurrent.futures.Future)
    waiters: int = 0  # NOTE: changed on the event loop, read by the compile thread (an int: atomic)
    started: bool = False


def _key(spec: StructuredOutput) -> _Key:
    return (spec.kind, spec.json_schema, spec.regex, spec.choice)


class GrammarCompiler:
    """One model's structured-output compiler: its tokenizer's tables, a thread and a cache.

    ``tokenizer``: the model's Hugging Face (fast) tokenizer; ``eos_token_ids``: the tokens that
    end a sequence (allowed where the grammar accepts). ``name`` (the model id) goes in errors.
    """

    def __init__(
        self,
        tokenizer: Any,
        *,
        eos_token_ids: Collection[int],
        limits: GuidedLimits | None = None,
        name: str = "",
    ) -> None:
        self.limits = limits or GuidedLimits()
        self.name = name
        self._hf_tokenizer = tokenizer
        self._eos = sorted({int(t) for t in eos_token_ids})
        # NOTE: below llguidance's defaults (1M initial lexer fuel, 200k per step, 250k lexer
        # states): measured, the exploding lexer of (a{1000}){1000} is refused in 0.5 s instead of
        # 1.5 s (and its states cost less memory), while a 9,000-value enum, 1,000 anyOf branches
        # and formats (uuid, date-time, email) still compile. verbose_errors=False: no grammar dumps
        # in the messages clients get.
        self._parser_limits = llguidance.LLParserLimits(
            initial_lexer_fuel=300_000, step_lexer_fuel=100_000, max_lexer_states=50_000, verbose_errors=False
        )
        # NOTE: one thread: a compile takes a core while it runs, and the model's thread needs one
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"llmaas-grammar-{name}"
        )
        self._tokenizer: Any = None
        self._tokenizer_lock = threading.Lock()
        self._tokenizer_future: concurrent.futures.Future[Any] | None = None
        self._cache: OrderedDict[_Key, _Entry] = OrderedDict()

    # ---- event-loop side -------------------------------------------------------------
    async def compile(self, spec: StructuredOutput) -> CompiledGrammar:
        """The compiled grammar of ``spec``, from the cache or compiled now on the compiler's thread.

        Raises ``InvalidStructuredOutput`` (naming ``spec.param``) for a spec that is invalid, too
        big or too slow to compile; ``EngineOverloaded`` when earlier compiles kept this one
        queued past the time bound (nothing is wrong with the spec: retry).
        """
        what = describe(spec)
        try:
            check_size(spec, self.limits)
        except GrammarRefused as exc:
            raise InvalidStructuredOutput(f"{what} {exc.reason}", spec.param) from None
        if self._tokenizer is None:
            # NOTE: built once per model, on first use (0.4 s on a quiet machine); not part of
            # the compile's time bound
            if self._tokenizer_future is None:
                self._tokenizer_future = self._submit(self._build_tokenizer)
            try:
                await _wait(self._tokenizer_future, None)
            except GrammarRefused as exc:
                raise InvalidStructuredOutput(exc.reason, spec.param) from None
        entry = self._join(_key(spec))
        timeout = self.limits.compile_timeout_s
        try:
            return await _wait(entry.future, timeout)
        except asyncio.TimeoutError:
            if not entry.started:
                raise EngineOverloaded(
                    f"model {self.name!r}: structured output waited more than {timeout:g} s for the "
                    "grammar compiler (busy with other requests); retry shortly"
                ) from None
            raise InvalidStructuredOutput(
                f"{what} did not compile within {timeout:g} s; simplify it", spec.param
            ) from None
        except GrammarRefused as exc:
            raise InvalidStructuredOutput(f"{what} {exc.reason}", spec.param) from None
        finally:
            entry.waiters -= 1

    def _join(self, key: _Key) -> _Entry:
        """The cache entry of ``key`` (its compile submitted if need be), counting one more waiter."""
        entry = self._cache.get(key)
        if entry is None or (entry.future.done() and isinstance(entry.future.exception(), _Abandoned)):
            entry = _Entry(waiters=1)  # NOTE: before the submit: the job may start at once
            entry.future = self._submit(self._job, entry, key)
            self._cache[key] = entry
            self._evict()
            return entry
        entry.waiters += 1
        self._cache.move_to_end(key)
        return entry

    def _submit(self, fn: Callable[..., Any], *args: Any) -> concurrent.futures.Future[Any]:
        try:
            return self._executor.submit(fn, *args)
        except RuntimeError:  # shut down
            raise EngineNotReady(f"model {self.name!r} is shutting down") from None

    def _evict(self) -> None:
        excess = len(self._cache) - self.limits.cache_size
        for key in [k for k, e in self._cache.items() if e.future.done()][: max(0, excess)]:
            del self._cache[key]

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    # ---- any thread ------------------------------------------------------------------
    def compile_blocking(self, spec: StructuredOutput) -> CompiledGrammar:
        """``compile`` in the calling thread, without the cache or the time bound (tests, tools)."""
        what = describe(spec)
        try:
            self._build_tokenizer()
        except GrammarRefused as exc:
            raise InvalidStructuredOutput(exc.reason, spec.param) from None
        try:
            check_size(spec, self.limits)
            return self._compile(_key(spec))
        except GrammarRefused as exc:
            raise InvalidStructuredOutput(f"{what} {exc.reason}", spec.param) from None

    # ---- the compiler's thread ---------------------------------------------------------
    def _build_tokenizer(self) -> Any:
        with self._tokenizer_lock:
            if self._tokenizer is None:
                import llguidance.hf

                try:
                    self._tokenizer = llguidance.hf.from_tokenizer(
                        self._hf_tokenizer, eos_token=self._eos or None
                    )
                except Exception as exc:
                    logger.warning("model %s: no structured output: %s", self.name, exc)
                    raise GrammarRefused(
                        f"model {self.name!r} cannot constrain its output: its tokenizer is not usable "
                        f"for grammars ({type(exc).__name__}: {one_line(str(exc))})"
                    ) from None
            return self._tokenizer

    def _job(self, entry: _Entry, key: _Key) -> CompiledGrammar:
        if entry.waiters == 0:  # everyone gave up while it was queued
            raise _Abandoned
        entry.started = True
        return self._compile(key)

    def _compile(self, key: _Key) -> CompiledGrammar:
        started = time.perf_counter()
        kind, schema, regex, choice = key
        try:
            if kind == "json":
                text = schema if schema is not None else _ANY_OBJECT
                check_schema(text, self.limits)
                grammar = llguidance.LLMatcher.grammar_from_json_schema(text, overrides=JSON_OPTIONS)
            elif kind == "regex":
                assert regex is not None
                grammar = llguidance.LLMatcher.grammar_from_regex(regex)
            else:
                # NOTE: Lark string literals read JSON's escapes (llguidance's own grammar_from does this)
                grammar = llguidance.LLMatcher.grammar_from_lark(
                    "start: " + " | ".join(json.dumps(c) for c in choice)
                )
        except ValueError as exc:
            raise GrammarRefused(f"is not usable: {one_line(str(exc))}") from None
        tokenizer = self._tokenizer
        matcher = llguidance.LLMatcher(tokenizer, grammar, log_level=0, limits=self._parser_limits)
        words = (int(tokenizer.vocab_size) + 31) // 32
        _check(matcher, words, probe=True)
        elapsed = time.perf_counter() - started
        if elapsed > self.limits.compile_timeout_s:
            raise GrammarRefused(
                f"took {elapsed:.1f} s to compile, more than the {self.limits.compile_timeout_s:g} s "
                "allowed; simplify it"
            )
        return CompiledGrammar(matcher, words, elapsed)


def _check(matcher: Any, words: int, *, probe: bool) -> None:
    """Compute the first mask (the lexer is built lazily: its cost belongs to the compile) and,
    with ``probe``, take one allowed step on a copy: raise ``GrammarRefused`` on any error."""
    if matcher.is_error():
        raise GrammarRefused(f"cannot be compiled: {one_line(matcher.get_error())}")
    row = torch.zeros(words, dtype=torch.int32)
    matcher.unsafe_compute_mask_ptr(row.data_ptr(), words * 4)
    if matcher.is_error():
        raise GrammarRefused(f"cannot be compiled: {one_line(matcher.get_error())}")
    if not probe or matcher.is_stopped():
        return
    allowed = np.flatnonzero(np.unpackbits(row.numpy().view(np.uint8), bitorder="little"))
    copy = matcher.deep_copy()
    if allowed.size and copy.consume_token(int(allowed[-1])):
        row.zero_()
        copy.unsafe_compute_mask_ptr(row.data_ptr(), words * 4)
    if copy.is_error():
        raise GrammarRefused(f"is too complex to follow: {one_line(copy.get_error())}")


async def _wait(future: concurrent.futures.Future[Any], timeout: float | None) -> Any:
    """Await ``future`` (another thread's) for at most ``timeout`` s, without cancelling it:
    other requests may wait for the same compile."""
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[Any] = loop.create_future()

    def settle(done: concurrent.futures.Future[Any]) -> None:
        if waiter.done():
            return
        if done.cancelled():  # the compiler shut down with it queued
            waiter.set_exception(EngineNotReady("the engine is shutting down"))
            return
        error = done.exception()
        if error is not None:
            waiter.set_exception(error)
        else:
            waiter.set_result(done.result())

    def on_done(done: concurrent.futures.Future[Any]) -> None:
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
            loop.call_soon_threadsafe(settle, done)

    future.add_done_callback(on_done)
    return await asyncio.wait_for(waiter, timeout)


__all__ = [
    "CompiledGrammar",
    "GrammarCompiler",
    "GrammarMatcher",
    "GuidedLimits",
    "apply_grammar_masks",
]
