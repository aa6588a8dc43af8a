"""The benchmark's workloads: what each request asks, seeded, so that every target gets the same ones.

- ``random`` (the default): prompts of random words from a small list, ``prompt_words`` long, and
  output lengths drawn from ``output_tokens``.
- ``shared-prefix``: one shared system prompt of ``prefix_tokens`` tokens and a distinct question of
  ``question_tokens`` each (vLLM's prefix repetition, SGLang's generated-shared-prefix).
- ``multi-turn``: conversations of ``turns`` turns, each turn sending the whole conversation so far
  with the previous turns' real answers. The first turn opens with a document of ``prefix_tokens``
  tokens of its own (not shared with other conversations); every turn then asks a question of
  ``question_tokens``.
- ``long-prompt-interference``: ``decodes`` streaming decodes of ``output_tokens[1]`` tokens each,
  and one prompt of ``long_prompt_tokens`` (``output_tokens[0]`` out) arriving while they run.

The token-sized workloads cut their text from a bundled English corpus (``bench/data``) through the
served model's own tokenizer (``TokenCodec``): a slice of the corpus's tokens, decoded, is text that
tokenizes back to about that many tokens. Different slices start at different tokens, so no two
prompts share a prefix beyond what the workload shares on purpose.
"""

from __future__ import annotations

import random
from importlib import resources
from typing import Any, Literal, Protocol

import httpx
from pydantic import BaseModel, Field, model_validator

from llmaas.config.base import BaseConfig

Workload = Literal["random", "shared-prefix", "multi-turn", "long-prompt-interference"]
WORKLOADS: tuple[Workload, ...] = ("random", "shared-prefix", "multi-turn", "long-prompt-interference")
CHAT_WORKLOADS: tuple[Workload, ...] = ("shared-prefix", "multi-turn")
# NOTE: what a chat template adds around one message (ChatML: about 5 tokens), with room to spare
TEMPLATE_TOKENS_PER_MESSAGE = 8


class WorkloadError(ValueError):
    """The workload cannot run against this server as asked: the message names the option to change."""


WORDS = [
    "the",
    "model",
    "serves",
    "many",
    "requests",
    "on",
    "ray",
    "with",
    "deepspeed",
    "and",
    "a",
    "router",
    "that",
    "streams",
    "tokens",
    "to",
    "every",
    "client",
    "while",
    "replicas",
    "scale",
    "up",
    "and",
    "down",
    "as",
    "load",
    "rises",
    "and",
    "falls",
    "across",
    "the",
    "cluster",
]


