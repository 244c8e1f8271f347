"""The operator's brain, with no I/O: why did a trainer pod end, what comes next, what to do now.

Three layers, each a pure function of plain data (design.md §3, "why a pod ended → what next"):

- `pod_view` / `node_view`: the few facts the decisions need, read from a Pod / Node as the API returns it.
- `classify_end(pod, node, ...)` → `Outcome` (or None while the pod may still be running) and
  `plan_next(spec, status, outcome)` → `Plan` (restart now / with more memory / with half the micro-batch /
  after a backoff, fail with a reason, succeed, stop).
- `reconcile(world)` → the list of `Action`s that moves the cluster one step towards the job's desired state.
  handlers.py executes them and calls `reconcile` again on fresh state until nothing is left to do.

The single-writer rule lives here too: a new attempt is created only when no pod of the job exists at all
(not merely terminating); a pod on a node that is confirmed lost is force-deleted (see `node_lost`).
"""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from finetune_api.contract import (
    EXIT_CONFIG_ERROR,
    EXIT_CUDA_OOM,
    EXIT_KILLED,
    EXIT_NO_INTACT_CHECKPOINT,
    EXIT_PREEMPTED,
    EXIT_SUCCEEDED,
    EXIT_SUPERSEDED,
    EXIT_VOLUME_FULL,
    LEGACY_RUN_DIR,
    RUNS_DIR,
    TerminationMessage,
)
from finetune_api.models import (
    Condition,
    EffectiveTraining,
    FineTuneJobSpec,
    FineTuneJobStatus,
    Phase,
    RestartCause,
)
from finetune_api.quantity import format_bytes, parse_quantity
from pydantic import ValidationError

# --- names shared with builders.py and handlers.py ---------------------------------------------------
TRAINER_CONTAINER = "trainer"
LABEL_JOB = "finetune.dev/job"
LABEL_ATTEMPT = "finetune.dev/attempt"
#: Our finalizer on trainer pods: the pod object (and its exit code, conditions) stays until the operator
#: has recorded how it ended, even when it is deleted or the operator is down at that moment.
POD_FINALIZER = "finetune.dev/attempt-tracking"
#: On the running pod: when its job last committed a checkpoint (a scheduler can prefer victims that
#: lose the least work).
ANNOTATION_LAST_CHECKPOINT = "finetune.dev/last-checkpoint-time"
ANNOTATION_LAST_CHECKPOINT_STEP = "finetune.dev/last-checkpoint-step"

#: Container waiting reasons that no retry will fix.
CONFIG_WAITING_REASONS = frozenset({"ErrImageNeverPull", "InvalidImageName", "CreateContainerConfigError"})
#: A failed pull may work on the next try (registry 429/5xx, a credential-provider race on a fresh node): the
#: kubelet retries it, and the operator waits up to restartPolicy.imagePullTimeoutSeconds...
IMAGE_PULL_WAITING_REASONS = frozenset({"ErrImagePull", "ImagePullBackOff"})
#: The runtime failed to create the container (CRI-O reports a missing executable here; a device or runtime
#: hiccup otherwise): the kubelet retries too, bounded by the same timeout.
CREATE_WAITING_REASONS = frozenset({"CreateContainerError"})
#: ...unless the registry said the image does not exist or may not be pulled (no retry fixes that).
PERMANENT_PULL_ERRORS = (
    "not found",
    "manifest unknown",
    "repository does not exist",
    "unauthorized",
    "authorization failed",
    "access denied",
    "403 forbidden",
)
#: Container termination reasons of a container that never started (the runtime failed to create it).
START_FAILURE_REASONS = frozenset({"StartError", "ContainerCannotRun"})
#: pod.status.reason when the kubelet rejects a pod at admission (besides "OutOf<resource>").
ADMISSION_FAILURE_REASONS = frozenset({"UnexpectedAdmissionError", "NodeAffinity", "NodeSelectorMismatching"})
#: Ends that point at the node and can repeat at once (admission failures, kubelet evictions): from this many
#: in a row without training progress on, the next pod waits a short doubling backoff.
STORM_AFTER = 3
#: Kubernetes' non-graceful node shutdown signal: an admin confirms the node is down (its pods may go).
OUT_OF_SERVICE_TAINT = "node.kubernetes.io/out-of-service"
#: status.reason while a pod on an unreachable node is not force-deleted (shared volume, node not confirmed).
NODE_UNREACHABLE = "NodeUnreachable"
#: status.reason the kubelet writes when it ends a pod itself (node pressure, node shutdown).
KUBELET_STOP_REASONS = frozenset({"Evicted", "Preempting", "Shutdown", "Terminated", "NodeShutdown"})

End = Literal[
    "Completed",
    "Preempted",
    "HostOOM",
    "CudaOOM",
    "Error",
    "ConfigError",
    "VolumeFull",
    "Unschedulable",
    "NoIntactCheckpoint",
    "StartFailure",
    "Superseded",
]
Action_ = Literal["restart", "fail", "succeed", "stop"]


# ================================================================================== time helpers


def parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def format_time(value: datetime) -> str:
    """RFC 3339 in UTC with milliseconds (what the status carries)."""
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# ================================================================================== views


@dataclass(frozen=True)
class Terminated:
    exit_code: int
    reason: str | None = None  # OOMKilled, Error, Completed, ContainerStatusUnknown
    message: str | None = None  # what the trainer wrote to terminationMessagePath (or the log tail)
    finished_at: datetime | None = None

    @property
    def termination(self) -> TerminationMessage | None:
        if not self.message:
            return None
        try:
            return TerminationMessage.model_validate_json(self.message.strip())
        except ValidationError:
            return None


@dataclass(frozen=True)
class PodView:
    name: str
    uid: str = ""
    attempt: int | None = None
    phase: str = "Pending"
    node_name: str | None = None
    deletion_time: datetime | None = None
    deletion_grace_seconds: int | None = None
    finalizers: tuple[str, ...] = ()
    owner_uids: tuple[str, ...] = ()
    annotations: dict[str, str] = field(default_factory=dict)
    disruption: str | None = None  # reason of a True DisruptionTarget condition
    disruption_message: str | None = None
    status_reason: str | None = None  # pod.status.reason (Evicted, ...)
    status_message: str | None = None
    terminated: Terminated | None = None
    waiting_reason: str | None = None
    waiting_message: str | None = None
    running: bool = False
    unschedulable_since: datetime | None = None
    unschedulable_message: str | None = None
    created: datetime | None = None
    started: datetime | None = None  # pod.status.startTime: the kubelet accepted the pod (pulls start then)

    @property
    def deleting(self) -> bool:
        return self.deletion_time is not None

    @property
    def ended(self) -> bool:
        """The trainer container has stopped (the kubelet said so) or the pod reached a terminal phase."""
        return self.terminated is not None or self.phase in ("Succeeded", "Failed")

    @property
    def tracked(self) -> bool:
        return POD_FINALIZER in self.finalizers


@dataclass(frozen=True)
class NodeView:
    name: str
    exists: bool = True
    ready: str = "True"  # True / False / Unknown
    ready_since: datetime | None = None
    out_of_service: bool = False  # node.kubernetes.io/out-of-service taint: an admin says it is gone


def _container_status(pod: dict[str, Any]) -> dict[str, Any] | None:
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        if status.get("name") == TRAINER_CONTAINER:
            return dict(status)
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    return dict(statuses[0]) if statuses else None


