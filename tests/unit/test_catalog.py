"""The catalog schema: every validation rule has a failing input here, and the error names it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, ValidationError

from llmaas.catalogs import default_catalog, default_catalog_path
from llmaas.config.base import BaseConfig
from llmaas.config.catalog import (
    AutoscalingConfig,
    BatchingConfig,
    Catalog,
    ComponentConfig,
    ModelSource,
    ModelSpec,
    ReplicaConfig,
    SamplingDefaults,
    Task,
    TokenizerConfig,
    WorkerResources,
)
from llmaas.naming import deployment_name

DEMO = {"demo": "tiny-gpt2"}


def spec(**overrides: Any) -> dict[str, Any]:
    """A valid ModelSpec mapping, with ``overrides`` applied."""
    data: dict[str, Any] = {"id": "m", "source": dict(DEMO)}
    data.update(overrides)
    return data


def catalog(*models: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"models": list(models) or [spec()]}
    data.update(overrides)
    return data


def invalid(model: type[BaseModel], data: dict[str, Any], *needles: str) -> str:
    """Validate ``data`` as ``model``, expect a ValidationError, and check its text names each needle."""
    with pytest.raises(ValidationError) as exc_info:
        model.model_validate(data)
    text = str(exc_info.value)
    for needle in needles:
        assert needle in text, f"{needle!r} not in error:\n{text}"
    return text


# ---- positive cases ---------------------------------------------------------------------


def test_default_catalog_loads():
    cat = default_catalog()
    assert cat.app_name == "llmaas"
    assert [m.id for m in cat.models] == ["smollm2-135m-instruct", "all-minilm-l6-v2"]
    chat = cat.get("smollm2-135m-instruct")
    embed = cat.get("all-minilm-l6-v2")
    assert chat is not None and embed is not None
    assert chat.task is Task.GENERATE
    assert embed.task is Task.EMBED
    assert chat.sampling.temperature == 0.0
    assert chat.sampling.max_tokens == 256
    assert embed.source.describe() == "demo:all-minilm-l6-v2"
    # CPU-only: nothing asks for a GPU
    assert all(not m.resources.uses_gpu for m in cat.models)
    assert cat.get("no-such-model") is None


def test_default_catalog_path_is_a_file():
    assert default_catalog_path().is_file()


def test_deployment_name_flattens_separators():
    assert deployment_name("org/model:v1") == "model-org_model_v1"
    assert deployment_name("plain-name_1") == "model-plain-name_1"
    assert deployment_name("a.b") == "model-a_b"


def test_minimal_spec_defaults():
    m = ModelSpec.model_validate(spec())
    assert m.task is Task.GENERATE
    assert m.dtype == "auto"
    assert m.tensor_parallel_size == 1
    assert m.max_context_length is None
    assert m.kernel_inject is False
    assert m.batching == BatchingConfig()
    assert m.sampling == SamplingDefaults()
    assert m.replicas == ReplicaConfig()
    assert m.resources == WorkerResources()


def test_torch_dtype_auto_is_float32_on_cpu():
    assert ModelSpec.model_validate(spec()).torch_dtype_name == "float32"


def test_torch_dtype_auto_is_bfloat16_on_gpu():
    m = ModelSpec.model_validate(spec(resources={"num_gpus": 1}))
    assert m.torch_dtype_name == "bfloat16"


def test_torch_dtype_explicit_is_kept():
    assert ModelSpec.model_validate(spec(dtype="bfloat16")).torch_dtype_name == "bfloat16"
    m = ModelSpec.model_validate(spec(dtype="float16", resources={"num_gpus": 1}))
    assert m.torch_dtype_name == "float16"


def test_max_ongoing_requests_defaults_to_twice_the_batch():
    assert ModelSpec.model_validate(spec()).max_ongoing_requests == 2 * 16
    m = ModelSpec.model_validate(spec(batching={"max_batch_size": 5}))
    assert m.max_ongoing_requests == 10


def test_max_ongoing_requests_explicit_wins():
    m = ModelSpec.model_validate(spec(batching={"max_batch_size": 5}, replicas={"max_ongoing_requests": 3}))
    assert m.max_ongoing_requests == 3


def test_worker_threads():
    assert WorkerResources().threads == 1
    assert WorkerResources(num_cpus=0.5).threads == 1
    assert WorkerResources(num_cpus=4).threads == 4
    assert WorkerResources(num_cpus=4, torch_threads=2).threads == 2


def test_small_steps_run_on_one_thread():
    adaptive = WorkerResources(num_cpus=2, parallel_min_tokens=8)
    assert [adaptive.threads_for(n) for n in (1, 7, 8, 64)] == [1, 1, 2, 2]
    assert WorkerResources(num_cpus=2).threads_for(1) == 2  # 0: always torch_threads
    invalid(WorkerResources, {"parallel_min_tokens": -1}, "parallel_min_tokens", "greater than or equal to 0")


def test_whole_gpus_above_one_are_fine():
    assert WorkerResources(num_gpus=2).num_gpus == 2
    assert WorkerResources(num_gpus=0.25).uses_gpu


def test_source_path_and_describe():
    assert ModelSource(path="/models/x").describe() == "path:/models/x"
    assert ModelSource(demo="tiny-llama-chat").describe() == "demo:tiny-llama-chat"


def test_tensor_parallel_powers_of_two():
    for tp in (1, 2, 4, 8, 64):
        assert ModelSpec.model_validate(spec(tensor_parallel_size=tp)).tensor_parallel_size == tp


def test_autoscaling_valid_bounds():
    a = AutoscalingConfig(min_replicas=0, max_replicas=4, initial_replicas=2)
    assert a.initial_replicas == 2
    r = ReplicaConfig(autoscaling=a)
    assert r.num_replicas is None


def test_sampling_max_tokens_below_context_is_fine():
    m = ModelSpec.model_validate(spec(max_context_length=128, sampling={"max_tokens": 127}))
    assert m.max_context_length == 128


def test_model_id_accepts_allowed_characters():
    for model_id in ("org/model:v1", "a", "A.b_c-d", "9" * 128):
        assert ModelSpec.model_validate(spec(id=model_id)).id == model_id


def test_catalog_from_file(tmp_path: Path):
    path = tmp_path / "catalog.yaml"
    path.write_text(
        "app_name: my-app\n"
        "models:\n"
        "  - id: org/chat:v1\n"
        "    source: {path: /models/chat}\n"
        "    resources: {num_gpus: 1}\n"
        "    replicas: {autoscaling: {min_replicas: 1, max_replicas: 3}}\n"
        "  - id: emb\n"
        "    task: embed\n"
        "    source: {demo: all-minilm-l6-v2}\n"
        "cache_dir: ~/somewhere\n",
        encoding="utf-8",
    )
    cat = Catalog.from_file(path)
    assert cat.app_name == "my-app"
    assert [m.id for m in cat.models] == ["org/chat:v1", "emb"]
    chat = cat.get("org/chat:v1")
    assert chat is not None
    assert chat.torch_dtype_name == "bfloat16"
    assert chat.replicas.autoscaling is not None
    assert chat.replicas.autoscaling.max_replicas == 3
    assert cat.cache_path == Path("~/somewhere").expanduser()
    assert "~" not in str(cat.cache_path)


def test_catalog_from_yaml():
    cat = Catalog.from_yaml("models:\n  - id: x\n    source: {demo: tiny-gpt2}\n")
    assert cat.app_name == "llmaas"
    assert cat.models[0].source.demo == "tiny-gpt2"
    assert cat.router == ComponentConfig()
    assert cat.request_timeout_s == 600.0


def test_from_yaml_empty_document_is_an_empty_mapping():
    assert BatchingConfig.from_yaml("") == BatchingConfig()
    # ... which, for a catalog, is missing its models
    with pytest.raises(ValidationError) as exc_info:
        Catalog.from_yaml("")
    assert "models" in str(exc_info.value)
    assert "Field required" in str(exc_info.value)


# ---- base: YAML top level --------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "kind"),
    [("- a\n- b\n", "list"), ("just a string\n", "str"), ("42\n", "int")],
)
def test_from_yaml_rejects_non_mapping(text: str, kind: str):
    with pytest.raises(ValueError, match=f"expected a YAML mapping at the top level, got {kind}"):
        Catalog.from_yaml(text)


def test_from_file_rejects_non_mapping(tmp_path: Path):
    path = tmp_path / "bad.yaml"
    path.write_text("- models\n", encoding="utf-8")
    with pytest.raises(ValueError, match="got list"):
        Catalog.from_file(path)


def test_from_yaml_uses_the_safe_loader():
    with pytest.raises(yaml.constructor.ConstructorError, match="python/object"):
        Catalog.from_yaml("!!python/object/apply:os.getcwd []\n")


def test_from_yaml_validation_error_names_the_field():
    text = "models:\n  - id: x\n    source: {demo: tiny-gpt2}\n    tensor_paralel_size: 2\n"
    with pytest.raises(ValidationError) as exc_info:
        Catalog.from_yaml(text)
    assert "models.0.tensor_paralel_size" in str(exc_info.value)
    assert "Extra inputs are not permitted" in str(exc_info.value)


# ---- extra="forbid" --------------------------------------------------------------------


def test_every_config_forbids_unknown_keys():
    for cls in (
        ModelSource,
        BatchingConfig,
        SamplingDefaults,
        AutoscalingConfig,
        ReplicaConfig,
        WorkerResources,
        ModelSpec,
        ComponentConfig,
        TokenizerConfig,
        Catalog,
    ):
        assert issubclass(cls, BaseConfig)
        assert cls.model_config.get("extra") == "forbid", cls


def test_unknown_top_level_key():
    invalid(Catalog, catalog(modles=[]), "modles", "Extra inputs are not permitted")


def test_unknown_model_key_typo():
    invalid(
        Catalog,
        catalog(spec(tensor_paralel_size=2)),
        "models.0.tensor_paralel_size",
        "Extra inputs are not permitted",
    )


@pytest.mark.parametrize(
    ("overrides", "where"),
    [
        ({"source": {"demo": "tiny-gpt2", "revision": "main"}}, "source.revision"),
        ({"batching": {"max_batch": 4}}, "batching.max_batch"),
        ({"sampling": {"temprature": 0.5}}, "sampling.temprature"),
        ({"replicas": {"replicas": 2}}, "replicas.replicas"),
        ({"replicas": {"autoscaling": {"max": 2}}}, "replicas.autoscaling.max"),
        ({"resources": {"gpus": 1}}, "resources.gpus"),
    ],
)
def test_unknown_nested_keys(overrides: dict[str, Any], where: str):
    invalid(ModelSpec, spec(**overrides), where, "Extra inputs are not permitted")


@pytest.mark.parametrize("component", ["router", "tokenizer"])
def test_unknown_component_key(component: str):
    invalid(Catalog, catalog(**{component: {"replica": 2}}), f"{component}.replica", "Extra inputs")


# ---- ModelSource -----------------------------------------------------------------------


def test_source_needs_one_of_path_or_demo_not_none():
    invalid(ModelSource, {}, "exactly one of 'path'", "'demo'")


def test_source_needs_one_of_path_or_demo_not_both():
    invalid(ModelSource, {"path": "/x", "demo": "tiny-gpt2"}, "exactly one of 'path'", "'demo'")


def test_source_rule_reached_through_model_spec():
    invalid(ModelSpec, spec(source={}), "source", "exactly one of 'path'")


@pytest.mark.parametrize("path", ["", "   ", "\t\n"])
def test_source_blank_path(path: str):
    invalid(ModelSource, {"path": path}, "path", "source.path is empty")


def test_source_unknown_demo():
    invalid(ModelSource, {"demo": "gpt-5"}, "demo", "gpt-5", "tiny-llama-chat")


def test_source_path_wrong_type():
    invalid(ModelSource, {"path": 5}, "path", "valid string")


# ---- ModelSpec -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "model_id",
    ["", "-leading-dash", "/leading-slash", "has space", "tab\there", "emoji-\u2603", "9" * 129, "a?b"],
)
def test_model_id_pattern(model_id: str):
    invalid(ModelSpec, spec(id=model_id), "id", "is not allowed")


def test_model_id_pattern_names_the_id():
    invalid(ModelSpec, spec(id="has space"), "model id 'has space' is not allowed")


def test_model_id_rejects_trailing_newline():
    invalid(ModelSpec, spec(id="abc\n"), "id", "is not allowed")


def test_model_id_missing():
    invalid(ModelSpec, {"source": DEMO}, "id", "Field required")


def test_source_missing():
    invalid(ModelSpec, {"id": "m"}, "source", "Field required")


def test_task_classify_is_served():
    model = ModelSpec.model_validate(spec(task="classify", source={"path": "/models/clf"}))
    assert model.task is Task.CLASSIFY


def test_classify_model_with_tensor_parallel():
    invalid(
        ModelSpec,
        spec(id="clf", task="classify", tensor_parallel_size=2, resources={"num_gpus": 1}),
        "model 'clf'",
        "classification models run unsharded",
        "tensor_parallel_size: 1",
    )


def test_task_unknown():
    invalid(ModelSpec, spec(task="summarize"), "task", "summarize", "'generate', 'embed' or 'classify'")


def test_dtype_unknown():
    invalid(ModelSpec, spec(dtype="int8"), "dtype", "int8", "'float32'")


@pytest.mark.parametrize(
    ("tp", "needle"),
    [
        (0, "greater than or equal to 1"),
        (-2, "greater than or equal to 1"),
        (3, "tensor_parallel_size=3: use a power of two"),
        (6, "tensor_parallel_size=6: use a power of two"),
        (12, "tensor_parallel_size=12: use a power of two"),
        (128, "less than or equal to 64"),
    ],
)
def test_tensor_parallel_size(tp: int, needle: str):
    invalid(ModelSpec, spec(tensor_parallel_size=tp), "tensor_parallel_size", needle)


def test_max_context_length_lower_bound():
    invalid(ModelSpec, spec(max_context_length=4), "max_context_length", "greater than or equal to 8")


def test_kernel_inject_strict_type():
    invalid(ModelSpec, spec(kernel_inject="maybe"), "kernel_inject", "valid boolean")


def test_embed_model_with_tensor_parallel():
    invalid(
        ModelSpec,
        spec(id="emb", task="embed", tensor_parallel_size=2, resources={"num_gpus": 1}),
        "model 'emb'",
        "embedding models run unsharded",
        "tensor_parallel_size: 1",
    )


def test_float16_without_gpu():
    invalid(ModelSpec, spec(id="f16", dtype="float16"), "model 'f16'", "dtype float16 needs a GPU")


def test_kernel_inject_without_gpu():
    invalid(ModelSpec, spec(id="ki", kernel_inject=True), "model 'ki'", "kernel_inject needs a GPU")


def test_kernel_inject_with_gpu_is_fine():
    assert ModelSpec.model_validate(spec(kernel_inject=True, resources={"num_gpus": 1})).kernel_inject


def test_tensor_parallel_rank_needs_whole_gpu():
    invalid(
        ModelSpec,
        spec(id="tp", tensor_parallel_size=2, resources={"num_gpus": 0.5}),
        "model 'tp'",
        "tensor-parallel rank needs a whole GPU",
        "resources.num_gpus: 1",
    )


@pytest.mark.parametrize("max_tokens", [128, 129, 4096])
def test_sampling_max_tokens_must_be_below_context(max_tokens: int):
    invalid(
        ModelSpec,
        spec(id="ctx", max_context_length=128, sampling={"max_tokens": max_tokens}),
        "model 'ctx'",
        f"sampling.max_tokens ({max_tokens}) must be below max_context_length (128)",
    )


def test_default_sampling_max_tokens_checked_against_context():
    # the default max_tokens (256) is checked too, not only an explicit one
    invalid(ModelSpec, spec(max_context_length=64), "sampling.max_tokens (256)", "max_context_length (64)")


# ---- AutoscalingConfig / ReplicaConfig ----------------------------------------------------


def test_autoscaling_min_above_max():
    invalid(
        AutoscalingConfig,
        {"min_replicas": 3, "max_replicas": 2},
        "autoscaling.min_replicas (3) is above max_replicas (2)",
    )


@pytest.mark.parametrize("initial", [0, 5])
def test_autoscaling_initial_out_of_bounds(initial: int):
    invalid(
        AutoscalingConfig,
        {"min_replicas": 1, "max_replicas": 4, "initial_replicas": initial},
        f"autoscaling.initial_replicas ({initial}) must lie between",
        "min_replicas (1)",
        "max_replicas (4)",
    )


@pytest.mark.parametrize(
    ("data", "field", "needle"),
    [
        ({"min_replicas": -1}, "min_replicas", "greater than or equal to 0"),
        ({"max_replicas": 0, "min_replicas": 0}, "max_replicas", "greater than or equal to 1"),
        ({"initial_replicas": -1}, "initial_replicas", "greater than or equal to 0"),
        ({"target_ongoing_requests": 0}, "target_ongoing_requests", "greater than 0"),
        ({"upscale_delay_s": -1}, "upscale_delay_s", "greater than or equal to 0"),
        ({"downscale_delay_s": -0.5}, "downscale_delay_s", "greater than or equal to 0"),
    ],
)
def test_autoscaling_field_bounds(data: dict[str, Any], field: str, needle: str):
    invalid(AutoscalingConfig, data, field, needle)


def test_autoscaling_rule_reached_through_catalog():
    invalid(
        Catalog,
        catalog(spec(replicas={"autoscaling": {"min_replicas": 5, "max_replicas": 1}})),
        "models.0.replicas.autoscaling",
        "min_replicas (5) is above max_replicas (1)",
    )


def test_replicas_fixed_and_autoscaling_together():
    invalid(
        ReplicaConfig,
        {"num_replicas": 2, "autoscaling": {"max_replicas": 3}},
        "num_replicas",
        "autoscaling",
        "not both",
    )


@pytest.mark.parametrize(
    ("data", "field"),
    [({"num_replicas": 0}, "num_replicas"), ({"max_ongoing_requests": 0}, "max_ongoing_requests")],
)
def test_replica_field_bounds(data: dict[str, Any], field: str):
    invalid(ReplicaConfig, data, field, "greater than or equal to 1")


# ---- WorkerResources ---------------------------------------------------------------------


@pytest.mark.parametrize("num_gpus", [1.5, 2.25])
def test_fractional_gpus_above_one(num_gpus: float):
    invalid(WorkerResources, {"num_gpus": num_gpus}, "num_gpus", f"num_gpus={num_gpus}", "whole GPUs")


@pytest.mark.parametrize("num_cpus", [0, -1])
def test_num_cpus_must_be_positive(num_cpus: float):
    invalid(WorkerResources, {"num_cpus": num_cpus}, "num_cpus", "greater than 0")


@pytest.mark.parametrize(
    ("data", "field", "needle"),
    [
        ({"num_gpus": -1}, "num_gpus", "greater than or equal to 0"),
        ({"memory_bytes": -1}, "memory_bytes", "greater than or equal to 0"),
        ({"torch_threads": 0}, "torch_threads", "greater than or equal to 1"),
        ({"custom": {"accel": "lots"}}, "custom.accel", "valid number"),
    ],
)
def test_resource_field_bounds(data: dict[str, Any], field: str, needle: str):
    invalid(WorkerResources, data, field, needle)


# ---- BatchingConfig / SamplingDefaults ----------------------------------------------------


@pytest.mark.parametrize(
    ("data", "field", "needle"),
    [
        ({"max_batch_size": 0}, "max_batch_size", "greater than or equal to 1"),
        ({"max_batch_size": 1025}, "max_batch_size", "less than or equal to 1024"),
        ({"max_batch_tokens": 15}, "max_batch_tokens", "greater than or equal to 16"),
        ({"batch_wait_ms": -1}, "batch_wait_ms", "greater than or equal to 0"),
        ({"batch_wait_ms": 1000.5}, "batch_wait_ms", "less than or equal to 1000"),
        ({"max_queued_requests": -1}, "max_queued_requests", "greater than or equal to 0"),
    ],
)
def test_batching_bounds(data: dict[str, Any], field: str, needle: str):
    text = invalid(BatchingConfig, data, field, needle)
    assert f"input_value={next(iter(data.values()))}" in text


@pytest.mark.parametrize(
    ("data", "field", "needle"),
    [
        ({"temperature": 2.5}, "temperature", "less than or equal to 2"),
        ({"temperature": -0.1}, "temperature", "greater than or equal to 0"),
        ({"top_p": 0}, "top_p", "greater than 0"),
        ({"top_p": 1.5}, "top_p", "less than or equal to 1"),
        ({"top_k": -1}, "top_k", "greater than or equal to 0"),
        ({"max_tokens": 0}, "max_tokens", "greater than or equal to 1"),
    ],
)
def test_sampling_bounds(data: dict[str, Any], field: str, needle: str):
    text = invalid(SamplingDefaults, data, field, needle)
    assert f"input_value={next(iter(data.values()))}" in text


def test_batching_rule_reached_through_model_spec():
    invalid(ModelSpec, spec(batching={"max_batch_size": 0}), "batching.max_batch_size")


# ---- Catalog -----------------------------------------------------------------------------


def test_catalog_needs_models():
    invalid(Catalog, {}, "models", "Field required")


def test_catalog_empty_models_list():
    invalid(Catalog, {"models": []}, "models", "at least 1 item")


def test_catalog_duplicate_ids():
    invalid(Catalog, catalog(spec(id="dup"), spec(id="dup")), "model id 'dup' appears twice")


def test_catalog_ids_colliding_on_deployment_name():
    invalid(
        Catalog,
        catalog(spec(id="a/b"), spec(id="a_b")),
        "'a/b' and 'a_b' map to the same deployment name 'model-a_b'",
    )


@pytest.mark.parametrize("app_name", ["", "has space", "dot.ted", "slash/ed", "x" * 65])
def test_catalog_bad_app_name(app_name: str):
    invalid(Catalog, catalog(app_name=app_name), "app_name", f"app_name {app_name!r}")


def test_catalog_app_name_rejects_trailing_newline():
    invalid(Catalog, catalog(app_name="llmaas\n"), "app_name")


def test_catalog_request_timeout_must_be_positive():
    invalid(Catalog, catalog(request_timeout_s=0), "request_timeout_s", "greater than 0")


@pytest.mark.parametrize(
    ("data", "field", "needle"),
    [
        ({"num_replicas": 0}, "num_replicas", "greater than or equal to 1"),
        ({"num_cpus": -0.25}, "num_cpus", "greater than or equal to 0"),
        ({"max_ongoing_requests": 0}, "max_ongoing_requests", "greater than or equal to 1"),
    ],
)
def test_component_bounds(data: dict[str, Any], field: str, needle: str):
    invalid(ComponentConfig, data, field, needle)
    invalid(Catalog, catalog(router=data), f"router.{field}", needle)


def test_tokenizer_inline_limit():
    assert Catalog.model_validate(catalog()).tokenizer.inline_max_chars == 4096
    assert Catalog.model_validate(catalog(tokenizer={"inline_max_chars": 0})).tokenizer.inline_max_chars == 0
    invalid(
        Catalog,
        catalog(tokenizer={"inline_max_chars": -1}),
        "tokenizer.inline_max_chars",
        "greater than or equal to 0",
    )
    invalid(Catalog, catalog(router={"inline_max_chars": 10}), "router.inline_max_chars", "Extra inputs")


def test_catalog_error_names_the_model_index():
    invalid(Catalog, catalog(spec(id="ok"), spec(id="bad", task="summarize")), "models.1.task", "summarize")