class WorkloadConfig(BaseConfig):
    """What the requests ask: the workload and its sizes."""

    workload: Workload = Field(default="random", description=f"One of {', '.join(WORKLOADS)}.")
    prompt_words: tuple[int, int] = Field(
        default=(16, 64), description="random: prompt length range, in words."
    )
    output_tokens: tuple[int, int] = Field(default=(32, 128), description="max_tokens range (ignore_eos).")
    prefix_tokens: int = Field(
        default=1000,
        ge=0,
        description="shared-prefix: the shared system prompt; "
        "multi-turn: each conversation's opening document.",
    )
    question_tokens: int = Field(
        default=32,
        ge=1,
        description="shared-prefix: each distinct question; multi-turn: each turn's question; "
        "long-prompt-interference: each running decode's prompt.",
    )
    turns: int = Field(default=4, ge=1, description="multi-turn: turns per conversation.")
    decodes: int = Field(default=16, ge=1, description="long-prompt-interference: running decodes.")
    long_prompt_tokens: int = Field(default=2000, ge=1, description="long-prompt-interference: its prompt.")
    rounds: int = Field(default=1, ge=1, description="long-prompt-interference: rounds, pooled.")

    @model_validator(mode="after")
    def _ranges(self) -> WorkloadConfig:
        for name in ("prompt_words", "output_tokens"):
            low, high = getattr(self, name)
            if not 1 <= low <= high:
                raise ValueError(f"{name} ({low}, {high}): need 1 <= min <= max")
        return self

    @property
    def chat(self) -> bool:
        """Whether the workload is sent as chat completions (its messages through the chat template)."""
        return self.workload in CHAT_WORKLOADS

    def longest_request_tokens(self) -> int | None:
        """About the most tokens (prompt + output) one request needs; None: not sized in tokens."""
        out = self.output_tokens[1]
        overhead = TEMPLATE_TOKENS_PER_MESSAGE
        if self.workload == "shared-prefix":
            return self.prefix_tokens + self.question_tokens + 2 * overhead + out
        if self.workload == "multi-turn":
            asked = self.prefix_tokens + self.turns * self.question_tokens
            return asked + (2 * self.turns - 1) * overhead + self.turns * out
        if self.workload == "long-prompt-interference":
            return max(self.long_prompt_tokens + self.output_tokens[0], self.question_tokens + out)
        return None

    def check_context(self, max_model_len: int) -> None:
        """Raises WorkloadError naming the options to lower when a request cannot fit the model."""
        needed = self.longest_request_tokens()
        if needed is None or needed <= max_model_len:
            return
        knobs = {
            "shared-prefix": "--prefix-tokens, --question-tokens or --output-max",
            "multi-turn": "--prefix-tokens, --turns, --question-tokens or --output-max",
            "long-prompt-interference": "--long-prompt-tokens or --output-min",
        }[self.workload]
        raise WorkloadError(
            f"the {self.workload} workload's longest request needs about {needed} tokens, beyond the "
            f"model's context of {max_model_len}: lower {knobs}"
        )


class Work(BaseModel):
    """One request of the workload, whatever the target's wire format."""

    prompt: str
    max_tokens: int
    system: str | None = Field(default=None, description="Chat only: the system message.")
    history: list[dict[str, str]] = Field(
        default_factory=list, description="Chat only: the conversation's earlier user/assistant messages."
    )

    def messages(self) -> list[dict[str, str]]:
        system = [{"role": "system", "content": self.system}] if self.system is not None else []
        return [*system, *self.history, {"role": "user", "content": self.prompt}]


class Conversation(BaseModel):
    """One multi-turn conversation: its user messages and each answer's max_tokens."""

    user_turns: list[str]
    max_tokens: list[int]


def make_workload(config: WorkloadConfig, count: int, rng: random.Random) -> list[Work]:
    """``count`` requests of the random workload."""
    work = []
    for _ in range(count):
        words = rng.randint(*config.prompt_words)
        work.append(
            Work(
                prompt=" ".join(rng.choice(WORDS) for _ in range(words)),
                max_tokens=rng.randint(*config.output_tokens),
            )
        )
    return work


class TokenCodec(Protocol):
    """A tokenizer as the workloads need it: text to ids and back, without special tokens."""

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...


class HttpCodec:
    """The served model's own tokenizer, through the server's ``/tokenize`` and ``/detokenize``
    (vLLM's routes, which llmaas serves too)."""

    def __init__(self, url: str, model: str, headers: dict[str, str] | None = None) -> None:
        self.url = url
        self.model = model
        self.max_model_len: int | None = None
        self._client = httpx.Client(base_url=url, headers=headers, timeout=60.0)

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        response = self._client.post(path, json=body)
        if response.status_code == 404 and "error" not in response.text:
            raise WorkloadError(
                f"{self.url} has no {path} route (vLLM's): the token-sized workloads need the served "
                "model's tokenizer; use --workload random against this server"
            )
        if response.status_code != 200:
            raise WorkloadError(
                f"{path} on {self.url} answered {response.status_code}: {response.text[:300]}"
            )
        data: dict[str, Any] = response.json()
        return data

    def encode(self, text: str) -> list[int]:
        data = self._post("/tokenize", {"model": self.model, "prompt": text, "add_special_tokens": False})
        self.max_model_len = int(data["max_model_len"])
        return [int(i) for i in data["tokens"]]

    def decode(self, ids: list[int]) -> str:
        return str(self._post("/detokenize", {"model": self.model, "tokens": ids})["prompt"])

    def close(self) -> None:
        self._client.close()


