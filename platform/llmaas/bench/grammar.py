"""Grammar libraries for structured output, measured on one tokenizer: which one the engine uses.

    python -m llmaas.bench.grammar [--tokenizer DIR] [--libraries xgrammar,llguidance,outlines_core]
                                   [--timeout 20] [--out build/bench/grammar.json]

For each library (xgrammar, llguidance, outlines-core; those not installed are reported as such)
and each case below, a fresh subprocess (so that memory and caches do not leak between runs, and a
runaway compile can be killed at ``--timeout``) measures:

- ``setup_s``: the per-model tokenizer preprocessing (what an engine does once at start);
- ``compile_s``: compiling the case into what a sequence starts from, including the first mask
  (llguidance and xgrammar build parts of their automata lazily, so the first mask is part of
  the price of a new grammar);
- ``mask_us``: per-token mask computation while walking a valid instance token by token (median
  and max over the instance's tokens), for the cases that have one;
- ``rss_mb``: the process's resident memory after setup, and what the compile added.

Cases: ``typical`` (a pydantic model: strings, an integer with bounds, an enum, an array, a nested
object, an optional number; compact JSON, no free whitespace), ``any_object`` (OpenAI's
``json_object``), ``choice``, and hostile inputs a public endpoint must survive: 100 nested
objects, an enum of 50,000 strings, ambiguous and nested-quantifier regexes (``(a|aa)*b``,
``^(a+)+$``), a counted repetition (``(ab|cd){1000}``) and a DFA blow-up (``[ab]*a[ab]{20}``: a
deterministic automaton needs 2^20 states).

The libraries that are not the engine's dependency can be measured from a side directory:
``pip install --no-deps --target DIR xgrammar apache-tvm-ffi outlines-core`` then run with
``PYTHONPATH=DIR``. The results and the choice are in ``llmaas.engine.guided``'s docstring.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

LIBRARIES = ("xgrammar", "llguidance", "outlines_core")
Kind = Literal["json", "regex", "choice"]


class Case(BaseModel):
    name: str
    kind: Kind
    spec: str  # JSON schema text, a regex, or a JSON list of choices
    instance: str | None = None  # a valid output, walked token by token for mask times


class Measure(BaseModel):
    library: str
    case: str
    status: str  # ok, refused (the library's own error), timeout, crashed, not installed
    detail: str = ""
    setup_s: float | None = None
    compile_s: float | None = None
    mask_us_median: float | None = None
    mask_us_max: float | None = None
    tokens: int = 0
    matcher_us: float | None = None  # a new sequence's matcher from the compiled grammar
    loop_pace: float | None = None  # a Python thread's pace during the compile (1: unhindered)
    setup_rss_mb: float | None = None
    compile_rss_mb: float | None = None
    wall_s: float | None = None


class GrammarBench(BaseModel):
    command: str
    tokenizer: str
    vocab: int
    timeout_s: float
    load_average: tuple[float, float, float] | None = None
    results: list[Measure] = Field(default_factory=list)


class _Address(BaseModel):
    street: str
    city: str
    zip_code: str = Field(pattern=r"^[0-9]{5}$")


class _Person(BaseModel):
    """The ``typical`` case: what an application asks for (pydantic's ``model_json_schema``)."""

    name: str
    age: int = Field(ge=0, le=150)
    role: Literal["admin", "user", "guest"]
    tags: list[str] = Field(max_length=5)
    address: _Address
    score: float | None = None


def _typical_schema() -> tuple[str, str]:
    instance = {
        "name": "Ada Lovelace",
        "age": 36,
        "role": "admin",
        "tags": ["math", "engines"],
        "address": {"street": "12 St James's Square", "city": "London", "zip_code": "12345"},
        "score": 9.5,
    }
    return json.dumps(_Person.model_json_schema()), json.dumps(instance, separators=(",", ":"))


def _nested(depth: int) -> tuple[str, str]:
    schema: dict[str, Any] = {"type": "object", "properties": {}, "additionalProperties": False}
    instance = "{}"
    for _ in range(depth):
        schema = {
            "type": "object",
            "properties": {"a": schema},
            "required": ["a"],
            "additionalProperties": False,
        }
        instance = '{"a":' + instance + "}"
    return json.dumps(schema), instance


def cases() -> list[Case]:
    typical, typical_instance = _typical_schema()
    nested, nested_instance = _nested(100)
    enum = json.dumps({"enum": [f"value-{i:05d}" for i in range(50_000)]})
    return [
        Case(name="typical", kind="json", spec=typical, instance=typical_instance),
        Case(
            name="any_object",
            kind="json",
            spec='{"type": "object"}',
            instance='{"answer":"yes","n":[1,2.5,null,true]}',
        ),
        Case(name="choice", kind="choice", spec='["positive", "negative", "neutral"]', instance="neutral"),
        Case(name="nested_100", kind="json", spec=nested, instance=nested_instance),
        Case(name="enum_50k", kind="json", spec=enum, instance='"value-49999"'),
        Case(name="regex_(a|aa)*b", kind="regex", spec="(a|aa)*b", instance="aaaaaab"),
        Case(name="regex_^(a+)+$", kind="regex", spec="^(a+)+$", instance="aaaaaaaa"),
        Case(name="regex_(ab|cd){1000}", kind="regex", spec="(ab|cd){1000}", instance="abcd" * 500),
        Case(name="regex_[ab]*a[ab]{20}", kind="regex", spec="[ab]*a[ab]{20}", instance="ba" * 15),
    ]


def _rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


# ---- one library, one case (in a subprocess) -------------------------------------------------


class _Adapter:
    """What each library does: per-model setup, compile, a per-sequence matcher, mask, advance."""

    def setup(self, tokenizer: Any, vocab: int) -> None:
        raise NotImplementedError

    def compile(self, case: Case) -> Any:
        raise NotImplementedError

    def matcher(self, compiled: Any) -> Any:
        raise NotImplementedError

    def mask(self, state: Any) -> None:
        raise NotImplementedError

    def advance(self, state: Any, token: int) -> bool:
        raise NotImplementedError


class _XGrammar(_Adapter):
    def setup(self, tokenizer: Any, vocab: int) -> None:
        # NOTE: not the engine's dependency (see the module docstring): imported by name, untyped
        xgr = importlib.import_module("xgrammar")
        self.xgr = xgr
        info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab)
        self.compiler = xgr.GrammarCompiler(info, max_threads=1, cache_enabled=False)
        self.bitmask = xgr.allocate_token_bitmask(1, vocab)

    def compile(self, case: Case) -> Any:
        if case.kind == "json":
            return self.compiler.compile_json_schema(case.spec, any_whitespace=False, separators=(",", ":"))
        if case.kind == "regex":
            return self.compiler.compile_regex(case.spec)
        ebnf = "root ::= " + " | ".join(json.dumps(c) for c in json.loads(case.spec))
        return self.compiler.compile_grammar(ebnf)

    def matcher(self, compiled: Any) -> Any:
        return self.xgr.GrammarMatcher(compiled)

    def mask(self, state: Any) -> None:
        state.fill_next_token_bitmask(self.bitmask)

    def advance(self, state: Any, token: int) -> bool:
        return bool(state.accept_token(token))


