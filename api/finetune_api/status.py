"""The FineTuneJob's status, split by who writes it: the trainer (progress, checkpoints) or the operator
(phase, counters, the pending decision, adaptations). The owner of every field is visible here, in one place.

`FineTuneJobStatus` (what the CRD's status schema and every reader use) is the two owners' models together.
Writers build their merge patches with `TrainerStatus.patch(...)` / `OperatorStatus.patch(...)`: a field
that is not the writer's own is refused there. The one exception, trainer fields the operator also writes
at an attempt boundary, is named with its reason in `OPERATOR_WRITES_TO_TRAINER_FIELDS`.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel
from pydantic_core import to_jsonable_python

Phase = Literal["Pending", "Queued", "Running", "Restarting", "Succeeded", "Failed", "Suspended"]
RestartCause = Literal["preemption", "hostOOM", "cudaOOM", "error", "infrastructure"]
RESTART_CAUSES: tuple[RestartCause, ...] = ("preemption", "hostOOM", "cudaOOM", "error", "infrastructure")


class StatusModel(BaseModel):
    """Written by the operator and the trainer; read it with kubectl get/describe."""

    model_config = ConfigDict(populate_by_name=True, alias_generator=to_camel, extra="ignore")


class CheckpointInfo(StatusModel):
    """The newest committed checkpoint."""

    step: int = Field(description="Optimizer step of the checkpoint.")
    path: str | None = Field(None, description="Its directory on the checkpoint volume.")
    time: str | None = Field(None, description="RFC 3339 time the checkpoint was committed.")
    save_seconds: float | None = Field(None, description="Seconds it took to write and commit.")
    bytes: int | None = Field(None, description="Its size on the volume.")


class EmergencySave(StatusModel):
    """How the last trainer pod stopped after SIGTERM: did its emergency checkpoint make the deadline?"""

    step: int | None = Field(
        None, description="Step of the emergency checkpoint; null when none was committed in time."
    )
    seconds: float | None = Field(None, description="Seconds the emergency save took (when committed).")
    deadline_seconds: float | None = Field(
        None, description="The trainer's save deadline (the shorter of grace period and notice, less 5 s)."
    )
    in_time: bool = Field(
        description="false: not committed before the deadline (the watchdog gave up, or the pod was "
        "killed); the job resumes from the newest older checkpoint."
    )
    time: str | None = Field(None, description="RFC 3339 time the pod ended.")


class Condition(StatusModel):
    """A Kubernetes-style condition."""

    type: str = Field(description="Condition type.")
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str | None = Field(None, description="One-word reason (CamelCase).")
    message: str | None = Field(None, description="Human-readable detail.")
    last_transition_time: str | None = Field(None, description="RFC 3339 time the status last changed.")


class RestartCounts(StatusModel):
    """Restarts so far, by cause (each has its own budget in spec.restartPolicy)."""

    preemption: int = Field(0, description="After preemption, eviction or node loss.")
    host_oom: int = Field(0, alias="hostOOM", description="After the kernel's OOM killer ended the trainer.")
    cuda_oom: int = Field(0, alias="cudaOOM", description="After CUDA ran out of memory.")
    error: int = Field(0, description="After application errors.")
    infrastructure: int = Field(
        0, description="After a container that could not start or an image that could not be pulled in time."
    )

    @property
    def total(self) -> int:
        return self.preemption + self.host_oom + self.cuda_oom + self.error + self.infrastructure


class RestartStreak(StatusModel):
    """Consecutive pod ends for the same reason with no training progress in between."""

    reason: str = Field(description="The reason the pods ended with (e.g. UnexpectedAdmissionError).")
    count: int = Field(description="Ends in a row; reset when the trainer reports a new step.")


class EffectiveTraining(StatusModel):
    """What the operator changed after OOMs; applied to the next attempt on top of the spec."""

    per_device_train_batch_size: int | None = Field(None, description="Batch size after CUDA OOMs.")
    gradient_accumulation_steps: int | None = Field(None, description="Accumulation after CUDA OOMs.")
    memory: str | None = Field(None, description="Memory after host OOM kills.")


class PendingDecision(StatusModel):
    """A decision the operator has recorded (counters already charged) but not finished carrying out.

    Written in the same status patch that charges the budget, so an operator restart resumes it instead
    of deciding (and counting) twice.
    """

    action: Literal["restart", "stop"] = Field(
        description="restart: create the next attempt once the ended pod is gone; stop: suspend."
    )
    cause: RestartCause | None = Field(None, description="The restart cause charged.")
    reason: str = Field(description="Why (the pod's end, classified).")
    message: str | None = Field(None, description="Detail for the user.")
    pod_name: str = Field(description="The attempt's pod that ended.")
    not_before: str | None = Field(None, description="RFC 3339: create the next pod no earlier (backoff).")
    avoid_node: str | None = Field(
        None, description="The node the ended pod failed on; the next pod prefers other nodes."
    )


class OwnedStatus(StatusModel):
    """The fields one writer owns; `patch(**fields)` builds that writer's merge patch (wire names)."""

    #: Fields of the other owner this writer may still write (see OPERATOR_WRITES_TO_TRAINER_FIELDS).
    borrowed: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def patch(cls, **fields: Any) -> dict[str, Any]:
        """A merge patch of `fields` (Python names; None clears): camelCase keys, models as JSON.

        Raises KeyError for a field this writer does not own."""
        out: dict[str, Any] = {}
        for name, value in fields.items():
            info = FineTuneJobStatus.model_fields.get(name)
            if info is None or (name not in cls.model_fields and name not in cls.borrowed):
                raise KeyError(f"status.{name} is not written by {cls.__name__} (status.py names the owners)")
            # models (also inside lists and dicts) as their JSON wire form
            out[info.alias or name] = to_jsonable_python(value, by_alias=True)
        return out


