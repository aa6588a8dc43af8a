"""The model catalog: what the platform serves, and how each model is sized.

One YAML file, validated here. Each entry becomes one Serve deployment (see
``llmaas.deployments.builder``); every rule below has a failing-input test in
``tests/unit/test_catalog.py``.
"""

from __future__ import annotations

import re
from enum import Enum
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import ByteSize, Field, field_validator, model_validator

from llmaas.config.base import BaseConfig
from llmaas.config.fine_tuning import FineTuningConfig
from llmaas.config.gateway import GatewayConfig
from llmaas.naming import deployment_name, pool_deployment_name

MODEL_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")

DemoModelName = Literal[
    "tiny-llama-chat", "tiny-gpt2", "bench-llama", "all-minilm-l6-v2", "smollm2-135m-instruct"
]
DType = Literal["auto", "float32", "float16", "bfloat16"]
# NOTE: only what the quantization benchmark (python -m llmaas.bench.quant, its table in
# benchmarks/quant-cpu-2core) showed worth offering; llmaas.engine.quantize applies it with torchao.
# int8-dynamic was measured and left out: slower than float32 in eager mode, 3% worse perplexity.
Quantization = Literal["none", "int8-weight-only"]
QUANTIZATION_METHODS: tuple[str, ...] = get_args(Quantization)


class Task(str, Enum):
    """What a model does: generate text, embed it, or classify it (a sequence-classification head)."""

    GENERATE = "generate"
    EMBED = "embed"
    CLASSIFY = "classify"


SERVED_TASKS = (Task.GENERATE, Task.EMBED, Task.CLASSIFY)


