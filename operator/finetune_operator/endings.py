"""Why did a trainer pod end? `classify_end(pod, node, ...)` → `Outcome` (None while the pod may still run).

Each row of design.md §3's table ("why a pod ended → what next", left half): the trainer's exit code and
termination message, the kubelet's reasons, DisruptionTarget conditions, waiting reasons (image pulls,
container creation), and the node rule (`node_lost`: when a pod's node is gone and its pod may be
force-deleted). Pure: views in, an Outcome out; what to do about it is policy.py's.

Over 400 lines: one table of every way a trainer pod ends, with the Kubernetes facts each reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
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
)

from finetune_operator.names import format_time
from finetune_operator.views import OUT_OF_SERVICE_TAINT, NodeView, PodView, Terminated

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


def _tail(text: str | None, limit: int = 300) -> str | None:
    if not text:
        return None
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][-limit:] if lines else None
