from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from finetune_api import (
    EffectiveTraining,
    InvalidManifest,
    TrainerConfig,
    load_trainer_config,
    parse_job,
    trainer_config_from_job,
)
from finetune_api.contract import TerminationMessage
from finetune_api.effective import effective_job

ROOT = Path(__file__).resolve().parents[3]


def job(**training: object) -> dict[str, object]:
    return {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "demo", "namespace": "ml"},
        "spec": {"model": {"name_or_path": "/m"}, "dataset": {"path": "/d.jsonl"}, "training": training},
    }


def test_manifest_and_rendered_config_load_the_same(tmp_path: Path) -> None:
    manifest = tmp_path / "job.yaml"
    manifest.write_text(yaml.safe_dump(job(save_steps=5)))
    from_manifest = load_trainer_config(manifest)
    rendered = tmp_path / "config.json"
    rendered.write_text(from_manifest.model_dump_json(by_alias=True))
    assert load_trainer_config(rendered) == from_manifest
    assert from_manifest.training.save_steps == 5


def test_oom_adaptations_override_the_spec_batch() -> None:
    parsed = parse_job(job(per_device_train_batch_size=8, gradient_accumulation_steps=2))
    effective = EffectiveTraining(per_device_train_batch_size=4, gradient_accumulation_steps=4)
    config = trainer_config_from_job(effective_job(parsed, effective), report_to_job=True)
    training = config.training
    assert (training.per_device_train_batch_size, training.gradient_accumulation_steps) == (4, 4)
    assert config.job is not None and (config.job.namespace, config.job.name) == ("ml", "demo")
    assert parsed.spec.training.per_device_train_batch_size == 8  # the spec itself is untouched


def test_save_deadline_leaves_room_to_exit() -> None:
    parsed = parse_job(job())
    grace = parsed.spec.checkpoint.termination_grace_period_seconds
    assert trainer_config_from_job(parsed).save_deadline_seconds < grace


def with_notice(grace: int, **scheduling: object) -> dict[str, object]:
    document = job()
    spec = document["spec"]
    assert isinstance(spec, dict)
    spec["checkpoint"] = {"terminationGracePeriodSeconds": grace}
    spec["scheduling"] = {"spot": True, **scheduling}
    return document


@pytest.mark.parametrize(
    ("grace", "scheduling", "deadline"),
    [
        (120, {}, 115.0),  # no notice given: the grace period alone
        (120, {"cloud": "gke"}, 10.0),  # GKE spot: ordinary pods get 15 s whatever the pod asks for
        (120, {"cloud": "aws"}, 115.0),  # EC2: 2 minutes of notice, the grace period is shorter
        (180, {"cloud": "aws"}, 115.0),
        (120, {"cloud": "azure"}, 25.0),
        (120, {"cloud": "gke", "preemptionNoticeSeconds": 60}, 55.0),  # a longer shutdown period on the pool
        (30, {"preemptionNoticeSeconds": 90}, 25.0),  # the grace period is shorter than the notice
        (120, {"preemptionNoticeSeconds": 4}, 1.0),  # never below 1 s
    ],
)
def test_save_deadline_is_the_shorter_of_grace_and_notice_less_the_exit_margin(
    grace: int, scheduling: dict[str, object], deadline: float
) -> None:
    parsed = parse_job(with_notice(grace, **scheduling))
    assert trainer_config_from_job(parsed).save_deadline_seconds == deadline


@pytest.mark.parametrize(
    ("scheduling", "message"),
    [
        ({"cloud": "ibm"}, "spec.scheduling.cloud"),
        ({"preemptionNoticeSeconds": 1}, "spec.scheduling.preemptionNoticeSeconds"),
        ({"preemption_notice_seconds": 15}, "spec.scheduling"),  # Kubernetes sections take camelCase only
    ],
)
def test_bad_notice_settings_name_the_field(scheduling: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidManifest) as raised:
        parse_job(with_notice(120, **scheduling))
    assert any(line.startswith(message) for line in raised.value.errors), raised.value.errors


@pytest.mark.parametrize(
    ("text", "message"),
    [("kind: Pod\n", "kind: expected"), ("- a\n", "expected a mapping"), ("a: [\n", "not valid YAML")],
)
def test_bad_documents_get_one_clear_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(InvalidManifest, match=message):
        load_trainer_config(path)