class _LLGuidance(_Adapter):
    def setup(self, tokenizer: Any, vocab: int) -> None:
        import llguidance
        import llguidance.hf
        import torch

        # NOTE: the pointer API, as the engine (llmaas.engine.guided_matcher): llguidance.torch
        # compiles a torch.compile kernel at import, which would count in setup time and memory
        self.llg = llguidance
        self.tokenizer = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab)
        self.words = (vocab + 31) // 32
        self.bitmask = torch.full((1, self.words), -1, dtype=torch.int32)

    def compile(self, case: Case) -> Any:
        matcher_cls = self.llg.LLMatcher
        if case.kind == "json":
            grammar = matcher_cls.grammar_from_json_schema(
                case.spec, overrides={"whitespace_flexible": False}
            )
        elif case.kind == "regex":
            grammar = matcher_cls.grammar_from_regex(case.spec)
        else:
            grammar = matcher_cls.grammar_from_lark(
                "start: " + " | ".join(json.dumps(c) for c in json.loads(case.spec))
            )
        # NOTE: the matcher is the compiled form (its lexer is built lazily, on the first mask);
        # sequences start from copies of it
        template = matcher_cls(self.tokenizer, grammar, log_level=0)
        self.mask(template)
        if template.is_error():
            raise ValueError(template.get_error())
        return template

    def matcher(self, compiled: Any) -> Any:
        return compiled.deep_copy()

    def mask(self, state: Any) -> None:
        state.unsafe_compute_mask_ptr(self.bitmask.data_ptr(), self.words * 4)

    def advance(self, state: Any, token: int) -> bool:
        return bool(state.consume_token(token))


