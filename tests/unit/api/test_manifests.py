"""Every invalid manifest is rejected by the model with a message naming its field; every valid manifest and
every example passes. tests/integration/api checks the real apiserver gives the same verdicts."""

from __future__ import annotations

from pathlib import Path

import pytest
from finetune_api import InvalidManifest, load_document, parse_job

ROOT = Path(__file__).resolve().parents[3]
INVALID = sorted((ROOT / "tests" / "manifests" / "invalid").glob("*.yaml"))
VALID = sorted((ROOT / "tests" / "manifests").glob("*.yaml")) + sorted(
    (ROOT / "tests" / "manifests" / "valid").glob("*.yaml")
)
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


def expected_field(path: Path) -> str:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# expect: "), f"{path.name} must start with '# expect: <field path>'"
    return first.removeprefix("# expect: ").strip()


def test_there_are_enough_distinct_mistakes() -> None:
    assert len(INVALID) >= 15
    assert len({expected_field(p) for p in INVALID}) >= 15


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.stem)
def test_invalid_manifest_is_rejected_naming_the_field(path: Path) -> None:
    with pytest.raises(InvalidManifest) as caught:
        parse_job(load_document(path), path.name)
    field = expected_field(path)
    assert any(line.startswith(f"{field}:") for line in caught.value.errors), caught.value.errors


@pytest.mark.parametrize("path", VALID + EXAMPLES, ids=lambda p: p.stem)
def test_valid_manifest_and_example_are_accepted(path: Path) -> None:
    job = parse_job(load_document(path), path.name)
    assert job.spec.training.save_steps >= 1


def test_seed_example_keeps_the_seed_settings() -> None:
    job = parse_job(load_document(ROOT / "examples" / "job.yaml"))
    t, lora = job.spec.training, job.spec.lora
    assert (job.spec.model.name_or_path, lora.r, lora.lora_alpha, lora.lora_dropout) == ("gpt2", 8, 16, 0.05)
    assert (t.num_train_epochs, t.per_device_train_batch_size) == (2, 2)
    assert (t.save_steps, t.save_total_limit) == (2, 2)
    assert (t.learning_rate, t.max_length) == (5e-4, 128)