def test_unknown_trainer_config_field_is_rejected() -> None:
    with pytest.raises(ValueError, match="Extra inputs"):
        TrainerConfig.model_validate({"model": {"name_or_path": "/m"}, "dataset": {"path": "/d"}, "extra": 1})


def test_termination_message_stays_within_the_kubelet_limit() -> None:
    message = TerminationMessage(reason="Error", step=3, message="x" * 10_000)
    text = message.to_json()
    assert len(text.encode()) < 4096
    assert TerminationMessage.model_validate_json(text).reason == "Error"


def test_on_no_intact_checkpoint_reaches_the_trainer_config() -> None:
    parsed = parse_job(job())
    assert parsed.spec.checkpoint.on_no_intact_checkpoint == "fail"  # the default: refuse, delete nothing
    assert trainer_config_from_job(parsed).on_no_intact_checkpoint == "fail"
    document = job()
    document["spec"]["checkpoint"] = {"onNoIntactCheckpoint": "restart"}  # type: ignore[index]
    assert trainer_config_from_job(parse_job(document)).on_no_intact_checkpoint == "restart"
    document["spec"]["checkpoint"] = {"onNoIntactCheckpoint": "delete"}  # type: ignore[index]
    with pytest.raises(InvalidManifest, match=r"spec\.checkpoint\.onNoIntactCheckpoint"):
        parse_job(document)


def test_yaml_is_read_as_kubectl_reads_it(tmp_path: Path) -> None:
    """1e4 is a number (kubectl's YAML 1.1 reading; PyYAML alone says string), stored as the integer 10000."""
    path = tmp_path / "job.yaml"
    base = yaml.safe_dump(job())
    path.write_text(base.replace("training: {}", "training:\n    max_steps: 1e4\n    learning_rate: 5e-4"))
    training = load_trainer_config(path).training
    assert training.max_steps == 10000 and isinstance(training.max_steps, int)
    assert training.learning_rate == 5e-4
    path.write_text(base.replace("training: {}", "training:\n    bf16: y\n    max_steps: 1:30"))
    with pytest.raises(InvalidManifest) as caught:
        load_trainer_config(path)  # y is true, as in kubectl; 1:30 is a string there, not 90
    assert caught.value.errors == ["spec.training.max_steps: Input should be a valid integer"]


@pytest.mark.parametrize(
    ("training", "field"),
    [({"max_steps": "1000"}, "max_steps"), ({"bf16": "true"}, "bf16"), ({"seed": True}, "seed")],
)
def test_no_coercion(training: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidManifest) as caught:
        parse_job(job(**training))
    assert [line.split(":")[0] for line in caught.value.errors] == [f"spec.training.{field}"]


def test_null_takes_the_default_like_the_apiserver() -> None:
    document = job()
    document["spec"]["training"] = None  # type: ignore[index]
    assert parse_job(document).spec.training.save_steps == 2
    document["spec"]["training"] = {"save_steps": None, "save_total_limit": None}  # type: ignore[index]
    training = parse_job(document).spec.training
    assert training.save_steps == 2 and training.save_total_limit == 2  # the apiserver defaults it too


def test_snake_case_is_refused_in_kubernetes_sections() -> None:
    document = job()
    document["spec"]["checkpoint"] = {"volume_size": "20Gi"}  # type: ignore[index]
    with pytest.raises(InvalidManifest) as caught:
        parse_job(document)
    assert caught.value.errors == ["spec.checkpoint.volume_size: Extra inputs are not permitted"]


def test_background_save_reaches_the_trainer_config() -> None:
    parsed = parse_job(job())
    assert parsed.spec.checkpoint.background_save is True  # the default: saves do not block training
    assert trainer_config_from_job(parsed).background_save is True
    document = job()
    document["spec"]["checkpoint"] = {"backgroundSave": False}  # type: ignore[index]
    assert trainer_config_from_job(parse_job(document)).background_save is False
    document["spec"]["checkpoint"] = {"backgroundSave": "no"}  # type: ignore[index]
    with pytest.raises(InvalidManifest, match=r"spec\.checkpoint\.backgroundSave"):
        parse_job(document)