def pod_view(pod: dict[str, Any]) -> PodView:
    """Read a Pod (API JSON, camelCase) into a PodView."""
    meta = pod.get("metadata") or {}
    status = pod.get("status") or {}
    labels = meta.get("labels") or {}
    attempt: int | None = None
    with contextlib.suppress(TypeError, ValueError):
        attempt = int(labels.get(LABEL_ATTEMPT, ""))
    disruption = disruption_message = None
    unschedulable_since = unschedulable_message = None
    for condition in status.get("conditions") or []:
        if condition.get("type") == "DisruptionTarget" and condition.get("status") == "True":
            disruption = condition.get("reason") or "DisruptionTarget"
            disruption_message = condition.get("message")
        if (
            condition.get("type") == "PodScheduled"
            and condition.get("status") == "False"
            and condition.get("reason") == "Unschedulable"
        ):
            unschedulable_since = parse_time(condition.get("lastTransitionTime"))
            unschedulable_message = condition.get("message")
    terminated = None
    waiting_reason = waiting_message = None
    running = False
    container = _container_status(pod)
    if container:
        state = container.get("state") or {}
        last = container.get("lastState") or {}
        term = state.get("terminated") or last.get("terminated")
        if term:
            terminated = Terminated(
                exit_code=int(term.get("exitCode", -1)),
                reason=term.get("reason"),
                message=term.get("message"),
                finished_at=parse_time(term.get("finishedAt")),
            )
        if state.get("waiting"):
            waiting_reason = state["waiting"].get("reason")
            waiting_message = state["waiting"].get("message")
        running = bool(state.get("running"))
    grace = meta.get("deletionGracePeriodSeconds")
    return PodView(
        name=meta.get("name", ""),
        uid=meta.get("uid", ""),
        attempt=attempt,
        phase=status.get("phase") or "Pending",
        node_name=(pod.get("spec") or {}).get("nodeName"),
        deletion_time=parse_time(meta.get("deletionTimestamp")),
        deletion_grace_seconds=int(grace) if grace is not None else None,
        finalizers=tuple(meta.get("finalizers") or ()),
        owner_uids=tuple(o.get("uid", "") for o in meta.get("ownerReferences") or ()),
        annotations=dict(meta.get("annotations") or {}),
        disruption=disruption,
        disruption_message=disruption_message,
        status_reason=status.get("reason"),
        status_message=status.get("message"),
        terminated=terminated,
        waiting_reason=waiting_reason,
        waiting_message=waiting_message,
        running=running,
        unschedulable_since=unschedulable_since,
        unschedulable_message=unschedulable_message,
        created=parse_time(meta.get("creationTimestamp")),
        started=parse_time(status.get("startTime")),
    )


@dataclass(frozen=True)
class ClaimView:
    """The job's checkpoint claim as read from the API (`exists=False`: none yet, the operator creates it)."""

    name: str
    exists: bool = False
    deleting: bool = False
    job_owner_uids: tuple[str, ...] = ()  # uids of the FineTuneJobs in its ownerReferences


def claim_view(name: str, pvc: dict[str, Any] | None) -> ClaimView:
    if pvc is None:
        return ClaimView(name=name)
    meta = pvc.get("metadata") or {}
    owners = tuple(
        str(o.get("uid")) for o in meta.get("ownerReferences") or [] if o.get("kind") == "FineTuneJob"
    )
    return ClaimView(
        name=name, exists=True, deleting=bool(meta.get("deletionTimestamp")), job_owner_uids=owners
    )


def claim_blocker(claim: ClaimView | None, uid: str) -> str | None:
    """Why the next pod cannot use the claim yet (None: it can). A claim being deleted (a quick delete and
    re-create with deleteWithJob: true meets the old job's claim Terminating) or owned by another
    FineTuneJob (its garbage collection has not started yet) would leave the pod Pending forever; once it is
    gone the operator creates a new one."""
    if claim is None or not claim.exists:
        return None
    if claim.deleting:
        return f"waiting for the previous job's claim {claim.name} to be deleted (it is terminating)"
    if claim.job_owner_uids and uid not in claim.job_owner_uids:
        return (
            f"waiting for the previous job's claim {claim.name} to be deleted (it belongs to FineTuneJob uid "
            f"{claim.job_owner_uids[0]}, deleted with it)"
        )
    return None


def run_directory(uid: str, status: FineTuneJobStatus) -> str:
    """This job's run directory on the claim: recorded in status at the first attempt (runs/<uid>); a job
    that started before run directories existed (attempts made, none recorded) keeps the legacy one."""
    if status.run_directory:
        return status.run_directory
    return LEGACY_RUN_DIR if status.attempt > 0 else f"{RUNS_DIR}/{uid}"


