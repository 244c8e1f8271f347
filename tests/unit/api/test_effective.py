"""effective.py: spec + the operator's OOM adaptations → the one effective spec the next attempt runs."""

from __future__ import annotations

from finetune_api.effective import EffectiveJob, EffectiveSpec, effective_job, effective_memory
from finetune_api.effective import resolve_effective_spec as resolve
from finetune_api.models import EffectiveTraining, FineTuneJob

from tests.unit.operator.decision_helpers import spec  # max_steps 40, batch 8, cpu 1, memory 1Gi


def test_effective_memory_the_larger_of_adapted_and_explicit() -> None:
    adapted = EffectiveTraining(memory="3Gi")
    assert effective_memory(spec(resources={"memory": "1Gi"}), adapted) == "3Gi"
    assert effective_memory(spec(resources={"memory": "4Gi"}), adapted) == "4Gi"  # the user raised it
    assert effective_memory(spec(resources={"memory": "4Gi"}), None) == "4Gi"
    assert effective_memory(spec(resources={"memory": None}), adapted) == "3Gi"


def test_adaptations_replace_batch_accumulation_and_memory_and_nothing_else() -> None:
    written = spec()
    adapted = resolve(
        written, EffectiveTraining(per_device_train_batch_size=4, gradient_accumulation_steps=4, memory="3Gi")
    )
    assert isinstance(adapted, EffectiveSpec)
    training = adapted.training
    assert (training.per_device_train_batch_size, training.gradient_accumulation_steps) == (4, 4)
    assert adapted.resources.memory == "3Gi"
    assert adapted.training.max_steps == 40 and adapted.resources.cpu == "1"
    assert adapted.model == written.model and adapted.dataset == written.dataset
    # the spec itself is untouched
    assert (written.training.per_device_train_batch_size, written.resources.memory) == (8, "1Gi")


def test_partial_or_no_adaptations_keep_the_written_values() -> None:
    written = spec()
    memory_only = resolve(written, EffectiveTraining(memory="3Gi"))
    assert memory_only.training == written.training and memory_only.resources.memory == "3Gi"
    unchanged = resolve(written, None)
    assert unchanged.model_dump() == written.model_dump()
    assert resolve(written, EffectiveTraining()).model_dump() == written.model_dump()


def test_effective_job_keeps_identity_and_status() -> None:
    parsed = FineTuneJob.model_validate(
        {
            "metadata": {"name": "demo", "namespace": "ml"},
            "spec": spec().model_dump(by_alias=True, exclude_none=True),
            "status": {"attempt": 3, "effective": {"memory": "3Gi"}},
        }
    )
    assert parsed.status is not None
    resolved = effective_job(parsed, parsed.status.effective)
    assert isinstance(resolved, EffectiveJob) and isinstance(resolved.spec, EffectiveSpec)
    assert resolved.metadata == parsed.metadata and resolved.status == parsed.status
    assert resolved.spec.resources.memory == "3Gi" and parsed.spec.resources.memory == "1Gi"