def corpus_text() -> str:
    """The bundled English text the token-sized prompts are cut from."""
    return resources.files("llmaas.bench").joinpath("data/perplexity.txt").read_text(encoding="utf-8")


class TextSource:
    """Text of about N tokens of the codec's tokenizer, cut from the corpus at a token offset.

    The corpus's tokens repeat end to end (a paragraph break between), so any length can be cut.
    """

    def __init__(self, codec: TokenCodec, corpus: str | None = None) -> None:
        self.codec = codec
        self.ids = codec.encode((corpus if corpus is not None else corpus_text()).strip() + "\n\n")
        if not self.ids:
            raise ValueError("the corpus tokenized to no tokens")
        self._cache: dict[tuple[int, int], str] = {}

    def text(self, tokens: int, offset: int) -> str:
        start = offset % len(self.ids)
        key = (start, tokens)
        if key not in self._cache:
            ids = [self.ids[(start + k) % len(self.ids)] for k in range(tokens)]
            self._cache[key] = self.codec.decode(ids)
        return self._cache[key]

    def offsets(self, count: int, rng: random.Random) -> list[int]:
        """``count`` distinct token offsets (while the corpus has that many), spread from a seeded start."""
        start = rng.randrange(len(self.ids))
        stride = max(1, len(self.ids) // max(1, count))
        return [(start + i * stride) % len(self.ids) for i in range(count)]

    def texts(self, count: int, tokens: int, rng: random.Random) -> list[str]:
        """``count`` texts of ``tokens`` tokens, each from its own offset."""
        return [self.text(tokens, offset) for offset in self.offsets(count, rng)]


def _outputs(config: WorkloadConfig, count: int, rng: random.Random) -> list[int]:
    return [rng.randint(*config.output_tokens) for _ in range(count)]


def shared_prefix_prompt(config: WorkloadConfig, source: TextSource, seed: int) -> str:
    """The one system prompt every request of the run shares (of the seed, not of the level)."""
    return source.texts(1, config.prefix_tokens, random.Random(f"{seed}-prefix"))[0]


def shared_prefix_work(
    config: WorkloadConfig, source: TextSource, count: int, rng: random.Random, seed: int
) -> list[Work]:
    """``count`` requests: the shared system prompt and a distinct question each."""
    prefix = shared_prefix_prompt(config, source, seed)
    questions = source.texts(count, config.question_tokens, rng)
    return [
        Work(prompt=question, max_tokens=out, system=prefix)
        for question, out in zip(questions, _outputs(config, count, rng), strict=True)
    ]


def conversations(
    config: WorkloadConfig, source: TextSource, count: int, rng: random.Random
) -> list[Conversation]:
    """``count`` conversations: a document of its own opens each, then a question a turn."""
    documents = source.texts(count, config.prefix_tokens, rng) if config.prefix_tokens else [""] * count
    questions = source.texts(count * config.turns, config.question_tokens, rng)
    result = []
    for i, document in enumerate(documents):
        turns = questions[i * config.turns : (i + 1) * config.turns]
        if document:
            turns[0] = f"{document}\n\n{turns[0]}"
        result.append(Conversation(user_turns=turns, max_tokens=_outputs(config, config.turns, rng)))
    return result


def interference_work(
    config: WorkloadConfig, source: TextSource, rng: random.Random
) -> tuple[list[Work], Work]:
    """The running decodes (short prompts, the longest outputs) and the long prompt (the shortest)."""
    first, *rest = source.offsets(config.decodes + 1, rng)
    decodes = [
        Work(prompt=source.text(config.question_tokens, offset), max_tokens=config.output_tokens[1])
        for offset in rest
    ]
    # NOTE: from an offset of its own, so it shares no prefix with any decode
    long = Work(prompt=source.text(config.long_prompt_tokens, first), max_tokens=config.output_tokens[0])
    return decodes, long