def node_view(name: str, node: dict[str, Any] | None) -> NodeView:
    """Read a Node (API JSON) into a NodeView; `node=None` means the Node object does not exist."""
    if node is None:
        return NodeView(name=name, exists=False, ready="Unknown")
    ready, since = "Unknown", None
    for condition in (node.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "Ready":
            ready = condition.get("status") or "Unknown"
            since = parse_time(condition.get("lastTransitionTime"))
    taints = (node.get("spec") or {}).get("taints") or []
    out_of_service = any(t.get("key") == OUT_OF_SERVICE_TAINT for t in taints)
    return NodeView(name=name, exists=True, ready=ready, ready_since=since, out_of_service=out_of_service)


def node_lost(
    node: NodeView | None, now: datetime, lost_after_seconds: float, shared_volume: bool = False
) -> bool:
    """The rule for "the node is gone, its pods will never report again" (and may be force-deleted):

    - the Node object was deleted (clouds delete the Node of a VM that no longer exists), or
    - it has the `node.kubernetes.io/out-of-service` taint (upstream: an admin confirmed it is down), or
    - its Ready condition has been Unknown or False for at least `lost_after_seconds` — only when the
      checkpoint volume is not shared (`shared_volume`: ReadWriteMany).

    The third case is a bet: a node that is only partitioned keeps its containers running. On clouds a
    ReadWriteOnce volume cannot attach elsewhere while the old attachment lives, which keeps a partitioned
    trainer off the volume in practice. A ReadWriteMany volume keeps nobody off: the old trainer may still
    write, so the timeout alone never counts there (see `node_unconfirmed`).
    """
    if node is None:
        return False
    if not node.exists or node.out_of_service:
        return True
    if shared_volume:
        return False
    return node_unready_too_long(node, now, lost_after_seconds)


def volume_shared(access_modes: list[str]) -> bool:
    """A claim with these access modes can be written from several nodes at once."""
    return "ReadWriteMany" in access_modes


def node_unready_too_long(node: NodeView | None, now: datetime, lost_after_seconds: float) -> bool:
    """The node exists and its Ready condition has been Unknown or False for at least `lost_after_seconds`."""
    if node is None or not node.exists or node.ready == "True" or node.ready_since is None:
        return False
    return (now - node.ready_since).total_seconds() >= lost_after_seconds


def node_unconfirmed(
    node: NodeView | None, now: datetime, lost_after_seconds: float, shared_volume: bool
) -> bool:
    """A shared volume's pod sits on a node unready past the timeout that nobody confirmed down: the operator
    waits (no force-delete, no replacement) and says what an admin can do."""
    return (
        shared_volume
        and not node_lost(node, now, lost_after_seconds, shared_volume)
        and node_unready_too_long(node, now, lost_after_seconds)
    )


def node_unreachable_message(pod: PodView, node: NodeView) -> str:
    since = format_time(node.ready_since) if node.ready_since else "?"
    return (
        f"node {node.name} is not ready (Ready={node.ready} since {since}) and the checkpoint volume is "
        f"ReadWriteMany: the trainer in pod {pod.name} may still be running there and writing to it, so "
        "the operator does not force-delete it and starts no replacement until the node is confirmed down. "
        f"If the node is down, confirm it: kubectl taint nodes {node.name} "
        f"{OUT_OF_SERVICE_TAINT}=nodeshutdown:NoExecute (or delete the Node object); if it comes back, the "
        "trainer carries on"
    )


# ================================================================================== classify


@dataclass(frozen=True)
class Outcome:
    end: End
    reason: str  # CamelCase, for status.reason and Events
    message: str  # one human sentence
    exit_code: int | None = None
    step: int | None = None  # last step the trainer reported in its termination message
    checkpoint_step: int | None = None  # newest committed checkpoint at the end
    batch: int | None = None  # per-device batch that ran out of memory (CUDA OOM)
    accumulation: int | None = None
    finished_at: datetime | None = None
    force_delete: bool = False  # the pod's node is lost: the pod may be removed without the kubelet
    node: str | None = None  # the node the pod was bound to
    node_trouble: bool = False  # the end points at the node (admission, eviction): may repeat at once


def classify_end(
    pod: PodView | None,
    node: NodeView | None,
    now: datetime,
    *,
    pending_timeout_seconds: int = 0,
    node_lost_seconds: float = 120.0,
    grace_seconds: int | None = None,
    image_pull_timeout_seconds: int = 0,
    shared_volume: bool = False,
) -> Outcome | None:
    """How did this attempt's pod end? None while it may still run (or is still shutting down)."""
    if pod is None:
        return Outcome(
            "Preempted",
            "PodVanished",
            "the trainer pod disappeared before the operator saw how it ended "
            "(force-deleted or garbage-collected): treated as a preemption",
            finished_at=now,
        )
    term = pod.terminated
    if term is not None:
        return _classify_terminated(pod, term, grace_seconds, node)
    if pod.phase == "Succeeded":
        return Outcome("Completed", "Completed", "the trainer pod succeeded", exit_code=0, finished_at=now)
    if pod.phase == "Failed":  # ended without a container status (rejected at admission, evicted early)
        reason = pod.disruption or pod.status_reason or "PodFailed"
        return Outcome(
            "Preempted",
            reason,
            # Running when last reported: Kubernetes failed it on a node that stopped answering (the pod
            # garbage collector does so once the node is tainted out-of-service).
            f"the pod was failed while its node was unreachable ({pod.status_message or reason}); resuming "
            "from the last committed checkpoint"
            if pod.running
            else f"the pod failed before its trainer ran ({pod.status_message or reason})",
            finished_at=now,
            node=pod.node_name,
            node_trouble=_node_trouble(pod),
        )
    if pod.node_name and node_lost(node, now, node_lost_seconds, shared_volume):
        gone = (
            "was deleted"
            if node is not None and not node.exists
            else f"was confirmed down ({OUT_OF_SERVICE_TAINT})"
            if node is not None and node.out_of_service
            else "is not ready"
        )
        return Outcome(
            "Preempted",
            "NodeLost",
            f"node {pod.node_name} {gone}: the trainer cannot report any more; "
            "resuming from the last committed checkpoint",
            finished_at=now,
            force_delete=True,
        )
    if pod.waiting_reason in CONFIG_WAITING_REASONS or (
        pod.waiting_reason in IMAGE_PULL_WAITING_REASONS and image_pull_is_permanent(pod.waiting_message)
    ):
        return Outcome(
            "ConfigError",
            pod.waiting_reason or "ConfigError",
            f"the trainer container cannot start: {pod.waiting_reason}: {pod.waiting_message or ''}".strip(),
            finished_at=now,
        )
    if pod.waiting_reason in CREATE_WAITING_REASONS and missing_executable(pod.waiting_message):
        return _executable_not_found(pod.waiting_message, finished_at=now)
    if pod.waiting_reason in IMAGE_PULL_WAITING_REASONS | CREATE_WAITING_REASONS and not pod.deleting:
        waited = image_pull_seconds(pod, now)
        if image_pull_timeout_seconds > 0 and waited is not None and waited >= image_pull_timeout_seconds:
            pulling = pod.waiting_reason in IMAGE_PULL_WAITING_REASONS
            return Outcome(
                "StartFailure",
                "ImagePullTimeout" if pulling else "CreateContainerTimeout",
                f"the trainer {'image could not be pulled' if pulling else 'container could not be created'} "
                f"on node {pod.node_name} for "
                f"{image_pull_timeout_seconds} s (restartPolicy.imagePullTimeoutSeconds): "
                f"{pod.waiting_reason}: {pod.waiting_message or 'no detail'}",
                finished_at=now,
                node=pod.node_name,
            )
    if pod.deleting and not pod.node_name:
        return Outcome(
            "Preempted",
            "DeletedWhilePending",
            "the pod was deleted before it was scheduled: restarting (no work lost)",
            finished_at=now,
        )
    if (
        not pod.deleting
        and pod.unschedulable_since is not None
        and pending_timeout_seconds > 0
        and (now - pod.unschedulable_since).total_seconds() >= pending_timeout_seconds
    ):
        return Outcome(
            "Unschedulable",
            "Unschedulable",
            f"the pod could not be scheduled for {pending_timeout_seconds} s "
            f"(restartPolicy.pendingTimeoutSeconds): {pod.unschedulable_message or 'no node fits'}",
            finished_at=now,
        )
    return None


def image_pull_is_permanent(message: str | None) -> bool:
    """The registry said the image does not exist or may not be pulled: no retry will fix it."""
    text = (message or "").lower()
    return any(marker in text for marker in PERMANENT_PULL_ERRORS)


def missing_executable(message: str | None) -> bool:
    """The image has no such executable (a custom image without the trainer): a configuration error."""
    return "executable file not found" in (message or "")


def _executable_not_found(message: str | None, **info: Any) -> Outcome:
    return Outcome(
        "ConfigError",
        "ExecutableNotFound",
        "the image has no trainer executable (spec.image must contain finetune-trainer): "
        f"{_tail(message) or 'executable file not found'}",
        **info,
    )


def image_pull_seconds(pod: PodView, now: datetime) -> float | None:
    """How long the pod has been trying to start its container (since the kubelet accepted it)."""
    since = pod.started or pod.created
    return None if since is None else max(0.0, (now - since).total_seconds())


def _node_trouble(pod: PodView) -> bool:
    """The kubelet rejected the pod at admission or evicted it (node pressure): an end that points at the
    node and, restarted at once, tends to repeat on the same node."""
    reason = pod.status_reason or ""
    return reason == "Evicted" or reason in ADMISSION_FAILURE_REASONS or reason.startswith("OutOf")


def node_restarted_since(node: NodeView | None, finished_at: datetime | None) -> bool:
    """The node went down and came back after the container ended (its Ready condition changed later):
    the container was killed with its node (spot VM restarted, kubelet crash), not by its own memory use."""
    if node is None or not node.exists or finished_at is None or node.ready_since is None:
        return False
    return node.ready_since >= finished_at - timedelta(seconds=2)


def _classify_terminated(
    pod: PodView, term: Terminated, grace_seconds: int | None, node: NodeView | None = None
) -> Outcome:
    msg = term.termination
    code = term.exit_code
    info: dict[str, Any] = {
        "exit_code": code,
        "step": msg.step if msg else None,
        "checkpoint_step": msg.checkpoint_step if msg else None,
        "batch": msg.per_device_train_batch_size if msg else None,
        "accumulation": msg.gradient_accumulation_steps if msg else None,
        "finished_at": term.finished_at,
    }
    disrupted = pod.disruption or (pod.status_reason if pod.status_reason in KUBELET_STOP_REASONS else None)
    during = f" during the emergency save after {disrupted}" if disrupted else ""
    if code == EXIT_SUCCEEDED and (msg is None or msg.reason == "Completed"):
        return Outcome("Completed", "Completed", "training finished; the final adapter is written", **info)
    if term.reason in START_FAILURE_REASONS or (code == 128 and msg is None):
        detail = _tail(term.message) or term.reason or "no detail"
        if missing_executable(term.message):
            return _executable_not_found(term.message, **info)
        return Outcome(
            "StartFailure",
            term.reason or f"ExitCode{code}",
            f"the container could not start on node {pod.node_name or '?'} (container runtime, GPU hook or "
            f"driver not ready): {detail}",
            node=pod.node_name,
            **info,
        )
    if term.reason == "OOMKilled":
        return Outcome(
            "HostOOM",
            "OOMKilled",
            f"the trainer was killed by the kernel's OOM killer (memory limit){during}",
            **info,
        )
    if code == EXIT_CUDA_OOM or (msg is not None and msg.reason == "CudaOOM"):
        batch = info["batch"]
        at = f" at per-device batch {batch}" if batch else ""
        return Outcome("CudaOOM", "CudaOOM", f"CUDA ran out of memory{at}{during}", **info)
    if code == EXIT_CONFIG_ERROR or (msg is not None and msg.reason == "ConfigError"):
        detail = (msg.message if msg else None) or _tail(term.message) or "no detail"
        return Outcome(
            "ConfigError", "ConfigError", f"the trainer rejected its configuration: {detail}", **info
        )
    if code == EXIT_NO_INTACT_CHECKPOINT or (msg is not None and msg.reason == "NoIntactCheckpoint"):
        detail = (msg.message if msg else None) or _tail(term.message) or "no detail"
        return Outcome(
            "NoIntactCheckpoint",
            "NoIntactCheckpoint",
            "every committed checkpoint on the volume is damaged; the trainer refused to resume and deleted "
            "nothing (a retry would find the same damage). To start over, re-create the job with "
            "spec.checkpoint.onNoIntactCheckpoint: restart (the volume is kept unless "
            f"checkpoint.deleteWithJob); damaged ones are then moved to damaged/ on the volume. {detail}",
            **info,
        )
    if code == EXIT_SUPERSEDED or (msg is not None and msg.reason == "Superseded"):
        # The current attempt found a NEWER attempt recorded on the volume: another writer uses this run
        # directory (two jobs on one claim, a manual run). It changed nothing there; restarting would loop.
        detail = (msg.message if msg else None) or _tail(term.message) or "no detail"
        return Outcome(
            "Superseded",
            "Superseded",
            "the trainer found a newer attempt recorded in its output directory and stopped without changing "
            f"anything: another writer uses this checkpoint directory. {detail}",
            **info,
        )
    if code == EXIT_VOLUME_FULL or (msg is not None and msg.reason == "VolumeFull"):
        # Before the preemption check: a save that failed for lack of space fails again on every attempt.
        detail = (msg.message if msg else None) or _tail(term.message) or "no detail"
        return Outcome("VolumeFull", "VolumeFull", detail, **info)
    if disrupted or pod.deleting:
        reason = disrupted or "PodDeleted"
        who = disrupted or "someone deleted the pod"
        if pod.status_reason == "Evicted" and pod.status_message:
            who = f"{who}: {pod.status_message.strip()}"
        if code == EXIT_KILLED:
            grace = f"{grace_seconds} s" if grace_seconds else "the grace period"
            text = (
                f"preempted ({who}) and killed after {grace} before the emergency checkpoint was committed: "
                "work since the last periodic checkpoint is lost "
                "(raise checkpoint.terminationGracePeriodSeconds)"
            )
        elif code == EXIT_PREEMPTED and msg is not None and msg.save_in_time is False:
            text = (
                f"preempted ({who}); the emergency checkpoint was not committed within the save deadline: "
                "resuming from the newest older checkpoint"
            )
        elif code == EXIT_PREEMPTED:
            text = f"preempted ({who}); the trainer committed an emergency checkpoint"
        else:
            text = f"preempted ({who}); the trainer exited {code}"
        return Outcome("Preempted", reason, text, node=pod.node_name, node_trouble=_node_trouble(pod), **info)
    if term.reason == "ContainerStatusUnknown" or (
        code == EXIT_KILLED and node_restarted_since(node, term.finished_at)
    ):
        return Outcome(
            "Preempted",
            "NodeRestarted",
            f"the trainer was killed with its node {pod.node_name or ''} (the node went down and came back): "
            "resuming from the last committed checkpoint",
            **info,
        )
    if code == EXIT_PREEMPTED:
        return Outcome(
            "Preempted",
            "SIGTERM",
            "the trainer was stopped by SIGTERM and committed an emergency checkpoint",
            **info,
        )
    if code == EXIT_KILLED:
        return Outcome(
            "HostOOM",
            "Killed",
            "the trainer was killed (exit 137, SIGKILL) with no disruption recorded: "
            "treated as out of memory",
            **info,
        )
    detail = (msg.message if msg else None) or _tail(term.message) or term.reason or "no detail"
    if code == EXIT_SUCCEEDED:
        return Outcome("Error", "Error", f"the trainer exited 0 without finishing: {detail}", **info)
    return Outcome("Error", f"ExitCode{code}", f"the trainer failed with exit code {code}: {detail}", **info)


def emergency_save_status(pod: PodView | None, outcome: Outcome, now: datetime) -> dict[str, Any] | None:
    """status.lastEmergencySave for a pod stopped by SIGTERM after training began; None for other ends.

    In time: the trainer committed its emergency checkpoint and says so (`save_in_time`). Late: its watchdog
    gave up at the save deadline (exit 75, `save_in_time` false), or the kubelet killed it first (exit 137
    during a disruption or deletion)."""
    term = pod.terminated if pod is not None else None
    if term is None or outcome.end != "Preempted":
        return None
    msg = term.termination
    ended = format_time(outcome.finished_at or now)
    if msg is None or msg.reason != "Preempted" or msg.save_in_time is None:
        if term.exit_code == EXIT_KILLED and pod is not None and (pod.disruption or pod.deleting):
            return {"step": None, "seconds": None, "deadlineSeconds": None, "inTime": False, "time": ended}
        return None  # stopped before training began, or a trainer that does not report it
    # The trainer's own word, even when the kubelet's SIGKILL came after it wrote it (exit 137).
    return {
        "step": msg.checkpoint_step if msg.save_in_time else None,
        "seconds": msg.save_seconds if msg.save_in_time else None,
        "deadlineSeconds": msg.save_deadline_seconds,
        "inTime": msg.save_in_time,
        "time": ended,
    }


def _late_save_event(save: dict[str, Any], pod_name: str | None, checkpoint_step: int | None) -> Event:
    deadline = f" of {save['deadlineSeconds']:g} s" if save.get("deadlineSeconds") else ""
    older = f"checkpoint-{checkpoint_step}" if checkpoint_step is not None else "the start"
    return Event(
        "Warning",
        "EmergencySaveLate",
        f"{pod_name or 'the trainer'}: the emergency checkpoint was not committed within the save deadline"
        f"{deadline}; resuming from {older}. If the nodes give more time, raise "
        "checkpoint.terminationGracePeriodSeconds or scheduling.preemptionNoticeSeconds; "
        "else save more often",
    )


def _tail(text: str | None, limit: int = 300) -> str | None:
    if not text:
        return None
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][-limit:] if lines else None


