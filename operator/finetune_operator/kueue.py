"""Kueue (issue 15, docs/operator.md "Kueue"): the Workload the operator owns per queued FineTuneJob.

Pure: the labels that put a job under Kueue, the Workload manifest (its one podSet is the trainer pod the
next attempt gets), the view of a Workload as the API returns it, the node placement an admission's
ResourceFlavors give the trainer pod, and the two status writes the owner of a Workload makes (give the
reservation back after an eviction; Finished). handlers.py reads, executor.py writes; decisions.py decides
with `WorkloadView`s.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from finetune_operator.names import format_time

GROUP = "kueue.x-k8s.io"
VERSION = "v1beta2"
PLURAL = "workloads"
#: On the FineTuneJob: the LocalQueue (Kueue's own label for every integration).
LABEL_QUEUE_NAME = "kueue.x-k8s.io/queue-name"
#: On the FineTuneJob: a WorkloadPriorityClass (Kueue's label).
LABEL_PRIORITY_CLASS = "kueue.x-k8s.io/priority-class"
#: On the Workload: a hash of the trainer pod's resources it asks quota for (a change replaces it).
ANNOTATION_RESOURCES = "finetune.dev/trainer-resources"
PODSET = "trainer"
PRIORITY_CLASSES = "workloadpriorityclasses"
RESOURCE_FLAVORS = "resourceflavors"


def workload_name(job: str) -> str:
    return f"{job}-kueue"[:253]


def resources_key(resources: dict[str, Any]) -> str:
    """A short stable key of a container's `resources` (requests and limits)."""
    return hashlib.sha256(json.dumps(resources, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class WorkloadView:
    """The facts of a job's Workload the decisions need. `exists=False`: there is none."""

    name: str
    exists: bool = False
    deleting: bool = False
    queue: str | None = None
    resources_key: str | None = None
    quota_reserved: bool = False
    admitted: bool = False
    cluster_queue: str | None = None
    flavors: tuple[str, ...] = ()  # the ResourceFlavors the admission assigned to the trainer's podSet
    inadmissible: str | None = (
        None  # Kueue's message when it cannot queue it (QuotaReserved False, Inadmissible)
    )
    evicted: str | None = None  # reason of a True Evicted condition (Preempted, Deactivated, ...)
    evicted_message: str | None = None
    finished: bool = False
    active: bool = True
    generation: int = 0
    conditions: tuple[dict[str, Any], ...] = ()


def _true(conditions: list[dict[str, Any]], ctype: str) -> dict[str, Any] | None:
    for c in conditions:
        if c.get("type") == ctype and c.get("status") == "True":
            return c
    return None


def workload_view(name: str, obj: dict[str, Any] | None) -> WorkloadView:
    if obj is None:
        return WorkloadView(name=name)
    meta, spec, status = obj.get("metadata") or {}, obj.get("spec") or {}, obj.get("status") or {}
    conditions = list(status.get("conditions") or [])
    evicted = _true(conditions, "Evicted")
    reserved: dict[str, Any] = next((c for c in conditions if c.get("type") == "QuotaReserved"), {})
    inadmissible = reserved.get("status") == "False" and reserved.get("reason") == "Inadmissible"
    admission = status.get("admission") or {}
    assigned: set[str] = set()
    for podset in admission.get("podSetAssignments") or []:
        if podset.get("name") == PODSET:
            assigned.update(str(f) for f in (podset.get("flavors") or {}).values() if f)
    return WorkloadView(
        name=name,
        exists=True,
        deleting=bool(meta.get("deletionTimestamp")),
        queue=spec.get("queueName"),
        resources_key=(meta.get("annotations") or {}).get(ANNOTATION_RESOURCES),
        quota_reserved=_true(conditions, "QuotaReserved") is not None,
        admitted=_true(conditions, "Admitted") is not None,
        cluster_queue=admission.get("clusterQueue"),
        flavors=tuple(sorted(assigned)),
        inadmissible=(reserved.get("message") or "no detail") if inadmissible else None,
        evicted=(evicted.get("reason") or "Evicted") if evicted else None,
        evicted_message=evicted.get("message") if evicted else None,
        finished=_true(conditions, "Finished") is not None,
        active=spec.get("active", True) is not False,
        generation=int(meta.get("generation") or 0),
        conditions=tuple(conditions),
    )


def build_workload(
    job_name: str,
    namespace: str,
    job_uid: str,
    queue: str,
    priority_class: str | None,
    pod: dict[str, Any],
    priority: int | None = None,
) -> dict[str, Any]:
    """The Workload for the job's next attempt: one podSet, the trainer pod as builders.build_pod makes it."""
    pod_meta, pod_spec = pod.get("metadata") or {}, pod.get("spec") or {}
    trainer = (pod_spec.get("containers") or [{}])[0]
    meta: dict[str, Any] = {
        "name": workload_name(job_name),
        "namespace": namespace,
        "labels": {LABEL_QUEUE_NAME: queue, "finetune.dev/job": job_name},
        "annotations": {ANNOTATION_RESOURCES: resources_key(trainer.get("resources") or {})},
        "ownerReferences": [
            {
                "apiVersion": "finetune.dev/v1alpha1",
                "kind": "FineTuneJob",
                "name": job_name,
                "uid": job_uid,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ],
    }
    spec: dict[str, Any] = {
        "queueName": queue,
        "podSets": [
            {
                "name": PODSET,
                "count": 1,
                "template": {"metadata": {"labels": dict(pod_meta.get("labels") or {})}, "spec": pod_spec},
            }
        ],
    }
    if priority_class:
        meta["labels"][LABEL_PRIORITY_CLASS] = priority_class
        spec["priorityClassRef"] = {
            "group": GROUP,
            "kind": "WorkloadPriorityClass",
            "name": priority_class,
        }
        # Kueue requires the class's value next to the reference (its own job reconciler copies it)
        spec["priority"] = priority if priority is not None else 0
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Workload", "metadata": meta, "spec": spec}


@dataclass(frozen=True)
class FlavorPlacement:
    """Where the admitted flavors say the trainer pod runs: what Kueue injects into the pods of the jobs it
    manages itself (the flavors' spec.nodeLabels as a nodeSelector, their spec.tolerations)."""

    node_selector: dict[str, str]
    tolerations: tuple[dict[str, Any], ...]


def flavor_placement(flavors: list[dict[str, Any]]) -> FlavorPlacement:
    """The placement of the admitted ResourceFlavors (as the API returns them). Two flavors that pin the
    same label to different values cannot both hold: a ValueError names them (Kueue's own flavor assignment
    never admits such a pair for one podSet; a flavor edited after the admission could)."""
    selector: dict[str, str] = {}
    owner: dict[str, str] = {}
    tolerations: list[dict[str, Any]] = []
    for flavor in flavors:
        name = (flavor.get("metadata") or {}).get("name", "?")
        spec = flavor.get("spec") or {}
        for key, value in (spec.get("nodeLabels") or {}).items():
            if key in selector and selector[key] != value:
                raise ValueError(
                    f"ResourceFlavors {owner[key]} and {name} pin node label {key} to "
                    f"{selector[key]!r} and {value!r}"
                )
            selector[key], owner[key] = str(value), name
        for toleration in spec.get("tolerations") or []:
            if toleration not in tolerations:
                tolerations.append(dict(toleration))
    return FlavorPlacement(selector, tuple(tolerations))


def place_pod(pod: dict[str, Any], placement: FlavorPlacement) -> dict[str, Any]:
    """The trainer pod with the flavors' placement added: their node labels join spec.scheduling's
    nodeSelector (an admitted flavor wins a key both name: it is where the quota was given) and their
    tolerations join the pod's."""
    spec = dict(pod.get("spec") or {})
    if placement.node_selector:
        spec["nodeSelector"] = {**(spec.get("nodeSelector") or {}), **placement.node_selector}
    if placement.tolerations:
        have = list(spec.get("tolerations") or [])
        spec["tolerations"] = have + [t for t in placement.tolerations if t not in have]
    return {**pod, "spec": spec}


def _set(conditions: list[dict[str, Any]], new: dict[str, Any]) -> list[dict[str, Any]]:
    out = [c for c in conditions if c.get("type") != new["type"]]
    old = next((c for c in conditions if c.get("type") == new["type"]), None)
    if old is not None and old.get("status") == new["status"]:
        new = {**new, "lastTransitionTime": old.get("lastTransitionTime", new["lastTransitionTime"])}
    return [*out, new]


def release_reservation_patch(workload: WorkloadView, now: datetime, message: str) -> dict[str, Any]:
    """Status patch after an eviction, once the trainer pod is gone: no reservation, not admitted (what
    Kueue's own job reconciler writes for its Jobs); Kueue then requeues the Workload."""
    conditions = list(workload.conditions)
    for ctype in ("QuotaReserved", "Admitted"):
        conditions = _set(
            conditions,
            {
                "type": ctype,
                "status": "False",
                "reason": "Pending" if ctype == "QuotaReserved" else "NoReservation",
                "message": message[:1024],
                "lastTransitionTime": format_time(now),
                "observedGeneration": workload.generation,
            },
        )
    return {"status": {"admission": None, "conditions": conditions}}


def finished_patch(workload: WorkloadView, now: datetime, succeeded: bool, message: str) -> dict[str, Any]:
    """Status patch when the job ends: Kueue releases the quota of a Finished Workload."""
    condition = {
        "type": "Finished",
        "status": "True",
        "reason": "Succeeded" if succeeded else "Failed",
        "message": message[:1024],
        "lastTransitionTime": format_time(now),
        "observedGeneration": workload.generation,
    }
    return {"status": {"conditions": _set(list(workload.conditions), condition)}}
