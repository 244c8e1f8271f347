"""The effective spec: the user's spec with the operator's OOM adaptations (`status.effective`) applied.

Resolved once, here, and handed on: the operator's builders render the pod (memory) and the trainer config
(batch size, accumulation) from it, and the restart policy reads the current values from it. The trainer
gets the result one way only, in its config. It lives in the API package, not the operator, because the
trainer config (`trainer_config.trainer_config_from_job`) is built from it and the API may not depend on
the operator.
"""

from __future__ import annotations

from typing import Any

from finetune_api.models import EffectiveTraining, FineTuneJob, FineTuneJobSpec
from finetune_api.quantity import parse_quantity


class EffectiveSpec(FineTuneJobSpec):
    """The spec the next attempt runs: `training.per_device_train_batch_size`,
    `training.gradient_accumulation_steps` and `resources.memory` as adapted after OOMs; the rest as
    written."""


class EffectiveJob(FineTuneJob):
    """A FineTuneJob whose spec is resolved (what the builders take)."""

    spec: EffectiveSpec


def effective_memory(spec: FineTuneJobSpec, adaptations: EffectiveTraining | None) -> str | None:
    """The memory the next attempt gets: the OOM-adapted value, unless the user's `resources.memory` (which
    may have been raised since) is larger — an explicit raise is never overridden by an older adaptation."""
    adapted = adaptations.memory if adaptations is not None else None
    explicit = spec.resources.memory
    if adapted is None or explicit is None:
        return adapted or explicit
    return explicit if parse_quantity(explicit) >= parse_quantity(adapted) else adapted


def resolve_effective_spec(spec: FineTuneJobSpec, adaptations: EffectiveTraining | None) -> EffectiveSpec:
    """spec + adaptations → the effective spec (the spec itself is untouched; no adaptations = the spec)."""
    fields: dict[str, Any] = {name: getattr(spec, name) for name in FineTuneJobSpec.model_fields}
    if adaptations is not None:
        training = {
            "per_device_train_batch_size": adaptations.per_device_train_batch_size,
            "gradient_accumulation_steps": adaptations.gradient_accumulation_steps,
        }
        fields["training"] = spec.training.model_copy(
            update={k: v for k, v in training.items() if v is not None}
        )
        fields["resources"] = spec.resources.model_copy(
            update={"memory": effective_memory(spec, adaptations)}
        )
    # Not validated again: the spec was, and the adaptations are the operator's own (memory within its cap).
    return EffectiveSpec.model_construct(_fields_set=set(spec.model_fields_set), **fields)


def effective_job(job: FineTuneJob, adaptations: EffectiveTraining | None) -> EffectiveJob:
    """The job with its spec resolved against `adaptations` (the operator's current `status.effective`)."""
    fields: dict[str, Any] = {name: getattr(job, name) for name in FineTuneJob.model_fields}
    fields["spec"] = resolve_effective_spec(job.spec, adaptations)
    return EffectiveJob.model_construct(_fields_set=set(job.model_fields_set), **fields)
