"""What `reconcile` reads and returns: the `World` (read fresh by handlers.py), and a `Step` of `Action`s
(create / adopt / delete / release a pod, patch status, post an Event, annotate, and two notes for logs and
metrics) that executor.py carries out in order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from finetune_api.models import FineTuneJobSpec, FineTuneJobStatus

from finetune_operator.endings import Outcome
from finetune_operator.kueue import WorkloadView
from finetune_operator.policy import Plan
from finetune_operator.views import ClaimView, NodeView, PodView


@dataclass(frozen=True)
class CreatePod:
    attempt: int
    run_directory: str  # claim-relative: --output-dir /checkpoints/<run_directory>
    status_patch: dict[str, Any]  # applied once the pod exists (created or adopted)
    event_reason: str
    event_message: str


@dataclass(frozen=True)
class AdoptPod:
    """The next attempt's pod exists already (created just before an operator restart): record it."""

    name: str
    status_patch: dict[str, Any]


@dataclass(frozen=True)
class DeletePod:
    name: str
    grace_seconds: int | None = None  # None: the pod's own grace period
    force: bool = False  # grace 0: the node is lost, or the containers are already stopped


@dataclass(frozen=True)
class ReleasePod:
    """Remove our finalizer: the end of this pod is recorded."""

    name: str


@dataclass(frozen=True)
class PatchStatus:
    patch: dict[str, Any]


@dataclass(frozen=True)
class Event:
    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass(frozen=True)
class AnnotatePod:
    name: str
    annotations: dict[str, str]


@dataclass(frozen=True)
class Decided:
    """A decision was recorded (for metrics and logs)."""

    outcome: Outcome
    plan: Plan


@dataclass(frozen=True)
class Recovered:
    """The trainer reports progress again after a restart; `seconds` since the previous pod ended."""

    seconds: float


@dataclass(frozen=True)
class CreateWorkload:
    """Kueue: the job's Workload, for the pod attempt `attempt` would get (executor.py builds it)."""

    attempt: int


@dataclass(frozen=True)
class DeleteWorkload:
    name: str


@dataclass(frozen=True)
class PatchWorkloadStatus:
    name: str
    patch: dict[str, Any]


Action = (
    CreatePod
    | AdoptPod
    | DeletePod
    | ReleasePod
    | PatchStatus
    | Event
    | AnnotatePod
    | Decided
    | Recovered
    | CreateWorkload
    | DeleteWorkload
    | PatchWorkloadStatus
)


@dataclass(frozen=True)
class World:
    """Everything `reconcile` may look at, read fresh from the API by the caller."""

    name: str
    uid: str
    generation: int
    spec: FineTuneJobSpec
    status: FineTuneJobStatus
    pods: tuple[PodView, ...]
    nodes: dict[str, NodeView]
    now: datetime
    claim: ClaimView | None = None  # the checkpoint claim (None: not looked at)
    node_lost_seconds: float = 120.0
    shared_volume: bool = False  # the checkpoint claim is ReadWriteMany: never force on the timeout alone
    # Kueue (issue 15): the job's `kueue.x-k8s.io/queue-name` label (None: not queued, Kueue never consulted),
    # its Workload (None: not read), whether Kueue's Workload API exists, and the resources key
    # (kueue.resources_key) of the trainer pod the next attempt would get. `workload_watched`: the Workload
    # came from the watch-fed cache, so its next change wakes the job (no need to poll it).
    queue: str | None = None
    priority_class: str | None = None
    workload: WorkloadView | None = None
    kueue_installed: bool = True
    next_resources_key: str | None = None
    workload_watched: bool = False


@dataclass
class Step:
    actions: list[Action] = field(default_factory=list)
    requeue_seconds: float | None = None  # look again after this long even without events

    def requeue(self, seconds: float) -> None:
        seconds = max(0.0, seconds)
        self.requeue_seconds = seconds if self.requeue_seconds is None else min(self.requeue_seconds, seconds)
