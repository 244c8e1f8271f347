"""Run identity without training: the fingerprint, RUN.json and the refusals (finetune_trainer.identity)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from finetune_api.trainer_config import TrainerConfig
from finetune_trainer import checkpoints as ckpt
from finetune_trainer import identity
from finetune_trainer.build import ConfigError


def config(**training: Any) -> TrainerConfig:
    return TrainerConfig.model_validate(
        {
            "model": {"name_or_path": "/models/tiny"},
            "dataset": {"path": "/data/train.jsonl"},
            "training": {"max_steps": 40, **training},
        }
    )


def sections(**training: Any) -> dict[str, Any]:
    return identity.spec_sections(config(**training))


def test_fingerprint_is_the_spec_not_its_spelling_and_survives_the_oom_adaptation() -> None:
    base = identity.fingerprint(sections())
    assert base.startswith("sha256:") and len(base) == len("sha256:") + 64
    # a default written out is the same spec (the apiserver stores it so too)
    assert identity.fingerprint(sections(learning_rate=5e-4, seed=42)) == base
    # half the batch, double the accumulation (the operator's CUDA-OOM adaptation): the same run; another
    # effective batch is another run
    assert identity.fingerprint(sections(per_device_train_batch_size=4)) != base
    halved = identity.fingerprint(sections(per_device_train_batch_size=1, gradient_accumulation_steps=2))
    assert halved == base
    # anything that changes the result changes it
    assert identity.fingerprint(sections(learning_rate=1e-3)) != base
    assert identity.fingerprint(sections(max_steps=41)) != base
    other_data = config().model_copy(
        update={"dataset": config().dataset.model_copy(update={"path": "/x.jsonl"})}
    )
    assert identity.fingerprint(identity.spec_sections(other_data)) != base


def test_differences_name_each_field() -> None:
    assert identity.differences(sections(), sections(learning_rate=1e-3, max_steps=80)) == [
        "training.learning_rate: 0.0005 → 0.001",
        "training.max_steps: 40 → 80",
    ]
    lora = identity.spec_sections(
        config().model_copy(update={"lora": config().lora.model_copy(update={"r": 4})})
    )
    assert identity.differences(sections(), lora, only=identity.SHAPE_FIELDS) == ["lora.r: 8 → 4"]
    assert identity.differences(sections(), sections(learning_rate=1e-3), only=identity.SHAPE_FIELDS) == []


def claim(run_dir: Path, run_id: str, spec: dict[str, Any]) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    identity.write_identity(
        run_dir,
        identity.RunIdentity(
            run_id,
            identity.fingerprint(spec),
            spec,
            {"namespace": "ml", "name": "demo"},
            "2026-01-01T00:00:00Z",
        ),
    )


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_another_run_id_is_refused_naming_the_run_and_the_fields(tmp_path: Path) -> None:
    run_dir = tmp_path / "runs" / "uid-old"
    claim(run_dir, "uid-old", sections())
    before = snapshot(tmp_path)
    with pytest.raises(ConfigError) as error:
        identity.check_run_directory(run_dir, "uid-new", sections(learning_rate=1e-3))
    text = str(error.value)
    assert f"--output-dir {run_dir} belongs to another run: run uid-old (job ml/demo" in text
    assert "training.learning_rate: 0.0005 → 0.001" in text and "nothing was changed" in text
    assert "\n" not in text
    assert snapshot(tmp_path) == before
    # the same run (the next attempt, also after an OOM adaptation) is welcome
    found = identity.check_run_directory(run_dir, "uid-old", sections())
    assert found is not None and found.run_id == "uid-old"


def test_a_different_spec_in_the_same_directory_is_refused(tmp_path: Path) -> None:
    claim(tmp_path, "uid-1", sections())
    with pytest.raises(ConfigError, match=r"different training spec: training\.max_steps: 40 → 80"):
        identity.check_run_directory(tmp_path, None, sections(max_steps=80))


def marker(run_dir: Path, name: str, **fields: Any) -> None:
    (run_dir / name).mkdir(parents=True)
    (run_dir / name / "COMMITTED.json").write_text(json.dumps({"version": 2, "step": 5, **fields}))


def test_checkpoints_of_another_run_are_refused_even_without_run_json(tmp_path: Path) -> None:
    marker(tmp_path, "checkpoint-5", run_id="uid-old", fingerprint=identity.fingerprint(sections()))
    with pytest.raises(ConfigError, match="its checkpoint-5 was written by run uid-old, not uid-new"):
        identity.check_run_directory(tmp_path, "uid-new", sections())
    with pytest.raises(ConfigError, match="its checkpoint-5 was written with a different training spec"):
        identity.check_run_directory(tmp_path, "uid-old", sections(learning_rate=1e-3))
    # markers written before run identities name no run: accepted (a job started before keeps its run)
    legacy = tmp_path / "legacy"
    marker(legacy, "checkpoint-5")
    assert identity.check_run_directory(legacy, "uid-new", sections()) is None


def test_continuation_across_specs_needs_the_same_model_and_lora_shape(tmp_path: Path) -> None:
    source = tmp_path / "runs" / "uid-old"
    claim(source, "uid-old", sections())
    record = ckpt.CommitRecord(
        source / "checkpoint-40", 40, "", {}, fingerprint=identity.fingerprint(sections())
    )
    assert identity.check_continuation(source / "checkpoint-40", record, sections())[1] == []
    _, changed = identity.check_continuation(source, record, sections(max_steps=80))
    assert changed == ["training.max_steps: 40 → 80"]
    lora = identity.spec_sections(
        config().model_copy(update={"lora": config().lora.model_copy(update={"r": 4})})
    )
    with pytest.raises(ConfigError, match=r"another model or LoRA shape: lora\.r: 8 → 4"):
        identity.check_continuation(source / "checkpoint-40", record, lora)


def test_claim_relative_paths() -> None:
    assert identity.claim_relative("/checkpoints/runs/u/checkpoint-40") == "runs/u/checkpoint-40"
    assert identity.claim_relative("/elsewhere/checkpoint-40") == "/elsewhere/checkpoint-40"


def test_commit_marker_records_the_run(tmp_path: Path) -> None:
    record = ckpt.CommitRecord(tmp_path, 1, "", {})
    assert record.run_id is None and record.fingerprint is None  # old markers: optional