def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet, reversed: the character a BPE vocabulary shows for each byte."""
    visible = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    codes = list(visible)
    extra = 0
    for byte in range(256):
        if byte not in visible:
            visible.append(byte)
            codes.append(256 + extra)
            extra += 1
    return {chr(code): byte for byte, code in zip(visible, codes, strict=True)}


class _Outlines(_Adapter):
    def setup(self, tokenizer: Any, vocab: int) -> None:
        import torch

        outlines_core = importlib.import_module("outlines_core")
        self.oc = outlines_core
        decoder = _byte_decoder()
        special = set(tokenizer.all_special_ids)
        tokens: dict[bytes, list[int]] = {}
        for text, token in tokenizer.get_vocab().items():
            if token in special or token == tokenizer.eos_token_id:
                continue
            try:
                tokens.setdefault(bytes(decoder[c] for c in text), []).append(token)
            except KeyError:
                continue
        self.vocabulary = outlines_core.Vocabulary(tokenizer.eos_token_id, tokens)
        self.bitmask = torch.full((1, (vocab + 31) // 32), -1, dtype=torch.int32)

    def compile(self, case: Case) -> Any:
        import re

        if case.kind == "json":
            regex = self.oc.json_schema.build_regex_from_schema(case.spec, whitespace_pattern="")
        elif case.kind == "regex":
            regex = case.spec
        else:
            regex = "|".join(re.escape(c) for c in json.loads(case.spec))
        return self.oc.Index(regex, self.vocabulary)

    def matcher(self, compiled: Any) -> Any:
        return self.oc.Guide(compiled)

    def mask(self, state: Any) -> None:
        state.write_mask_into(self.bitmask.data_ptr(), self.bitmask.numel(), 4)

    def advance(self, state: Any, token: int) -> bool:
        try:
            state.advance(token)
        except ValueError:
            return False
        return True


_ADAPTERS: dict[str, type[_Adapter]] = {
    "xgrammar": _XGrammar,
    "llguidance": _LLGuidance,
    "outlines_core": _Outlines,
}


class _Ticker:
    """A Python loop on another thread: how much of its pace it keeps while a compile runs tells
    whether the library releases the GIL (a replica's step thread must keep its pace)."""

    def __init__(self) -> None:
        self.ticks = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for _ in range(1000):
                self.ticks += 1
            time.sleep(0)

    def rate(self, seconds: float) -> float:
        before, started = self.ticks, time.perf_counter()
        time.sleep(seconds)
        return (self.ticks - before) / (time.perf_counter() - started)

    def __enter__(self) -> _Ticker:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def measure_one(library: str, case: Case, tokenizer_dir: Path, timeout: float) -> Measure:
    """Set up ``library`` on the tokenizer, compile ``case``, walk its instance; in this process,
    which SIGALRM ends after ``timeout`` seconds of compiling (native code cannot be interrupted)."""
    import importlib.util

    from transformers import AutoTokenizer

    if importlib.util.find_spec(library) is None:
        return Measure(library=library, case=case.name, status="not installed")
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    vocab = len(tokenizer)
    adapter = _ADAPTERS[library]()
    before = _rss_mb()
    started = time.perf_counter()
    adapter.setup(tokenizer, vocab)
    result = Measure(library=library, case=case.name, status="ok", setup_s=time.perf_counter() - started)
    result.setup_rss_mb = _rss_mb() - before
    before = _rss_mb()
    with _Ticker() as ticker:
        alone = ticker.rate(0.2)
        signal.signal(signal.SIGALRM, signal.SIG_DFL)  # NOTE: the default action ends the process
        signal.setitimer(signal.ITIMER_REAL, timeout)
        ticks, started = ticker.ticks, time.perf_counter()
        try:
            compiled = adapter.compile(case)
            state = adapter.matcher(compiled)
            adapter.mask(state)
        except Exception as exc:  # the library's own refusal is a result, not a failure of the bench
            result.status, result.detail = "refused", f"{type(exc).__name__}: {str(exc)[:160]}"
        result.compile_s = time.perf_counter() - started
        signal.setitimer(signal.ITIMER_REAL, 0)
        if result.compile_s >= 0.05:
            result.loop_pace = (ticker.ticks - ticks) / result.compile_s / alone
    result.compile_rss_mb = _rss_mb() - before
    if result.status != "ok":
        return result
    started = time.perf_counter()
    for _ in range(10):
        adapter.matcher(compiled)
    result.matcher_us = (time.perf_counter() - started) / 10 * 1e6
    if case.instance is not None:
        ids = tokenizer.encode(case.instance, add_special_tokens=False)
        times = []
        for i, token in enumerate(ids):
            if i:  # the first mask is part of compile_s
                started = time.perf_counter()
                adapter.mask(state)
                times.append((time.perf_counter() - started) * 1e6)
            if not adapter.advance(state, token):
                result.detail = f"rejected token {i} ({tokenizer.decode([token])!r}) of the valid instance"
                break
        result.tokens = len(times)
        if times:
            result.mask_us_median = statistics.median(times)
            result.mask_us_max = max(times)
    return result


# ---- the driver -------------------------------------------------------------------------------


def _default_tokenizer_dir() -> Path:
    from llmaas.config.catalog import ModelSource
    from llmaas.models import resolve_model_path

    cache = Path(os.environ.get("LLMAAS_CACHE_DIR", ".models"))
    return resolve_model_path(ModelSource(demo="smollm2-135m-instruct"), cache)


def run_case(library: str, case: Case, tokenizer_dir: Path, timeout: float) -> Measure:
    """``measure_one`` in a fresh subprocess; a compile still running after ``timeout`` s ends it."""
    command = [sys.executable, "-m", "llmaas.bench.grammar", "--worker", library, case.name]
    command += ["--tokenizer", str(tokenizer_dir), "--timeout", str(timeout)]
    started = time.perf_counter()
    try:  # NOTE: a generous bound on the whole process (imports, tokenizer setup) on a busy machine
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout + 300, check=False)
    except subprocess.TimeoutExpired:
        return Measure(library=library, case=case.name, status="timeout", detail="the process hung")
    wall = time.perf_counter() - started
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode == -signal.SIGALRM:
        return Measure(
            library=library,
            case=case.name,
            status="timeout",
            detail=f"still compiling after {timeout:.0f} s",
            wall_s=wall,
        )
    if done.returncode != 0 or not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or [""]
        return Measure(
            library=library,
            case=case.name,
            status="crashed",
            detail=f"exit {done.returncode}: {tail[0][:160]}",
            wall_s=wall,
        )
    result = Measure.model_validate_json(lines[-1])
    result.wall_s = wall
    return result