class ModelSource(BaseConfig):
    """Where the weights come from: a local Hugging Face directory, a local GGUF file, or a demo model."""

    path: str | None = Field(
        default=None,
        description="A local directory in Hugging Face layout (config.json, weights, tokenizer files).",
    )
    gguf: str | None = Field(
        default=None,
        description=(
            "An absolute path to a local GGUF file (llama.cpp's format; Llama, Mistral, Qwen2/3, Phi-3,"
            " Gemma 2/3 and the other architectures transformers loads from GGUF). Dequantized to float"
            " and saved once as a Hugging Face directory in cache_dir, keyed by the file's content hash;"
            " the tokenizer and chat template come from its metadata."
        ),
    )
    demo: DemoModelName | None = Field(
        default=None,
        description="One of the models llmaas builds or ships itself (no hub needed).",
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> ModelSource:
        if sum(value is not None for value in (self.path, self.gguf, self.demo)) != 1:
            raise ValueError(
                "source needs exactly one of 'path' (a local Hugging Face directory), 'gguf' (a local GGUF "
                f"file) or 'demo' (one of: {', '.join(get_args(DemoModelName))})"
            )
        return self

    @field_validator("path")
    @classmethod
    def _path_not_blank(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("source.path is empty: give the directory that holds config.json")
        return value

    @field_validator("gguf")
    @classmethod
    def _gguf_file(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if not value.strip():
            raise ValueError("source.gguf is empty: give the absolute path of a local .gguf file")
        # NOTE: replicas and the tokenizer deployment resolve the source in Ray workers, whose
        # working directory is not the caller's: a relative path would name another file there.
        if not Path(value).expanduser().is_absolute():
            raise ValueError(
                f"source.gguf {value!r} is a relative path: model replicas run in other working "
                "directories; give an absolute path (or one starting with ~/)"
            )
        return value

    def describe(self) -> str:
        if self.gguf is not None:
            return f"gguf:{self.gguf}"
        return f"demo:{self.demo}" if self.demo else f"path:{self.path}"


class BatchingConfig(BaseConfig):
    """Limits of the batching scheduler in each replica."""

    max_batch_size: int = Field(default=16, ge=1, le=1024, description="Sequences decoded together.")
    max_batch_tokens: int = Field(
        default=8192, ge=16, description="Prompt tokens prefilled in one step across the batch."
    )
    batch_wait_ms: float = Field(
        default=2.0, ge=0.0, le=1000.0, description="How long a new batch waits for more requests to join."
    )
    stream_interval: int | Literal["auto"] = Field(
        default="auto",
        description=(
            "Tokens per streamed message after the first (which is sent at once). Above 1, fewer"
            " messages cross Serve and SSE under load, at the cost of burstier streams. 'auto': one"
            " token a message while at most 8 streams run, then as many as keep a replica's messages"
            " at 8 per decoding step (32 streams: 4 tokens a message)."
        ),
    )
    kv_cache_bytes: ByteSize | None = Field(
        default=None,
        description=(
            "KV cache budget per replica (per rank under TP), e.g. '2GiB'. Sequences wait until"
            " their cache fits; unset means max_batch_size sequences of full context."
        ),
    )
    max_queued_requests: int = Field(
        default=256,
        ge=0,
        description="Requests Serve holds for this model when every replica is full; more get 503.",
    )
    chunked_prefill: bool = Field(
        default=True,
        description=(
            "A prompt of more than four chunks that arrives while others decode is prefilled in chunks,"
            " one per decode step, so running streams keep their pace (vLLM's chunked prefill)."
            " Off: it is prefilled whole, and every running stream waits for it."
        ),
    )
    prefill_chunk_tokens: int | None = Field(
        default=None,
        ge=16,
        description=(
            "Prompt tokens per chunk. Unset: sized on each replica from its measured step times, so"
            " that a chunk takes about as long as one decode step of the running batch (a stream's"
            " gap between tokens stays within about twice its usual one, on any hardware)."
        ),
    )

    @field_validator("stream_interval", mode="before")
    @classmethod
    def _interval(cls, value: Any) -> Any:
        if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 64):
            return value
        raise ValueError(f"'auto' or a number of tokens from 1 to 64, not {value!r}")


class PrefixCacheConfig(BaseConfig):
    """The engine's automatic prefix cache (vLLM's): prompt KV kept and reused by later prompts
    that start with the same tokens, matched in blocks, evicted least recently used."""

    enabled: bool = Field(
        default=True,
        description="Reuse cached prompt prefixes where the model supports it (see `llmaas status`).",
    )
    block_size: int = Field(default=16, ge=1, le=1024, description="Tokens per cached block.")
    max_tokens: int | None = Field(
        default=None,
        ge=0,
        description="Prompt tokens whose KV the cache holds per replica, besides the running batch's"
        " KV budget (batching.kv_cache_bytes). Unset: a quarter of that budget, at most 512 MiB.",
    )
    routing: bool = Field(
        default=True,
        description="With several replicas, send requests that share a prompt prefix to the replica"
        " that served it, so its cache hits (llmaas.routing); off: Serve's default router, which"
        " spreads them. Generating models only; no effect while the cache is off.",
    )


class ResponseCacheConfig(BaseConfig):
    """The router's exact-response cache for one model (off unless enabled).

    Only requests whose answer is a function of their body are cached: greedy (temperature 0) or
    seeded, one choice. A request takes part when it sends ``"cache": true`` (or always, with
    ``default: true``); ``"cache": false`` always bypasses it. Each router replica holds its own.
    """

    enabled: bool = Field(default=False, description="Whether this model's answers may be cached.")
    default: bool = Field(
        default=False, description="Cache requests that do not say (true), or only opt-ins."
    )
    ttl_s: float = Field(default=600.0, gt=0, description="How long an answer stays.")
    max_entries: int = Field(default=1024, ge=1)
    max_bytes: int = Field(
        default=64 * 2**20, ge=1024, description="Bytes of answers held per router replica."
    )


class SamplingDefaults(BaseConfig):
    """Sampling parameters used where a request leaves them out."""

    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int = Field(default=0, ge=0, description="0 disables top-k.")
    max_tokens: int = Field(default=256, ge=1, description="Completion length when a request gives none.")


class AutoscalingConfig(BaseConfig):
    """Serve autoscaling bounds for one model."""

    min_replicas: int = Field(default=1, ge=0, description="0 lets an idle model release its devices.")
    max_replicas: int | None = Field(
        default=None,
        ge=1,
        description=(
            "Upper bound; left out: as many as the cluster in cluster.yaml can hold (1 without one)."
        ),
    )
    initial_replicas: int | None = Field(default=None, ge=0)
    target_ongoing_requests: float | None = Field(
        default=None,
        gt=0,
        description=(
            "Sequences (running + waiting in the scheduler) each replica should hold; the signal"
            " is the engine's, see llmaas.autoscaling. Default: 3/4 of batching.max_batch_size."
        ),
    )
    upscale_delay_s: float = Field(
        default=10.0, ge=0, description="A rise must last this long to add replicas."
    )
    downscale_delay_s: float = Field(
        default=300.0, ge=0, description="A fall must last this long to remove replicas (1 -> 0 too)."
    )
    metrics_interval_s: float = Field(default=10.0, gt=0, description="How often replicas report their load.")
    look_back_period_s: float = Field(default=30.0, gt=0, description="The window the load is averaged over.")

    @property
    def max_or_default(self) -> int:
        """``max_replicas``, or 1 where neither the catalog nor a cluster file has set it."""
        return self.max_replicas if self.max_replicas is not None else max(1, self.min_replicas)

    @model_validator(mode="after")
    def _bounds(self) -> AutoscalingConfig:
        if self.max_replicas is not None and self.min_replicas > self.max_replicas:
            raise ValueError(
                f"autoscaling.min_replicas ({self.min_replicas}) is above max_replicas "
                f"({self.max_replicas}): raise max_replicas or lower min_replicas"
            )
        if self.initial_replicas is not None and not (
            self.min_replicas <= self.initial_replicas <= self.max_or_default
        ):
            raise ValueError(
                f"autoscaling.initial_replicas ({self.initial_replicas}) must lie between "
                f"min_replicas ({self.min_replicas}) and max_replicas ({self.max_or_default})"
            )
        return self


class ReplicaConfig(BaseConfig):
    """How many replicas of a model run: a fixed number, or autoscaling bounds."""

    num_replicas: int | None = Field(default=None, ge=1, description="Fixed replica count.")
    autoscaling: AutoscalingConfig | None = Field(default=None)
    max_ongoing_requests: int | None = Field(
        default=None, ge=1, description="Requests one replica takes at once (default: 2 x max_batch_size)."
    )
    queue_timeout_s: float = Field(
        default=300.0,
        gt=0,
        description=(
            "How long a request waits for a replica to take it (a model scaled to zero starting one,"
            " or every replica full) before a 503 with Retry-After."
        ),
    )

    @model_validator(mode="after")
    def _one_mode(self) -> ReplicaConfig:
        if self.num_replicas is not None and self.autoscaling is not None:
            raise ValueError(
                "replicas: set either num_replicas (a fixed count) or autoscaling (bounds), not both"
            )
        return self


class WorkerResources(BaseConfig):
    """Resources of each worker (rank) of a replica; a TP=N replica has N workers."""

    num_cpus: float = Field(default=1.0, gt=0)
    num_gpus: float = Field(default=0.0, ge=0)
    memory_bytes: int | None = Field(default=None, ge=0)
    custom: dict[str, float] = Field(default_factory=dict, description="Extra Ray resources per worker.")
    torch_threads: int | None = Field(
        default=None, ge=1, description="Intra-op threads per worker (default: num_cpus, at least 1)."
    )
    parallel_min_tokens: int = Field(
        default=0,
        ge=0,
        description=(
            "Steps that feed fewer tokens than this (rows x new tokens) run on one intra-op thread, "
            "larger ones on torch_threads. On a CPU shared with the proxy and router, a small step's "
            "threads wait on each other more than they gain (a preempted thread stalls the rest); "
            "0 always uses torch_threads."
        ),
    )

    @field_validator("num_gpus")
    @classmethod
    def _whole_gpus(cls, value: float) -> float:
        if value > 1 and value != int(value):
            raise ValueError(f"num_gpus={value}: above 1 a worker takes whole GPUs (1, 2, ...)")
        return value

    @property
    def threads(self) -> int:
        return self.torch_threads or max(1, int(self.num_cpus))

    def threads_for(self, step_tokens: int) -> int:
        """Intra-op threads for a step that feeds ``step_tokens`` tokens."""
        return 1 if step_tokens < self.parallel_min_tokens else self.threads

    @property
    def uses_gpu(self) -> bool:
        return self.num_gpus > 0


ENGINE_PATH_PATTERN = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


class EngineSelection(BaseConfig):
    """Which ``llmaas.engine.Engine`` subclass serves a model, and its own arguments."""

    cls: str = Field(
        description=(
            "Import path 'module:Class' of an llmaas.engine.Engine subclass, "
            "e.g. llmaas.engine.fake:FakeEngine."
        )
    )
    args: dict[str, float | int | str | bool] = Field(
        default_factory=dict, description="Keyword arguments the engine class reads (its own settings)."
    )

    @field_validator("cls")
    @classmethod
    def _import_path(cls, value: str) -> str:
        if not ENGINE_PATH_PATTERN.fullmatch(value):
            raise ValueError(
                f"engine.cls {value!r} is not an import path: write 'package.module:ClassName', "
                "e.g. llmaas.engine.fake:FakeEngine"
            )
        return value


class ModelSpec(BaseConfig):
    """One catalog entry: one model, served by one Serve deployment."""

    id: str = Field(description="The name clients send as 'model'.")
    task: Task = Field(default=Task.GENERATE)
    source: ModelSource
    dtype: DType = Field(default="auto", description="auto: float32 on CPU, bfloat16 on GPU.")
    tensor_parallel_size: int = Field(default=1, ge=1, le=64)
    max_context_length: int | None = Field(
        default=None, ge=8, description="Prompt + completion tokens (default: the model's own limit)."
    )
    batching: BatchingConfig = Field(default_factory=BatchingConfig)
    sampling: SamplingDefaults = Field(default_factory=SamplingDefaults)
    response_cache: ResponseCacheConfig = Field(default_factory=ResponseCacheConfig)
    prefix_cache: PrefixCacheConfig = Field(default_factory=PrefixCacheConfig)
    replicas: ReplicaConfig = Field(default_factory=ReplicaConfig)
    resources: WorkerResources = Field(default_factory=WorkerResources)
    kernel_inject: bool = Field(
        default=False, description="DeepSpeed kernel injection (GPU and supported architectures only)."
    )
    quantization: Quantization = Field(
        default="none",
        description=(
            "Weight quantization after loading, with torchao (CPU, float32, tensor_parallel_size 1): "
            "'int8-weight-only' stores the linear layers' weights in int8 (SmolLM2-135M: about half "
            "the resident memory at float32's perplexity; prefill and batched decode near float32's "
            "speed, a lone stream slower). Measured in benchmarks/quant-cpu-2core."
        ),
    )
    description: str = Field(default="", description="Shown in /v1/models.")
    parent: str | None = Field(
        default=None, description="A fine-tuned model: the catalog model it was tuned from (/v1/models)."
    )
    owner: str | None = Field(
        default=None,
        description="A fine-tuned model: the API key id that made it. With the gateway on, other keys "
        "(except admin keys) get a 404 for it, as for a model that does not exist.",
    )
    engine: EngineSelection | None = Field(
        default=None,
        description=(
            "The inference backend; left out: DeepSpeed for generate, the embedding engine for embed,"
            " the classification engine for classify."
            " Tests and load tests name llmaas.engine.fake:FakeEngine (no weights run)."
        ),
    )
    pool: str | None = Field(
        default=None,
        description=(
            "Serve this model in a multiplexed pool of the catalog's `pools` (many small models on"
            " few replicas, loaded on demand, least recently used evicted); the pool sizes it."
        ),
    )
    adapter_of: str | None = Field(
        default=None,
        description=(
            "Serve this entry as a LoRA adapter (source.path: PEFT's adapter directory) on the"
            " replicas of that catalog model, in the same batches as its other requests; it has no"
            " deployment, resources or batching of its own. The base must run unsharded, without"
            " kernel injection or quantization (otherwise merge the adapter into a copy)."
        ),
    )
    max_adapters: int = Field(
        default=8,
        ge=1,
        le=256,
        description="LoRA adapters a replica of this model holds at once (least recently used let go).",
    )

    @field_validator("dtype", mode="before")
    @classmethod
    def _no_int8(cls, value: object) -> object:
        # NOTE: checked before the literal so that an int8 request gets the reason, not a list of choices.
        if isinstance(value, str) and "int8" in value.lower():
            raise ValueError(
                f"dtype {value!r} is not offered: DeepSpeed 0.19's init_inference(dtype=torch.int8) raises "
                "before converting any weight, so llmaas cannot serve int8 yet; use 'float32' or "
                "'bfloat16' (CPU), or 'float16' or 'bfloat16' (GPU)"
            )
        return value

    @field_validator("id")
    @classmethod
    def _id_shape(cls, value: str) -> str:
        if not MODEL_ID_PATTERN.fullmatch(value):
            raise ValueError(
                f"model id {value!r} is not allowed: use 1-128 letters, digits and . _ : / -, "
                "starting with a letter or digit"
            )
        return value

    @field_validator("task")
    @classmethod
    def _task_served(cls, value: Task) -> Task:
        if value not in SERVED_TASKS:
            raise ValueError(
                f"task {value.value!r} is reserved but not served yet: use "
                + " or ".join(repr(task.value) for task in SERVED_TASKS)
            )
        return value

    @field_validator("tensor_parallel_size")
    @classmethod
    def _power_of_two(cls, value: int) -> int:
        if value & (value - 1):
            raise ValueError(
                f"tensor_parallel_size={value}: use a power of two (1, 2, 4, 8) so that heads split evenly"
            )
        return value

    @model_validator(mode="after")
    def _cross_checks(self) -> ModelSpec:
        if self.task is not Task.GENERATE and self.tensor_parallel_size > 1:
            kind = "embedding" if self.task is Task.EMBED else "classification"
            raise ValueError(f"model {self.id!r}: {kind} models run unsharded; set tensor_parallel_size: 1")
        if self.dtype == "float16" and not self.resources.uses_gpu:
            raise ValueError(
                f"model {self.id!r}: dtype float16 needs a GPU (resources.num_gpus > 0); "
                "on CPU use float32 or bfloat16"
            )
        if self.kernel_inject and not self.resources.uses_gpu:
            raise ValueError(
                f"model {self.id!r}: kernel_inject needs a GPU (resources.num_gpus > 0); "
                "set it to false on CPU"
            )
        if self.resources.num_gpus > 0 and self.tensor_parallel_size > 1 and self.resources.num_gpus < 1:
            raise ValueError(
                f"model {self.id!r}: a tensor-parallel rank needs a whole GPU; set resources.num_gpus: 1"
            )
        if self.adapter_of is not None and (self.source.path is None or self.task is not Task.GENERATE):
            raise ValueError(
                f"model {self.id!r}: an adapter (adapter_of) is a generate model whose source.path is"
                " its PEFT adapter directory"
            )
        if self.adapter_of is not None and self.pool is not None:
            raise ValueError(f"model {self.id!r}: an adapter runs on its base's replicas, not in a pool")
        if self.pool is not None and self.tensor_parallel_size > 1:
            raise ValueError(
                f"model {self.id!r}: a pooled model runs unsharded; set tensor_parallel_size: 1 "
                "or take it out of the pool"
            )
        self._check_quantization()
        if self.sampling.max_tokens >= (self.max_context_length or 1 << 30):
            raise ValueError(
                f"model {self.id!r}: sampling.max_tokens ({self.sampling.max_tokens}) must be below "
                f"max_context_length ({self.max_context_length})"
            )
        return self

    def _check_quantization(self) -> None:
        if self.quantization == "none":
            return
        where = f"model {self.id!r}: quantization {self.quantization!r}"
        if self.task is not Task.GENERATE:
            raise ValueError(f"{where} applies to generate models only; set quantization: none")
        if self.resources.uses_gpu:
            # NOTE: measured on CPU only; on a GPU kernel injection replaces the linear layers
            # that torchao would quantize, and float16/bfloat16 already halve the weights.
            raise ValueError(
                f"{where} is offered on CPU only; on a GPU use dtype float16 or bfloat16 "
                "(and kernel_inject) and set quantization: none"
            )
        if self.tensor_parallel_size > 1:
            # NOTE: AutoTP replaces nn.Linear with its own sharded layers, which torchao does not
            # quantize; quantizing before sharding leaves int8 tensors AutoTP cannot slice.
            raise ValueError(
                f"{where} runs unsharded only: set tensor_parallel_size: 1 (a 135M-1B model "
                "quantized to int8 fits one worker) or quantization: none"
            )
        if self.torch_dtype_name != "float32":
            raise ValueError(
                f"{where} quantizes float32 weights: set dtype: float32 (or auto) or quantization: none"
            )

    @property
    def torch_dtype_name(self) -> str:
        if self.dtype != "auto":
            return self.dtype
        return "bfloat16" if self.resources.uses_gpu else "float32"

    @property
    def max_ongoing_requests(self) -> int:
        return self.replicas.max_ongoing_requests or 2 * self.batching.max_batch_size

    @property
    def scales_to_zero(self) -> bool:
        autoscaling = self.replicas.autoscaling
        return autoscaling is not None and autoscaling.min_replicas == 0

    @property
    def target_sequences(self) -> float:
        """Sequences per replica that autoscaling aims at (``autoscaling.target_ongoing_requests``)."""
        autoscaling = self.replicas.autoscaling
        if autoscaling is not None and autoscaling.target_ongoing_requests is not None:
            return autoscaling.target_ongoing_requests
        return max(1.0, 0.75 * self.batching.max_batch_size)


class ComponentConfig(BaseConfig):
    """Sizing of the router or tokenizer deployment."""

    num_replicas: int = Field(default=1, ge=1)
    num_cpus: float = Field(default=0.25, ge=0)
    max_ongoing_requests: int = Field(default=1024, ge=1)


class TokenizerConfig(ComponentConfig):
    """Sizing of the tokenizer deployment, and which inputs the router tokenizes itself."""

    inline_max_chars: int = Field(
        default=4096,
        ge=0,
        description=(
            "The router tokenizes inputs of up to this many characters in its own process (a hop to the "
            "tokenizer deployment costs more than encoding a short prompt); longer ones go to the "
            "tokenizer deployment, which scales on its own. 0 sends every input there."
        ),
    )


class PoolConfig(BaseConfig):
    """A multiplexed pool: one deployment whose replicas each hold a few of its models (LRU)."""

    max_models_per_replica: int = Field(default=2, ge=1, description="Models loaded at once per replica.")
    replicas: ReplicaConfig = Field(default_factory=ReplicaConfig)
    resources: WorkerResources = Field(default_factory=WorkerResources)


def unservable_adapters(base: ModelSpec) -> str:
    """Why LoRA adapters cannot run on ``base``'s replicas ("" where they can): PEFT's layers wrap
    plain, unsharded linear layers."""
    if base.tensor_parallel_size > 1:
        return "it is tensor-parallel"
    if base.kernel_inject:
        return "DeepSpeed kernel injection replaces its linear layers"
    if base.quantization != "none":
        return "its weights are quantized"
    return ""


class Catalog(BaseConfig):
    """The whole catalog file."""

    app_name: str = Field(default="llmaas", description="Serve application name (handles look it up).")
    models: list[ModelSpec] = Field(min_length=1, description="At least one model.")
    cache_dir: str = Field(
        default="~/.cache/llmaas/models", description="Where demo models are built on first use."
    )
    router: ComponentConfig = Field(default_factory=ComponentConfig)
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
    request_timeout_s: float = Field(
        default=600.0, gt=0, description="An accepted request that takes longer ends with a 504."
    )
    gateway: GatewayConfig | None = Field(
        default=None,
        description="API keys, per-key limits and the usage ledger; left out: no keys, no ledger.",
    )
    pools: dict[str, PoolConfig] = Field(
        default_factory=dict, description="Multiplexed pools, by name; a model joins one with `pool:`."
    )
    fine_tuning: FineTuningConfig | None = Field(
        default=None,
        description="Users' fine-tuning through /v1/files and /v1/fine_tuning/jobs; left out: off.",
    )

    @field_validator("app_name")
    @classmethod
    def _app_name(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", value):
            raise ValueError(f"app_name {value!r}: use 1-64 letters, digits, '_' or '-'")
        return value

    @model_validator(mode="after")
    def _unique_ids(self) -> Catalog:
        seen: set[str] = set()
        for spec in self.models:
            if spec.id in seen:
                raise ValueError(f"model id {spec.id!r} appears twice in models: ids must be unique")
            seen.add(spec.id)
        slugs: dict[str, str] = {}
        for spec in self.models:
            slug = deployment_name(spec.id)
            if slug in slugs:
                raise ValueError(
                    f"model ids {slugs[slug]!r} and {spec.id!r} map to the same deployment name {slug!r}: "
                    "rename one"
                )
            slugs[slug] = spec.id
        return self

    @model_validator(mode="after")
    def _pools(self) -> Catalog:
        for name in self.pools:
            if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", name):
                raise ValueError(f"pool name {name!r}: use 1-64 letters, digits, '_' or '-'")
        for spec in self.models:
            if spec.pool is not None and spec.pool not in self.pools:
                known = ", ".join(self.pools) or "none"
                raise ValueError(
                    f"model {spec.id!r}: pool {spec.pool!r} is not in the catalog's pools ({known}); "
                    "add it under pools:"
                )
        return self

    @model_validator(mode="after")
    def _adapters(self) -> Catalog:
        for spec in self.models:
            if spec.adapter_of is None:
                continue
            base = self.get(spec.adapter_of)
            where = f"model {spec.id!r}: adapter_of {spec.adapter_of!r}"
            if base is None:
                raise ValueError(f"{where} is not a model of the catalog")
            if base.adapter_of is not None or base.task is not Task.GENERATE or base.pool is not None:
                raise ValueError(f"{where} must be a generate model with a deployment of its own")
            why = unservable_adapters(base)
            if why:
                raise ValueError(f"{where} cannot run adapters: {why}")
        return self

    def base_of(self, spec: ModelSpec) -> ModelSpec:
        """The model whose replicas serve ``spec``: its base for an adapter, else itself."""
        return (self.get(spec.adapter_of) or spec) if spec.adapter_of is not None else spec

    def adapters_of(self, spec: ModelSpec) -> list[ModelSpec]:
        return [m for m in self.models if m.adapter_of == spec.id]

    def pool_members(self, name: str) -> list[ModelSpec]:
        return [spec for spec in self.models if spec.pool == name]

    def deployment_of(self, spec: ModelSpec) -> str:
        """The Serve deployment that serves ``spec``: its own, its pool's, or its base's (an adapter)."""
        spec = self.base_of(spec)
        return pool_deployment_name(spec.pool) if spec.pool else deployment_name(spec.id)

    def get(self, model_id: str) -> ModelSpec | None:
        return next((m for m in self.models if m.id == model_id), None)

    @property
    def cache_path(self) -> Path:
        return Path(self.cache_dir).expanduser()
