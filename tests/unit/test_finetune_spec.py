"""TrainingSpec's rules (each with the fix in its message) and the file checks before a run starts."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from llmaas.finetune import (
    Hyperparameters,
    LoraSettings,
    TrainingCancelled,
    TrainingEvent,
    TrainingFailed,
    TrainingSpec,
    check_files,
)

CHAT: dict[str, Any] = {
    "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
}


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "base"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    return folder


def _jsonl(path: Path, lines: list[Any]) -> Path:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def _spec(tmp_path: Path, model_dir: Path, **fields: Any) -> TrainingSpec:
    values: dict[str, Any] = {
        "job_id": "ftjob-1",
        "base_model": model_dir,
        "kind": "causal_lm",
        "training_file": _jsonl(tmp_path / "train.jsonl", [CHAT]),
        **fields,
    }
    return TrainingSpec(**values)


def test_defaults(tmp_path, model_dir):
    spec = _spec(tmp_path, model_dir)
    assert spec.hyperparameters == Hyperparameters()
    assert spec.hyperparameters.lora.target_modules is None  # peft's default for the architecture
    assert Path(spec.storage_path).is_absolute()
    assert spec.storage_path.endswith("ray_results/llmaas-fine-tuning")
    assert (spec.num_workers, spec.max_failures, spec.save_steps) == (1, 2, None)


def test_uris_and_relative_paths_as_storage(tmp_path, model_dir, monkeypatch):
    assert _spec(tmp_path, model_dir, storage_path="s3://bucket/ft").storage_path == "s3://bucket/ft"
    monkeypatch.chdir(tmp_path)
    assert _spec(tmp_path, model_dir, storage_path="runs").storage_path == str(tmp_path / "runs")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"job_id": "../x"}, "job_id '../x' must be"),
        ({"job_id": ""}, "job_id '' must be"),
        ({"kind": "embedding"}, "'causal_lm' or 'classification'"),
        ({"validation_file": Path("/nonexistent.jsonl")}, "'/nonexistent.jsonl' is not a file"),
        ({"hyperparameters": {"method": "full"}}, "method 'full' is for classification"),
        ({"hyperparameters": {"lora": {"target_modules": []}}}, "target_modules is empty"),
        ({"hyperparameters": {"n_epochs": 0}}, "n_epochs"),
        ({"hyperparameters": {"learning_rate": 0}}, "learning_rate"),
        ({"hyperparameters": {"lora": {"r": 0}}}, "r"),
        ({"hyperparameters": {"epochs": 3}}, "Extra inputs are not permitted"),
        ({"num_workers": 0}, "num_workers"),
        ({"cpus_per_worker": 0}, "cpus_per_worker"),
        ({"max_failures": -2}, "max_failures"),
        ({"save_steps": 0}, "save_steps"),
    ],
)
def test_bad_specs_are_refused(tmp_path, model_dir, fields, message):
    with pytest.raises(ValidationError, match=message.replace("(", r"\(").replace(".", r"\.")):
        _spec(tmp_path, model_dir, **fields)


def test_base_model_must_be_a_model_directory(tmp_path, model_dir):
    with pytest.raises(ValidationError, match="is not a Hugging Face model directory"):
        _spec(tmp_path, model_dir, base_model=tmp_path)


def test_training_file_must_exist(tmp_path, model_dir):
    with pytest.raises(ValidationError, match="is not a file"):
        TrainingSpec(
            job_id="j", base_model=model_dir, kind="causal_lm", training_file=tmp_path / "none.jsonl"
        )


def test_full_fine_tuning_of_a_classifier(tmp_path, model_dir):
    spec = _spec(tmp_path, model_dir, kind="classification", hyperparameters={"method": "full"})
    assert spec.hyperparameters.method == "full"
    assert spec.file_kinds == ("classification",)


def test_spec_round_trips_through_json(tmp_path, model_dir):
    spec = _spec(
        tmp_path, model_dir, hyperparameters=Hyperparameters(lora=LoraSettings(target_modules=["q_proj"]))
    )
    assert TrainingSpec.model_validate(spec.model_dump(mode="json")) == spec


def test_check_files_accepts_matching_files(tmp_path, model_dir):
    valid = _jsonl(tmp_path / "valid.jsonl", [CHAT])
    check_files(_spec(tmp_path, model_dir, validation_file=valid))


@pytest.mark.parametrize(
    ("kind", "train", "valid", "message"),
    [
        (
            "classification",
            [CHAT],
            None,
            "holds chat examples; a classification job trains on classification",
        ),
        ("causal_lm", [{"text": "a", "label": 1}, {"text": "b", "label": 2}], None, "or completion examples"),
        (
            "causal_lm",
            [CHAT],
            [{"prompt": "a", "completion": "b"}],
            "validation_file holds completion examples",
        ),
        ("causal_lm", [{"messages": []}], None, "training_file train.jsonl: line 1: 'messages' must be"),
        (
            "classification",
            [{"text": "a", "label": "x"}, {"text": "b", "label": "y"}],
            [{"text": "a", "label": "x"}, {"text": "b", "label": "z"}],
            "labels the training file lacks: ['z']",
        ),
    ],
)
def test_check_files_refuses_what_cannot_train(tmp_path, model_dir, kind, train, valid, message):
    spec = TrainingSpec(
        job_id="j",
        base_model=model_dir,
        kind=kind,
        training_file=_jsonl(tmp_path / "train.jsonl", train),
        validation_file=_jsonl(tmp_path / "valid.jsonl", valid) if valid else None,
    )
    with pytest.raises(TrainingFailed) as info:
        check_files(spec)
    assert message in str(info.value)


def test_errors_pickle_and_events_show_their_data():
    for error in (TrainingFailed("why"), TrainingCancelled("cancelled")):
        copy = pickle.loads(pickle.dumps(error))
        assert (type(copy), copy.message) == (type(error), error.message)
    event = TrainingEvent(type="metrics", message="Step 1/2", step=1, total_steps=2, train_loss=0.5)
    assert event.data() == {"step": 1, "total_steps": 2, "train_loss": 0.5}