# ================================================================================== plan


@dataclass(frozen=True)
class Plan:
    action: Action_
    reason: str
    message: str
    cause: RestartCause | None = None
    delay_seconds: float = 0.0
    effective: EffectiveTraining | None = None  # new adaptations (None = unchanged)
    change: str | None = None  # human: "memory 512Mi → 768Mi"
    lost_steps: int = 0
    streak: int = 1  # ends in a row for this reason without training progress (this one included)
    avoid_node: str | None = None  # the next pod prefers other nodes than this one


def effective_memory(spec: FineTuneJobSpec, effective: EffectiveTraining | None) -> str | None:
    """The memory the next attempt gets: the OOM-adapted value, unless the user's `resources.memory` (which
    may have been raised since) is larger — an explicit raise is never overridden by an older adaptation."""
    adapted = effective.memory if effective is not None else None
    explicit = spec.resources.memory
    if adapted is None or explicit is None:
        return adapted or explicit
    return explicit if parse_quantity(explicit) >= parse_quantity(adapted) else adapted


def memory_cap(spec: FineTuneJobSpec) -> int | None:
    res = spec.resources
    if res.max_memory:
        return int(parse_quantity(res.max_memory))
    if res.memory:
        return int(parse_quantity(res.memory) * 2 * _dec(spec.restart_policy.oom_memory_factor))
    return None


def _dec(value: float) -> Any:
    from decimal import Decimal

    return Decimal(str(value))


