"""Plain data that crosses the engine contract (and Serve handles): pydantic, picklable."""

from __future__ import annotations

from enum import Enum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, model_validator


class FinishReason(str, Enum):
    STOP = "stop"  # EOS or a stop string
    LENGTH = "length"  # max_tokens or the context limit
    ABORT = "abort"  # cancelled (client gone) or engine failure


class StructuredOutput(BaseModel):
    """A constraint on what one sequence may generate, decoded through a grammar.

    ``json``: a JSON value valid for ``json_schema`` (JSON text of the schema; None: any JSON
    object, OpenAI's ``json_object``). ``regex``: text matching ``regex`` in full. ``choice``:
    exactly one of ``choice``. The engine compiles it off its step loop, within a time and size
    bound, and refuses what it cannot compile with an ``InvalidStructuredOutput`` naming ``param``
    (the request field it came from, for the 400). Output ends (EOS) only where the grammar
    accepts, so a finished sequence is valid by construction; ``max_tokens`` can still cut it.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["json", "regex", "choice"]
    json_schema: str | None = None
    regex: str | None = None
    choice: tuple[str, ...] = ()
    param: str = Field(default="response_format", description="The request field errors name.")

    @model_validator(mode="after")
    def _one_spec(self) -> StructuredOutput:
        given = {
            "json_schema": self.json_schema is not None,
            "regex": self.regex is not None,
            "choice": bool(self.choice),
        }
        allowed = {"json": {"json_schema"}, "regex": {"regex"}, "choice": {"choice"}}[self.kind]
        extra = [name for name, present in given.items() if present and name not in allowed]
        if extra:
            raise ValueError(f"structured output of kind {self.kind!r} takes no {', '.join(extra)}")
        if self.kind == "regex" and self.regex is None:
            raise ValueError("structured output of kind 'regex' needs regex")
        if self.kind == "choice" and not self.choice:
            raise ValueError("structured output of kind 'choice' needs at least one choice")
        return self


class SamplingParams(BaseModel):
    """Per-sequence sampling. ``temperature == 0`` is greedy decoding."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_tokens: int = Field(
        default=16,
        ge=0,
        description="0 only with prompt_logprobs: score the prompt, generate nothing (echo).",
    )
    temperature: float = Field(default=1.0, ge=0.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int = Field(default=0, ge=0)
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False
    # NOTE: the controls below are OpenAI's (and vLLM's repetition_penalty); each row of a batch
    # carries its own, applied as batched tensor operations in the sampler.
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    repetition_penalty: float = Field(default=1.0, gt=0.0, le=10.0)
    logit_bias: tuple[tuple[int, float], ...] = Field(
        default=(), description="(token id, bias in -100..100) pairs added to the logits."
    )
    min_tokens: int = Field(
        default=0,
        ge=0,
        description="Generate at least this many tokens: EOS and stop_token_ids are banned, and stop "
        "strings do not count, before then.",
    )
    # NOTE: vLLM's; OpenAI has none. The API layer exposes it as a request field of the same name.
    stop_token_ids: tuple[NonNegativeInt, ...] = Field(
        default=(),
        description="Token ids that end the sequence (finish reason stop) like EOS: reported in "
        "token_ids, never in text; banned before min_tokens; ignore_eos does not apply to them.",
    )
    logprobs: int | None = Field(
        default=None,
        ge=0,
        le=20,
        description="Return each generated token's logprob and this many top alternatives (None: none).",
    )
    prompt_logprobs: int | None = Field(
        default=None,
        ge=0,
        le=20,
        description="Return each prompt token's logprob (the first is None) and this many top alternatives.",
    )
    structured: StructuredOutput | None = Field(
        default=None, description="Constrain the output to a JSON schema, a regex or a choice."
    )

    @model_validator(mode="after")
    def _nothing_to_generate_only_to_score(self) -> SamplingParams:
        if self.max_tokens == 0 and self.prompt_logprobs is None:
            raise ValueError(
                "max_tokens 0 generates nothing: it is allowed only with prompt_logprobs set (an echo "
                "that scores the prompt); otherwise ask for at least 1 token"
            )
        return self

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


class AdapterRef(BaseModel):
    """A LoRA adapter that a request runs with, on its base model's replica (PEFT's directory)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1, description="The fine-tuned model's id.")
    path: str = Field(min_length=1, description="The adapter's directory (``save_pretrained``).")


class GenerationRequest(BaseModel):
    """One sequence to generate: prompt token ids in, chunks out."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    request_id: str
    prompt_token_ids: list[int] = Field(min_length=1)
    sampling: SamplingParams
    stream: bool = Field(default=True, description="False: one chunk at the end (no per-token messages).")
    cache_salt: str | None = Field(
        default=None,
        description="Part of the prefix cache's first block key: prompts share cached KV only with "
        "requests of the same salt (an adapter id, or a tenant the gateway isolates).",
    )
    adapter: AdapterRef | None = Field(
        default=None, description="Run with this LoRA adapter over the base weights (None: the base)."
    )

    @property
    def prefix_salt(self) -> str | None:
        """What the prefix cache's keys are salted with: the adapter's KV is never the base's."""
        if self.adapter is None:
            return self.cache_salt
        return f"adapter:{self.adapter.name}\n{self.cache_salt or ''}"


class TokenLogprob(BaseModel):
    """One position's token and its logprob, with the top alternatives there (most likely first).

    Values are the model's log-softmax over the vocabulary before any sampling processor
    (temperature, penalties, bias, top-k/p), as vLLM reports them.
    """

    token_id: int
    logprob: float
    top: list[tuple[int, float]] = Field(default_factory=list)


class GenerationChunk(BaseModel):
    """What the engine yields per step for one sequence. The last one has ``finish_reason`` set."""

    request_id: str
    text: str = ""
    token_ids: list[int] = Field(default_factory=list)
    logprobs: list[TokenLogprob] | None = Field(
        default=None, description="One per token of token_ids, when the request asked for logprobs."
    )
    prompt_logprobs: list[TokenLogprob | None] | None = Field(
        default=None, description="First chunk only: one per prompt token (the first None), when asked."
    )
    num_prompt_tokens: int = 0
    num_generated_tokens: int = 0
    num_cached_tokens: int = Field(
        default=0, description="Prompt tokens whose KV came from the prefix cache (not prefilled)."
    )
    finish_reason: FinishReason | None = None
    error: str | None = None


class ModelInfo(BaseModel):
    """Facts about a loaded model that the router needs (limits, special tokens)."""

    model_id: str
    task: str
    max_context_length: int
    vocab_size: int
    eos_token_ids: list[int] = Field(default_factory=list)
    embedding_dim: int | None = None
    labels: list[str] = Field(
        default_factory=list, description="Classify models: the class names by index (config.id2label)."
    )
    tensor_parallel_size: int = 1
    architecture: str = ""


class EngineHealth(BaseModel):
    healthy: bool
    detail: str = ""
    running: int = 0
    waiting: int = 0
    steps: int = 0  # forward steps run since start
    peak_batch: int = 0  # most sequences ever decoded together
    kv_capacity_tokens: int = 0  # token slots the KV cache budget holds
    kv_used_tokens: int = 0  # slots the running batch holds now (rows x padded width)
    kv_peak_tokens: int = 0  # most slots ever held
    kv_deferred: int = 0  # admissions that waited because the KV cache was full
    prefix_cache: str = ""  # "on", or "off: <why>" ("" for engines without one)
    prefix_cache_queries: int = 0  # prompt tokens looked up in the prefix cache (vLLM's queries_total)
    prefix_cache_hits: int = 0  # of those, tokens found cached (vLLM's hits_total)
    prefix_cache_tokens: int = 0  # tokens the prefix cache holds now
    prefix_cache_capacity_tokens: int = 0  # most tokens it may hold
    adapters: list[str] = Field(default_factory=list)  # LoRA adapters loaded on the model
    chunked_prompts: int = 0  # prompts prefilled in chunks while others decoded
    prefill_chunk_tokens: int = 0  # the chunk size now (measured unless the catalog fixes it)

    @property
    def prefix_cache_hit_rate(self) -> float | None:
        """Cached prompt tokens over prompt tokens looked up; None before any lookup."""
        if self.prefix_cache_queries <= 0:
            return None
        return self.prefix_cache_hits / self.prefix_cache_queries

    @property
    def kv_usage(self) -> float | None:
        """KV slots held over the budget (0..1); None for an engine without a KV budget."""
        if self.kv_capacity_tokens <= 0:
            return None
        return min(self.kv_used_tokens / self.kv_capacity_tokens, 1.0)