class TrainerStatus(OwnedStatus):
    """Written by the trainer (finetune_trainer: progress reports, checkpoint commits, the volume check)."""

    started_from: str | None = Field(
        None,
        description="Where the run started: 'fresh', or the checkpoint it continued from (claim-relative); "
        "after its volume was lost, the object store's copy it resumed from (s3://bucket/key).",
    )
    step: int | None = Field(None, description="Last optimizer step the trainer reported.")
    total_steps: int | None = Field(None, description="Optimizer steps of the whole run.")
    epoch: float | None = Field(None, description="Last epoch the trainer reported.")
    loss: float | None = Field(None, description="Last training loss the trainer reported.")
    progress: str | None = Field(None, description="'step/total' for kubectl get.")
    steps_per_second: float | None = Field(
        None, description="Optimizer steps per second over the last 2 minutes (saves included)."
    )
    tokens_per_second: float | None = Field(None, description="Input tokens per second, where counted.")
    estimated_remaining_seconds: int | None = Field(
        None, description="Estimated seconds until the last step at the current rate (while training)."
    )
    remaining: str | None = Field(None, description="estimatedRemainingSeconds for people, e.g. '1h05m'.")
    last_checkpoint: CheckpointInfo | None = Field(None, description="The newest committed checkpoint.")
    last_checkpoint_step: int | None = Field(None, description="Its step (for kubectl get).")
    checkpoints: int | None = Field(None, description="Committed checkpoints currently retained.")
    volume_warning: str | None = Field(
        None,
        description="Set by the trainer when the checkpoint volume cannot hold the model cache (when it is "
        "there) plus the checkpoints the run keeps (save_total_limit and one being written); cleared when "
        "it fits.",
    )
    durable_checkpoint: str | None = Field(
        None,
        description="spec.checkpoint.objectStore: the newest checkpoint committed in the store (it survives "
        "the loss of the volume), e.g. checkpoint-35; set by the trainer after each verified upload.",
    )
    durable_checkpoint_step: int | None = Field(None, description="Its step.")


#: Trainer-owned fields the operator writes too, and why (the only overlap between the two writers).
OPERATOR_WRITES_TO_TRAINER_FIELDS: dict[str, str] = {
    "started_from": "seeded at the first attempt with spec.checkpoint.resumeFrom (or 'fresh'); the trainer "
    "then names the exact checkpoint",
    "step": "at success, the final step from the termination message (the last report may be older)",
    "estimated_remaining_seconds": "cleared when an attempt ends: nothing trains until the next one reports",
    "remaining": "cleared with estimatedRemainingSeconds",
}


class OperatorStatus(OwnedStatus):
    """Written by the operator (finetune_operator: decisions, status_patches, handlers)."""

    borrowed: ClassVar[frozenset[str]] = frozenset(OPERATOR_WRITES_TO_TRAINER_FIELDS)

    phase: Phase | None = Field(
        None, description="Pending, Running, Restarting, Succeeded, Failed, Suspended."
    )
    attempt: int = Field(0, description="Number of the current (or last) trainer pod, from 1.")
    pod_name: str | None = Field(None, description="The current (or last) trainer pod.")
    restarts: RestartCounts = Field(default_factory=RestartCounts, description="Restarts by cause.")
    restarts_total: int = Field(0, description="Restarts of all causes.")
    run_directory: str | None = Field(
        None,
        description="This job's run directory on the checkpoint claim (runs/<uid>); a later job continues "
        "from it with spec.checkpoint.resumeFrom.",
    )
    lost_steps: int = Field(0, description="Steps trained but lost (redone) across restarts.")
    last_emergency_save: EmergencySave | None = Field(
        None, description="The last emergency save after SIGTERM (preemption, eviction, deletion)."
    )
    late_emergency_saves: int = Field(
        0, description="Emergency saves not committed before the save deadline, across attempts."
    )
    streak: RestartStreak | None = Field(
        None, description="Pod ends in a row for one reason without training progress (a restart storm)."
    )
    effective: EffectiveTraining = Field(
        default_factory=EffectiveTraining, description="Settings the operator changed after OOMs."
    )
    pending: PendingDecision | None = Field(
        None, description="Recorded decision still being carried out (the operator's restart-safe state)."
    )
    last_end_step: int | None = Field(
        None, description="Last reported step when the previous attempt ended (recovery = a newer report)."
    )
    last_pod_end_time: str | None = Field(None, description="RFC 3339 time the previous pod ended.")
    next_attempt_time: str | None = Field(
        None, description="RFC 3339: the next pod is created then (backoff)."
    )
    start_time: str | None = Field(None, description="RFC 3339 time the job started.")
    completion_time: str | None = Field(None, description="RFC 3339 time the job succeeded or failed.")
    conditions: list[Condition] = Field(default_factory=list, description="Kubernetes-style conditions.")
    observed_generation: int | None = Field(None, description="The spec generation the status reflects.")
    reason: str | None = Field(None, description="One-word reason for the phase.")
    message: str | None = Field(None, description="What is happening, for a person.")


class FineTuneJobStatus(OperatorStatus, TrainerStatus):
    """What the job is doing; every decision also posts an Event. The trainer's and the operator's fields."""
