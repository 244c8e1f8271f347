"""Kubernetes JSON → views: the few facts the decisions need, read from a Pod, Node or PVC as the API
returns it (camelCase dicts). handlers.py reads the objects and assembles the `World` from these views;
nothing here talks to the API or decides anything.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from finetune_api.contract import TerminationMessage
from pydantic import ValidationError

from finetune_operator.names import LABEL_ATTEMPT, POD_FINALIZER, TRAINER_CONTAINER, parse_time

#: Kubernetes' non-graceful node shutdown signal: an admin confirms the node is down (its pods may go).
OUT_OF_SERVICE_TAINT = "node.kubernetes.io/out-of-service"


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


def volume_shared(access_modes: list[str]) -> bool:
    """A claim with these access modes can be written from several nodes at once."""
    return "ReadWriteMany" in access_modes