def _cell(value: float | None, fmt: str) -> str:
    width = int(fmt.split(".")[0])
    return f"{'-':>{width}}" if value is None else format(value, fmt)


_COLUMNS = (
    ("setup s", "setup_s", "8.2f"),
    ("+MB", "setup_rss_mb", "6.0f"),
    ("compile s", "compile_s", "10.4f"),
    ("+MB", "compile_rss_mb", "7.1f"),
    ("pace", "loop_pace", "6.2f"),
    ("matcher us", "matcher_us", "11.0f"),
    ("mask us p50", "mask_us_median", "12.0f"),
    ("max", "mask_us_max", "8.0f"),
)


def render(report: GrammarBench) -> str:
    header = f"{'library':<14}{'case':<22}{'status':<10}"
    header += "".join(f"{title:>{int(fmt.split('.')[0])}}" for title, _, fmt in _COLUMNS)
    lines = [
        f"tokenizer {report.tokenizer} ({report.vocab} tokens), compile timeout {report.timeout_s:.0f} s",
        header + "  detail",
    ]
    for r in report.results:
        row = f"{r.library:<14}{r.case:<22}{r.status:<10}"
        row += "".join(_cell(getattr(r, name), fmt) for _, name, fmt in _COLUMNS)
        lines.append(row + f"  {r.detail}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m llmaas.bench.grammar",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--tokenizer", type=Path, help="a Hugging Face directory (default: SmolLM2's)")
    parser.add_argument("--libraries", default=",".join(LIBRARIES), help="comma-separated")
    parser.add_argument("--cases", default="", help="comma-separated case names (default: all)")
    parser.add_argument("--timeout", type=float, default=20.0, help="compile seconds per library and case")
    parser.add_argument("--out", type=Path, default=Path("build/bench/grammar.json"))
    parser.add_argument("--worker", nargs=2, metavar=("LIBRARY", "CASE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    by_name = {case.name: case for case in cases()}
    tokenizer_dir = args.tokenizer or _default_tokenizer_dir()
    if args.worker:
        library, name = args.worker
        print(measure_one(library, by_name[name], tokenizer_dir, args.timeout).model_dump_json())
        return 0
    libraries = [name.strip() for name in args.libraries.split(",") if name.strip()]
    unknown = [name for name in libraries if name not in _ADAPTERS]
    if unknown:
        parser.error(f"unknown libraries {unknown}: choose from {', '.join(LIBRARIES)}")
    wanted = [name.strip() for name in args.cases.split(",") if name.strip()] or list(by_name)
    from transformers import AutoTokenizer

    report = GrammarBench(
        command="python -m llmaas.bench.grammar " + shlex.join(sys.argv[1:] if argv is None else argv),
        tokenizer=str(tokenizer_dir),
        vocab=len(AutoTokenizer.from_pretrained(tokenizer_dir)),
        timeout_s=args.timeout,
    )
    for library in libraries:
        for name in wanted:
            result = run_case(library, by_name[name], tokenizer_dir, args.timeout)
            print(f"{library:<14}{name:<22}{result.status}", file=sys.stderr, flush=True)
            report.results.append(result)
    report.load_average = os.getloadavg()
    print(render(report))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report.model_dump_json(indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