def halve_batch(batch: int) -> int:
    """The largest divisor of `batch` that is at most half of it (so the effective batch stays exact)."""
    for candidate in range(batch // 2, 0, -1):
        if batch % candidate == 0:
            return candidate
    return 1


def lost_steps(status: FineTuneJobStatus, outcome: Outcome) -> int:
    """Steps trained in the ended attempt beyond its newest committed checkpoint (they will be redone)."""
    reported = status.step if status.step is not None and status.step != status.last_end_step else None
    candidates = [s for s in (reported, outcome.step) if s is not None]
    if not candidates:
        return 0
    last = max(candidates)
    committed = outcome.checkpoint_step
    if committed is None:
        committed = status.last_checkpoint_step
        if committed is None and status.last_checkpoint is not None:
            committed = status.last_checkpoint.step
    return max(0, last - (committed or 0))


def streak_after(status: FineTuneJobStatus, outcome: Outcome) -> int:
    """Ends in a row for `outcome.reason` (this one included) since the trainer last made progress."""
    previous = status.streak
    return previous.count + 1 if previous is not None and previous.reason == outcome.reason else 1


def storm_delay(policy: Any, streak: int) -> float:
    """The doubling backoff of a node-trouble end repeated `streak` times in a row (0 below STORM_AFTER)."""
    if streak < STORM_AFTER:
        return 0.0
    return float(min(policy.max_backoff_seconds, policy.backoff_seconds * 2 ** (streak - STORM_AFTER)))


def plan_next(spec: FineTuneJobSpec, status: FineTuneJobStatus, outcome: Outcome) -> Plan:
    """What to do after `outcome`, given the budgets and adaptations already recorded in `status`."""
    plan = _plan(spec, status, outcome)
    streak = streak_after(status, outcome)
    return replace(plan, streak=streak) if plan.action in ("restart", "fail") else plan


def _plan(spec: FineTuneJobSpec, status: FineTuneJobStatus, outcome: Outcome) -> Plan:
    policy = spec.restart_policy
    restarts = status.restarts
    effective = status.effective
    lost = 0 if outcome.end == "Completed" else lost_steps(status, outcome)
    streak = streak_after(status, outcome)

    if outcome.end == "Completed":
        return Plan("succeed", "Completed", outcome.message)
    if spec.suspend:
        return Plan("stop", "Suspended", f"suspended (spec.suspend): {outcome.message}", lost_steps=lost)
    if outcome.end in ("ConfigError", "Unschedulable", "NoIntactCheckpoint", "Superseded"):
        return Plan("fail", outcome.reason, outcome.message, lost_steps=lost)
    if outcome.end == "VolumeFull":
        return Plan("fail", "VolumeFull", f"{outcome.message}; {volume_full_advice(spec)}", lost_steps=lost)

    if outcome.end == "Preempted":
        if restarts.preemption >= policy.max_preemptions:
            return Plan(
                "fail",
                "PreemptionBudgetExhausted",
                f"{outcome.message}; restartPolicy.maxPreemptions={policy.max_preemptions} reached",
                lost_steps=lost,
            )
        if not outcome.node_trouble:  # drain, taint, priority preemption, spot reclaim: never wait
            return Plan(
                "restart",
                outcome.reason,
                f"{outcome.message}; restarting now",
                cause="preemption",
                lost_steps=lost,
            )
        delay = storm_delay(policy, streak)
        when = f"restarting in {delay:g} s ({streak} in a row)" if delay else "restarting now"
        return Plan(
            "restart",
            outcome.reason,
            f"{outcome.message}; {when}",
            cause="preemption",
            delay_seconds=delay,
            lost_steps=lost,
            avoid_node=outcome.node,
        )

    if outcome.end == "StartFailure":
        if restarts.infrastructure >= policy.max_infrastructure_restarts:
            return Plan(
                "fail",
                "InfrastructureBudgetExhausted",
                f"{outcome.message}; restartPolicy.maxInfrastructureRestarts="
                f"{policy.max_infrastructure_restarts} reached",
                lost_steps=lost,
            )
        delay = min(float(policy.max_backoff_seconds), policy.backoff_seconds * 2.0 ** (streak - 1))
        avoid = f", preferring another node than {outcome.node}" if outcome.node else ""
        return Plan(
            "restart",
            outcome.reason,
            f"{outcome.message}; a new pod in {delay:g} s{avoid}",
            cause="infrastructure",
            delay_seconds=delay,
            lost_steps=lost,
            avoid_node=outcome.node,
        )

    if outcome.end in ("HostOOM", "CudaOOM"):
        used = restarts.host_oom + restarts.cuda_oom
        if used >= policy.max_oom_restarts:
            return Plan(
                "fail",
                "OOMBudgetExhausted",
                f"{outcome.message}; restartPolicy.maxOomRestarts={policy.max_oom_restarts} reached",
                lost_steps=lost,
            )
        if outcome.end == "HostOOM":
            return _plan_host_oom(spec, effective, outcome, lost)
        return _plan_cuda_oom(spec, effective, outcome, lost)

    # Error
    if restarts.error >= policy.max_failures:
        return Plan(
            "fail",
            "FailureBudgetExhausted",
            f"{outcome.message}; restartPolicy.maxFailures={policy.max_failures} reached",
            lost_steps=lost,
        )
    delay = min(float(policy.max_backoff_seconds), policy.backoff_seconds * (2.0**restarts.error))
    return Plan(
        "restart",
        outcome.reason,
        f"{outcome.message}; retrying in {delay:g} s",
        cause="error",
        delay_seconds=delay,
        lost_steps=lost,
    )


def volume_full_advice(spec: FineTuneJobSpec) -> str:
    """What the user can change when the checkpoint volume is full (retrying alone fails the same way)."""
    ckpt, limit = spec.checkpoint, spec.training.save_total_limit
    keep = "lower spec.training.save_total_limit" + (f" (now {limit})" if limit else " (now unlimited)")
    if ckpt.existing_claim_name:
        grow = f"grow the PersistentVolumeClaim {ckpt.existing_claim_name} (checkpoint.existingClaimName)"
    else:
        grow = f"raise spec.checkpoint.volumeSize (now {ckpt.volume_size})"
    return f"{grow} or {keep}; the committed checkpoints on the volume are intact"


def _plan_host_oom(spec: FineTuneJobSpec, effective: EffectiveTraining, outcome: Outcome, lost: int) -> Plan:
    current_text = effective_memory(spec, effective)
    if current_text is None:
        return Plan(
            "restart",
            outcome.reason,
            f"{outcome.message}; no memory limit is set (resources.memory), restarting unchanged",
            cause="hostOOM",
            lost_steps=lost,
        )
    current = int(parse_quantity(current_text))
    cap = memory_cap(spec)
    assert cap is not None
    if current >= cap:
        return Plan(
            "fail",
            "OOMAtMemoryCap",
            f"{outcome.message} at {current_text}, the memory cap (resources.maxMemory): "
            "raise resources.maxMemory or lower training.per_device_train_batch_size",
            lost_steps=lost,
        )
    factor = _dec(spec.restart_policy.oom_memory_factor)
    raised = min(cap, math.ceil(current * factor))
    new_text = format_bytes(raised)
    if parse_quantity(new_text) > cap:  # rounding up to whole Mi may pass a non-Mi cap
        new_text = format_bytes(cap)
    change = f"memory {current_text} → {new_text}"
    return Plan(
        "restart",
        outcome.reason,
        f"{outcome.message}; restarting with {change}",
        cause="hostOOM",
        effective=effective.model_copy(update={"memory": new_text}),
        change=change,
        lost_steps=lost,
    )


def _plan_cuda_oom(spec: FineTuneJobSpec, effective: EffectiveTraining, outcome: Outcome, lost: int) -> Plan:
    batch = (
        outcome.batch or effective.per_device_train_batch_size or spec.training.per_device_train_batch_size
    )
    accumulation = (
        outcome.accumulation
        or effective.gradient_accumulation_steps
        or spec.training.gradient_accumulation_steps
    )
    if batch <= 1:
        return Plan(
            "fail",
            "CudaOOMAtBatchOne",
            f"{outcome.message}: the per-device batch is already 1 and cannot be halved; use a GPU with more "
            "memory, shorter training.max_length, or gradient_checkpointing",
            lost_steps=lost,
        )
    new_batch = halve_batch(batch)
    new_accumulation = accumulation * batch // new_batch
    change = (
        f"per-device batch {batch} → {new_batch}, gradient accumulation {accumulation} → {new_accumulation} "
        f"(effective batch {batch * accumulation} unchanged)"
    )
    return Plan(
        "restart",
        outcome.reason,
        f"{outcome.message}; restarting with {change}",
        cause="cudaOOM",
        effective=effective.model_copy(
            update={"per_device_train_batch_size": new_batch, "gradient_accumulation_steps": new_accumulation}
        ),
        change=change,
        lost_steps=lost,
    )


# ================================================================================== status patches

_CONDITION_TYPES = ("Running", "Complete", "Failed", "Suspended")


def conditions_for(
    phase: Phase, reason: str, message: str, now: datetime, existing: list[Condition]
) -> list[dict[str, Any]]:
    """The job's conditions for `phase`, keeping lastTransitionTime where a status did not change."""
    wanted = {
        "Running": "True" if phase == "Running" else "False",
        "Complete": "True" if phase == "Succeeded" else "False",
        "Failed": "True" if phase == "Failed" else "False",
        "Suspended": "True" if phase == "Suspended" else "False",
    }
    old = {c.type: c for c in existing}
    out = []
    for kind in _CONDITION_TYPES:
        status = wanted[kind]
        previous = old.get(kind)
        changed = previous is None or previous.status != status
        since = format_time(now) if changed or not previous else previous.last_transition_time
        entry: dict[str, Any] = {"type": kind, "status": status, "lastTransitionTime": since}
        if status == "True" or changed:
            entry["reason"] = reason
            entry["message"] = message[:1024]
        elif previous is not None:
            entry["reason"] = previous.reason
            entry["message"] = previous.message
        out.append(entry)
    return out


def phase_patch(
    status: FineTuneJobStatus, phase: Phase, reason: str, message: str, now: datetime
) -> dict[str, Any]:
    patch: dict[str, Any] = {
        "phase": phase,
        "reason": reason,
        "message": message[:1024],
        "conditions": conditions_for(phase, reason, message, now, status.conditions),
    }
    if phase in ("Succeeded", "Failed"):
        patch["completionTime"] = format_time(now)
        patch["nextAttemptTime"] = None
    return patch


def decision_patch(
    status: FineTuneJobStatus, outcome: Outcome, plan: Plan, pod_name: str | None, now: datetime
) -> dict[str, Any]:
    """The one status patch that records a decision: counters, budgets, adaptations, the pending step."""
    phase: Phase = {"restart": "Restarting", "fail": "Failed", "succeed": "Succeeded", "stop": "Suspended"}[
        plan.action
    ]  # type: ignore[assignment]
    patch = phase_patch(status, phase, plan.reason, plan.message, now)
    ended = outcome.finished_at or now
    patch["lastPodEndTime"] = format_time(ended)
    patch["lastEndStep"] = status.step
    # nothing trains until the next attempt reports: no estimate (the last measured rate stays)
    patch["estimatedRemainingSeconds"] = None
    patch["remaining"] = None
    if plan.lost_steps:
        patch["lostSteps"] = status.lost_steps + plan.lost_steps
    if plan.cause is not None:
        counts = status.restarts.model_dump(by_alias=True)
        counts[plan.cause] += 1  # the causes are the counters' wire names
        patch["restarts"] = counts
        patch["restartsTotal"] = sum(counts.values())
    if plan.effective is not None:
        patch["effective"] = plan.effective.model_dump(by_alias=True)
    if plan.action in ("restart", "fail"):
        patch["streak"] = {"reason": outcome.reason, "count": plan.streak}
    if plan.action == "restart":
        not_before = now + timedelta(seconds=plan.delay_seconds)
        patch["pending"] = {
            "action": "restart",
            "cause": plan.cause,
            "reason": plan.reason,
            "message": plan.message[:1024],
            "podName": pod_name or "",
            "notBefore": format_time(not_before),
            "avoidNode": plan.avoid_node,
        }
        patch["nextAttemptTime"] = format_time(not_before)
    else:
        patch["pending"] = None
    if plan.action == "succeed" and outcome.step is not None:
        patch["step"] = max(outcome.step, status.step or 0)
    return patch


# ================================================================================== reconcile


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


Action = (
    CreatePod | AdoptPod | DeletePod | ReleasePod | PatchStatus | Event | AnnotatePod | Decided | Recovered
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


@dataclass
class Step:
    actions: list[Action] = field(default_factory=list)
    requeue_seconds: float | None = None  # look again after this long even without events

    def requeue(self, seconds: float) -> None:
        seconds = max(0.0, seconds)
        self.requeue_seconds = seconds if self.requeue_seconds is None else min(self.requeue_seconds, seconds)


#: While a pod runs, look again this often even without events. A dead node sends no events itself, but
#: the node controller marks its pods not Ready (a pod event), and from then on `reconcile` asks to look
#: again exactly when the node will count as lost; this is only a safety net.
WATCH_NODE_SECONDS = 30.0


def pod_name(job: str, attempt: int) -> str:
    return f"{job}-{attempt}"


def _cleanup_pod(step: Step, pod: PodView, world: World) -> None:
    """Drop a pod that is no longer the job's current attempt (ended or to be stopped)."""
    node = world.nodes.get(pod.node_name or "")
    lost = bool(pod.node_name) and node_lost(node, world.now, world.node_lost_seconds, world.shared_volume)
    if pod.tracked and (pod.ended or pod.deleting or lost or not pod.node_name):
        step.actions.append(ReleasePod(pod.name))
    if not pod.deleting:
        force = pod.ended or lost or not pod.node_name
        step.actions.append(DeletePod(pod.name, grace_seconds=0 if force else None, force=force))
    elif lost:
        step.actions.append(DeletePod(pod.name, grace_seconds=0, force=True))
    elif pod.ended and (pod.deletion_grace_seconds or 0) > 0:
        # The kubelet reported the trainer stopped: finish the deletion now instead of waiting for the
        # kubelet's own final delete (saves up to a second on every preemption).
        step.actions.append(DeletePod(pod.name, grace_seconds=0, force=True))
    elif not _say_why_waiting_for_node(step, pod, world):
        _requeue_for_node(step, pod, world)


def _say_why_waiting_for_node(step: Step, pod: PodView, world: World) -> bool:
    """A pod on an unreachable node with a shared volume: status and one Warning Event say why nothing moves
    and what an admin can do. True when that is the case."""
    node = world.nodes.get(pod.node_name or "")
    if node is None or not node_unconfirmed(node, world.now, world.node_lost_seconds, world.shared_volume):
        return False
    text = node_unreachable_message(pod, node)[:1024]
    if (world.status.reason, world.status.message) != (NODE_UNREACHABLE, text):
        step.actions.append(PatchStatus({"reason": NODE_UNREACHABLE, "message": text}))
        step.actions.append(Event("Warning", NODE_UNREACHABLE, text))
    step.requeue(WATCH_NODE_SECONDS)  # a taint or the Node's deletion sends no pod event
    return True


def _requeue_for_node(step: Step, pod: PodView, world: World) -> None:
    """Look again when the pod's unready node will count as lost (and at least every WATCH_NODE_SECONDS)."""
    node = world.nodes.get(pod.node_name or "")
    if node is not None and node.exists and node.ready != "True" and node.ready_since is not None:
        left = world.node_lost_seconds - (world.now - node.ready_since).total_seconds()
        step.requeue(left + 0.5)
    step.requeue(WATCH_NODE_SECONDS)


def _create_next(world: World, step: Step, phase: Phase, reason: str, message: str) -> None:
    status = world.status
    attempt = status.attempt + 1
    name = pod_name(world.name, attempt)
    directory = run_directory(world.uid, status)
    existing = {p.name: p for p in world.pods}
    patch = phase_patch(status, phase, reason, message, world.now)
    patch.update({"attempt": attempt, "podName": name, "pending": None, "nextAttemptTime": None})
    if status.start_time is None:
        patch["startTime"] = format_time(world.now)
    if status.run_directory != directory:
        patch["runDirectory"] = directory
    if status.started_from is None:  # the trainer names the exact checkpoint once it has chosen one
        patch["startedFrom"] = world.spec.checkpoint.resume_from or "fresh"
    if name in existing and (not existing[name].owner_uids or world.uid in existing[name].owner_uids):
        step.actions.append(AdoptPod(name, patch))
        return
    others = list(world.pods)  # incl. a pod with our name left by an earlier job of the same name
    if others:  # single writer: wait until every older pod is gone, not merely terminating
        for pod in others:
            _cleanup_pod(step, pod, world)
        step.requeue(WATCH_NODE_SECONDS)
        return
    blocked = claim_blocker(world.claim, world.uid)
    if blocked is not None:
        _wait_for_claim(world, step, blocked)
        return
    how = f"run directory {directory}"
    if status.last_checkpoint is None and world.spec.checkpoint.resume_from:
        how += f", continuing from {world.spec.checkpoint.resume_from} if it has no checkpoint yet"
    step.actions.append(
        CreatePod(
            attempt, directory, patch, "AttemptCreated", f"created pod {name} (attempt {attempt}, {how})"
        )
    )


#: How often a job waiting for its previous claim to go looks again (the claim's deletion sends no job event).
CLAIM_RECHECK_SECONDS = 2.0


def _wait_for_claim(world: World, step: Step, text: str) -> None:
    status = world.status
    step.requeue(CLAIM_RECHECK_SECONDS)
    if (status.reason, status.message) == ("WaitingForClaim", text):
        return  # already shown, Event posted
    if status.phase is None:
        step.actions.append(PatchStatus(phase_patch(status, "Pending", "WaitingForClaim", text, world.now)))
    else:
        step.actions.append(PatchStatus({"reason": "WaitingForClaim", "message": text}))
    step.actions.append(Event("Normal", "WaitingForClaim", text))


def reconcile(world: World) -> Step:
    """One step towards the job's desired state. Re-run on fresh state after executing the actions."""
    step = Step()
    status, spec, now = world.status, world.spec, world.now
    pods = {p.name: p for p in world.pods}

    if status.observed_generation != world.generation:
        step.actions.append(PatchStatus({"observedGeneration": world.generation}))

    # --- finished jobs: keep the last pod for `kubectl logs`, stop anything still running ----------
    if status.phase in ("Succeeded", "Failed"):
        for pod in world.pods:
            if not pod.ended and not pod.deleting:
                step.actions.append(DeletePod(pod.name))
            elif pod.tracked and (pod.ended or pod.deleting):
                step.actions.append(ReleasePod(pod.name))
        return step

    # --- a recorded decision still being carried out --------------------------------------------------
    pending = status.pending
    if pending is not None and pending.action == "restart":
        old = pods.get(pending.pod_name)
        if old is not None:
            _cleanup_pod(step, old, world)
            return step
        if spec.suspend:
            step.actions.append(PatchStatus({"pending": None, "nextAttemptTime": None}))
            step.actions.append(
                PatchStatus(phase_patch(status, "Suspended", "Suspended", "suspended (spec.suspend)", now))
            )
            return step
        not_before = parse_time(pending.not_before)
        if (
            not_before is not None
            and now < not_before
            and not pods.get(pod_name(world.name, status.attempt + 1))
        ):
            step.requeue((not_before - now).total_seconds())
            return step
        _create_next(world, step, "Restarting", pending.reason, pending.message or pending.reason)
        return step

    current = pods.get(status.pod_name) if status.pod_name else None

    # --- suspension -----------------------------------------------------------------------------------
    if spec.suspend:
        if status.phase == "Suspended" or current is None:
            for pod in world.pods:
                _cleanup_pod(step, pod, world)
            if status.phase != "Suspended":
                step.actions.append(
                    PatchStatus(
                        phase_patch(status, "Suspended", "Suspended", "suspended (spec.suspend)", now)
                    )
                )
                step.actions.append(Event("Normal", "Suspended", "job suspended (spec.suspend)"))
            return step
        if not current.ended and not current.deleting:
            node = world.nodes.get(current.node_name or "")
            if current.node_name is None or node_lost(
                node, now, world.node_lost_seconds, world.shared_volume
            ):
                step.actions.append(DeletePod(current.name, grace_seconds=0, force=True))
            else:
                step.actions.append(DeletePod(current.name))
            step.actions.append(
                Event("Normal", "Suspending", f"spec.suspend: stopping {current.name} (emergency checkpoint)")
            )
            step.actions.append(
                PatchStatus({"message": "suspending: waiting for the trainer's emergency checkpoint"})
            )
            return step
        # the current pod is stopping or stopped: classified below, and the plan is "stop"

    # --- no attempt yet, or resuming after a suspension --------------------------------------------------
    if status.pod_name is None:
        _create_next(world, step, "Pending", "Created", "creating the first trainer pod")
        return step
    if status.phase == "Suspended":
        _create_next(world, step, "Pending", "Resumed", "resumed (spec.suspend is false)")
        return step

    # --- the current attempt -----------------------------------------------------------------------------
    node = world.nodes.get(current.node_name or "") if current is not None else None
    outcome = classify_end(
        current,
        node,
        now,
        pending_timeout_seconds=spec.restart_policy.pending_timeout_seconds,
        node_lost_seconds=world.node_lost_seconds,
        grace_seconds=spec.checkpoint.termination_grace_period_seconds,
        image_pull_timeout_seconds=spec.restart_policy.image_pull_timeout_seconds,
        shared_volume=world.shared_volume,
    )
    for pod in world.pods:  # strays (an older attempt left behind): clean up, they block the next attempt
        if pod.name != status.pod_name:
            _cleanup_pod(step, pod, world)

    if outcome is None:
        assert current is not None
        _while_running(world, current, step)
        return step

    plan = plan_next(spec, status, outcome)
    patch = decision_patch(status, outcome, plan, status.pod_name, now)
    save = emergency_save_status(current, outcome, now)
    if save is not None:
        patch["lastEmergencySave"] = save
        if not save["inTime"]:
            patch["lateEmergencySaves"] = status.late_emergency_saves + 1
            step.actions.append(_late_save_event(save, status.pod_name, outcome.checkpoint_step))
    step.actions.append(PatchStatus(patch))
    step.actions.append(Decided(outcome, plan))
    step.actions.append(_event_for(status, outcome, plan))
    if plan.action == "restart" and plan.streak >= STORM_AFTER:
        where = f" on node {outcome.node}" if outcome.node else ""
        wait = f"waiting {plan.delay_seconds:g} s" if plan.delay_seconds else "restarting at once"
        step.actions.append(
            Event(
                "Warning",
                "RestartStorm",
                f"{plan.streak} pod ends in a row for {outcome.reason}{where} without training progress: "
                f"{wait}" + (", preferring another node" if plan.avoid_node else ""),
            )
        )
    if current is not None and plan.action in ("fail", "succeed", "stop"):
        if current.tracked:
            step.actions.append(ReleasePod(current.name))
        if not current.ended and not current.deleting:
            step.actions.append(
                DeletePod(
                    current.name,
                    grace_seconds=0 if outcome.force_delete else None,
                    force=outcome.force_delete,
                )
            )
        elif outcome.force_delete:
            step.actions.append(DeletePod(current.name, grace_seconds=0, force=True))
    return step


# ================================================================================== create refused


#: How often a job waiting for something that may appear later (a PriorityClass, quota) tries again.
REFUSAL_RECHECK_SECONDS = 15.0


@dataclass(frozen=True)
class Refusal:
    """The apiserver refused to create one of the attempt's objects (read from its Status answer)."""

    kind: str  # Pod, ConfigMap, PersistentVolumeClaim, ...
    name: str
    code: int  # HTTP status
    reason: str  # Status.reason: Invalid, Forbidden, BadRequest, RequestEntityTooLarge, ...
    message: str


def refusal_from_response(kind: str, name: str, code: int, body: str | bytes | None) -> Refusal:
    """Read the apiserver's Status body (JSON) into a Refusal; a body that is not JSON is the message."""
    text = body.decode(errors="replace") if isinstance(body, bytes) else (body or "")
    reason, message = "", text.strip()
    with contextlib.suppress(ValueError, TypeError, AttributeError):
        status = json.loads(text)
        reason = str(status.get("reason") or "")
        message = str(status.get("message") or message)
    return Refusal(kind=kind, name=name, code=code, reason=reason, message=message)


RefusalVerdict = Literal["fail", "wait", "retry"]


def judge_refusal(refusal: Refusal) -> tuple[RefusalVerdict, str]:
    """Will creating this object ever work without a change to the job? → (verdict, status reason).

    - wait: something outside the job may still change: a PriorityClass created later, quota freed by
      other workloads or raised, RBAC granted to the operator. The job stays visible as waiting and the
      operator tries again every REFUSAL_RECHECK_SECONDS.
    - fail: the object itself is refused (422 Invalid, 400, 413, an admission policy or webhook saying no):
      retrying the same spec cannot help, so the job fails with the apiserver's words.
    - retry: the apiserver is unavailable or throttling (429, 5xx, timeouts): the loop's own backoff.
    """
    text = refusal.message.lower()
    if refusal.code == 403:
        if "no priorityclass with name" in text:
            return "wait", "PriorityClassNotFound"
        if "exceeded quota" in text or "for quota" in text:  # "status unknown for quota": just created
            return "wait", "QuotaExceeded"
        if "cannot create resource" in text:  # RBAC: the operator's own permissions, fixable by an admin
            return "wait", "OperatorForbidden"
        if "because it is being terminated" in text:
            # The namespace is going away and the job with it: not the job's failure. Waiting keeps the
            # loop alive, so it sees the job's deletion and releases its finalizers promptly.
            return "wait", "NamespaceTerminating"
        return "fail", "CreateRefused"
    if refusal.code in (400, 413, 422):
        return "fail", "CreateRefused"
    return "retry", ""


def refused_step(world: World, refusal: Refusal) -> Step:
    """What the job shows after the apiserver refused to create its next attempt's `refusal.kind`.

    Nothing was created for the attempt, so the attempt counter and pod name stay as they were and the
    next pass tries the same creation again (after REFUSAL_RECHECK_SECONDS for `wait`).
    """
    step = Step()
    verdict, reason = judge_refusal(refusal)
    if verdict == "retry":
        return step
    status = world.status
    what = f"the apiserver refused to create {refusal.kind} {refusal.name}: {refusal.message}"
    if verdict == "fail":
        patch = phase_patch(status, "Failed", reason, what, world.now)
        patch.update({"pending": None})
        step.actions.append(PatchStatus(patch))
        step.actions.append(Event("Warning", reason, f"job failed: {what}"[:1024]))
        return step
    text = f"waiting: {what} (trying again every {REFUSAL_RECHECK_SECONDS:g} s)"[:1024]
    step.requeue(REFUSAL_RECHECK_SECONDS)
    if status.reason == reason and status.message == text:
        return step  # already shown (and its Event posted): do not repeat it every recheck
    if status.phase is None:
        step.actions.append(PatchStatus(phase_patch(status, "Pending", reason, text, world.now)))
    else:  # Restarting / Suspended (resuming): keep the phase and its pending decision, say why
        step.actions.append(PatchStatus({"reason": reason, "message": text}))
    step.actions.append(Event("Warning", reason, text))
    return step


def _event_for(status: FineTuneJobStatus, outcome: Outcome, plan: Plan) -> Event:
    pod = status.pod_name or "the trainer pod"
    if plan.action == "restart":
        text = f"{pod} ended ({outcome.reason}): {plan.message}"
        if plan.lost_steps:
            text += f"; {plan.lost_steps} steps since the last committed checkpoint will be redone"
        return Event(
            "Warning" if plan.cause != "preemption" else "Normal", f"Restart{_cap(plan.cause)}", text
        )
    if plan.action == "fail":
        return Event("Warning", plan.reason, f"job failed: {plan.message}")
    if plan.action == "succeed":
        return Event("Normal", "Succeeded", f"{pod}: {plan.message}")
    return Event("Normal", "Suspended", f"{pod} stopped: {plan.message}")


def _cap(cause: str | None) -> str:
    return (cause or "")[:1].upper() + (cause or "")[1:]


def _while_running(world: World, pod: PodView, step: Step) -> None:
    status, now = world.status, world.now
    if _say_why_waiting_for_node(step, pod, world):
        return
    if status.reason == NODE_UNREACHABLE:
        step.actions.append(
            PatchStatus(
                {"reason": "NodeReady", "message": f"node {pod.node_name} is back; {pod.name} carries on"}
            )
        )
    if pod.running and status.phase in (None, "Pending"):
        step.actions.append(
            PatchStatus(phase_patch(status, "Running", "TrainerRunning", f"{pod.name} is running", now))
        )
    elif (
        status.phase == "Restarting"
        and pod.running
        and status.step is not None
        and (status.step != status.last_end_step)
    ):
        step.actions.append(
            PatchStatus(
                phase_patch(
                    status, "Running", "Resumed", f"{pod.name} is training again (step {status.step})", now
                )
            )
        )
        if status.streak is not None:  # training again: the restart storm (if any) is over
            step.actions.append(PatchStatus({"streak": None}))
        ended = parse_time(status.last_pod_end_time)
        if ended is not None:
            step.actions.append(Recovered(max(0.0, (now - ended).total_seconds())))
    elif status.phase in (None, "Pending", "Restarting") and pod.unschedulable_since is not None:
        # the scheduler's words replace "restarting now" while a replacement has no node
        text = f"waiting for a node: {pod.unschedulable_message or 'unschedulable'}"
        if status.message != text[:1024]:
            step.actions.append(PatchStatus({"message": text[:1024], "reason": "Unschedulable"}))
    if pod.waiting_reason in IMAGE_PULL_WAITING_REASONS | CREATE_WAITING_REASONS:
        _waiting_to_start(world, pod, step)
    ckpt = status.last_checkpoint
    if ckpt is not None and ckpt.time and pod.annotations.get(ANNOTATION_LAST_CHECKPOINT) != ckpt.time:
        step.actions.append(
            AnnotatePod(
                pod.name,
                {ANNOTATION_LAST_CHECKPOINT: ckpt.time, ANNOTATION_LAST_CHECKPOINT_STEP: str(ckpt.step)},
            )
        )
    timeout = world.spec.restart_policy.pending_timeout_seconds
    if pod.unschedulable_since is not None and timeout > 0:
        step.requeue(timeout - (now - pod.unschedulable_since).total_seconds() + 0.5)
    if pod.node_name:
        _requeue_for_node(step, pod, world)


def _waiting_to_start(world: World, pod: PodView, step: Step) -> None:
    """The kubelet retries a failed pull (or container creation): say so in status, and look again when
    the wait runs out."""
    status, timeout = world.status, world.spec.restart_policy.image_pull_timeout_seconds
    bound = f"up to {timeout} s (restartPolicy.imagePullTimeoutSeconds)" if timeout else "without a bound"
    what = (
        "image cannot be pulled"
        if pod.waiting_reason in IMAGE_PULL_WAITING_REASONS
        else "container cannot be created"
    )
    text = f"the trainer {what} yet, retrying {bound}: {pod.waiting_message or ''}".strip()
    if (status.reason, status.message) != (pod.waiting_reason, text[:1024]):
        step.actions.append(PatchStatus({"reason": pod.waiting_reason, "message": text[:1024]}))
    waited = image_pull_seconds(pod, world.now)
    if timeout and waited is not None:
        step.requeue(timeout - waited + 0.5)
