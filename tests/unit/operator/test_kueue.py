"""Kueue (issue 15): the Workload the operator owns per queued job, and the decisions around it — Queued
until admitted, eviction as a preemption, quota handed back on eviction, finish and suspend, a Workload
replaced when the next attempt needs other resources, nothing at all for jobs without the queue label."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from finetune_operator.actions import (
    CreatePod,
    CreateWorkload,
    DeletePod,
    DeleteWorkload,
    Event,
    PatchStatus,
    PatchWorkloadStatus,
    World,
)
from finetune_operator.decisions import reconcile
from finetune_operator.kueue import (
    ANNOTATION_RESOURCES,
    FlavorPlacement,
    build_workload,
    finished_patch,
    flavor_placement,
    place_pod,
    release_reservation_patch,
    resources_key,
    workload_view,
)
from finetune_operator.refusals import REFUSAL_RECHECK_SECONDS, Refusal, refused_step
from finetune_operator.status_patches import conditions_for

from tests.unit.operator.decision_helpers import (
    NOW,
    T,
    kinds,
    only,
    pod,
    running_status,
    spec,
    status,
    world,
)

KEY = resources_key({"limits": {"cpu": "1", "memory": "1Gi"}, "requests": {"cpu": "1", "memory": "1Gi"}})


def workload(
    *,
    admitted: bool = False,
    evicted: str | None = None,
    reserved: bool | None = None,
    key: str = KEY,
    active: bool = True,
    finished: bool = False,
) -> dict[str, Any]:
    conditions: list[dict[str, Any]] = []
    reserved = admitted if reserved is None else reserved
    if reserved:
        conditions.append({"type": "QuotaReserved", "status": "True", "reason": "QuotaReserved"})
    if admitted:
        conditions.append({"type": "Admitted", "status": "True", "reason": "Admitted"})
    if evicted:
        conditions.append(
            {"type": "Evicted", "status": "True", "reason": evicted, "message": "by a higher one"}
        )
    if finished:
        conditions.append({"type": "Finished", "status": "True", "reason": "Succeeded"})
    body: dict[str, Any] = {
        "metadata": {"name": "job-kueue", "generation": 1, "annotations": {ANNOTATION_RESOURCES: key}},
        "spec": {"queueName": "team-a", "active": active},
        "status": {"conditions": conditions},
    }
    if reserved:
        body["status"]["admission"] = {"clusterQueue": "cq-a", "podSetAssignments": []}
    return body


def queued_world(wl: dict[str, Any] | None, **kw: Any) -> World:
    base = world(**kw)
    return replace(
        base,
        queue="team-a",
        workload=workload_view("job-kueue", wl),
        next_resources_key=KEY,
    )


def test_a_job_without_the_queue_label_never_consults_kueue() -> None:
    # Kueue absent (kueue_installed False) changes nothing for such a job
    step = reconcile(replace(world(), kueue_installed=False))
    assert kinds(step).count("CreatePod") == 1
    assert not any(isinstance(a, CreateWorkload | DeleteWorkload | PatchWorkloadStatus) for a in step.actions)


def test_a_queued_job_creates_its_workload_and_waits_queued_without_a_pod() -> None:
    step = reconcile(queued_world(None))
    assert only(step, CreateWorkload).attempt == 1
    assert "CreatePod" not in kinds(step)
    patch = only(step, PatchStatus).patch
    assert (patch["phase"], patch["reason"]) == ("Queued", "WaitingForAdmission")
    assert "LocalQueue team-a" in patch["message"]
    assert {c["type"]: c["status"] for c in patch["conditions"]}["Queued"] == "True"
    assert step.requeue_seconds is not None  # admission sends no job event: look again
    # the Workload exists, not admitted yet: nothing new (status already says so)
    st = status(observedGeneration=1, **{k: v for k, v in patch.items()})
    step = reconcile(queued_world(workload(), st=st))
    assert step.actions == [] and step.requeue_seconds is not None


def test_a_watched_workload_is_not_polled_one_read_from_the_api_is_looked_at_again_soon() -> None:
    patch = only(reconcile(queued_world(workload())), PatchStatus).patch
    read = queued_world(workload(), st=status(observedGeneration=1, **patch))
    watched = replace(read, workload_watched=True)
    waiting = [reconcile(w) for w in (read, watched)]
    assert [s.actions for s in waiting] == [[], []]
    assert [s.requeue_seconds for s in waiting] == [2.0, 60.0]  # admission wakes a watched job
    running = queued_world(workload(admitted=True), st=running_status(), pods=[pod("job-1")])
    steps = [reconcile(w) for w in (running, replace(running, workload_watched=True))]
    assert [s.requeue_seconds for s in steps] == [2.0, 30.0]  # the node's own look every 30 s stays
    missing = replace(queued_world(None), kueue_installed=False)
    assert reconcile(missing).requeue_seconds == 30.0  # no Workload API: looked at rarely


def test_a_queue_kueue_cannot_use_is_shown_with_kueues_words() -> None:
    body = workload()
    body["status"]["conditions"] = [
        {
            "type": "QuotaReserved",
            "status": "False",
            "reason": "Inadmissible",
            "message": "LocalQueue team-x doesn't exist",
        }
    ]
    step = reconcile(queued_world(body))
    patch = only(step, PatchStatus).patch
    assert (patch["phase"], patch["reason"]) == ("Queued", "Inadmissible")
    assert patch["message"] == "Kueue cannot queue it: LocalQueue team-x doesn't exist"
    warning = only(step, Event)
    assert (warning.type, warning.reason) == ("Warning", "Inadmissible")
    body["status"]["conditions"][0]["reason"] = "Pending"  # ordinary waiting for quota: no Kueue detail
    patch = only(reconcile(queued_world(body)), PatchStatus).patch
    assert patch["reason"] == "WaitingForAdmission"


def test_a_missing_workload_priority_class_keeps_the_job_queued_saying_so() -> None:
    text = "its WorkloadPriorityClass 'hihg' (label kueue.x-k8s.io/priority-class) does not exist"
    refusal = Refusal("Workload", "job-kueue", 404, "PriorityClassNotFound", text)
    step = refused_step(queued_world(None), refusal)
    patch = only(step, PatchStatus).patch
    assert (patch["phase"], patch["reason"]) == ("Queued", "PriorityClassNotFound")
    assert "'hihg'" in patch["message"] and step.requeue_seconds == REFUSAL_RECHECK_SECONDS
    assert only(step, Event).type == "Warning"


def test_admission_creates_the_pod_and_says_so() -> None:
    st = status(observedGeneration=1, phase="Queued", reason="WaitingForAdmission", message="waiting")
    step = reconcile(queued_world(workload(admitted=True), st=st))
    assert only(step, CreatePod).attempt == 1
    admitted = [a for a in step.actions if isinstance(a, Event) and a.reason == "Admitted"]
    assert admitted and "ClusterQueue cq-a" in admitted[0].message


def test_eviction_stops_the_pod_gracefully_and_counts_a_preemption_then_hands_back_the_quota() -> None:
    running = pod(running=True)
    step = reconcile(
        queued_world(workload(admitted=True, evicted="Preempted"), st=running_status(), pods=[running])
    )
    delete = only(step, DeletePod)
    assert delete.grace_seconds is None and not delete.force  # SIGTERM → emergency checkpoint
    assert any(isinstance(a, Event) and a.reason == "Evicted" for a in step.actions)
    # the trainer commits its emergency checkpoint and exits 75: a preemption, nothing else charged
    stopped = pod(
        exit_code=75, deleted=True, message={"reason": "Preempted", "step": 12, "checkpoint_step": 12}
    )
    step = reconcile(
        queued_world(workload(admitted=True, evicted="Preempted"), st=running_status(), pods=[stopped])
    )
    patch = next(a.patch for a in step.actions if isinstance(a, PatchStatus) and "restarts" in a.patch)
    assert patch["restarts"]["preemption"] == 1
    assert sum(v for k, v in patch["restarts"].items() if k != "preemption") == 0
    # the pod is gone: the reservation goes back to Kueue, no pod is created, the job is Queued
    st2 = running_status(**{k: v for k, v in patch.items() if k != "conditions"})
    step = reconcile(queued_world(workload(admitted=True, evicted="Preempted"), st=st2, pods=[]))
    release = only(step, PatchWorkloadStatus).patch["status"]
    assert release["admission"] is None
    assert {c["type"]: c["status"] for c in release["conditions"]} == {
        "QuotaReserved": "False",
        "Admitted": "False",
        "Evicted": "True",
    }
    assert "CreatePod" not in kinds(step)
    queued = [a.patch for a in step.actions if isinstance(a, PatchStatus) and a.patch.get("phase")]
    assert queued and queued[0]["phase"] == "Queued" and queued[0]["reason"] == "Evicted"
    # requeued (evicted, no reservation): still waiting, and the status keeps saying it was evicted (a
    # reason that flipped to WaitingForAdmission at once was gone before anyone could read it); admitted
    # again: attempt 2 (resumes)
    st3 = status(**{**st2.model_dump(by_alias=True, exclude_none=True), **queued[0]})
    for requeued in (workload(evicted="Preempted"), workload()):
        waiting = reconcile(queued_world(requeued, st=st3))
        assert "CreatePod" not in kinds(waiting)
        assert not any(isinstance(a, PatchStatus) for a in waiting.actions), waiting.actions
    step = reconcile(queued_world(workload(admitted=True), st=st3))
    assert only(step, CreatePod).attempt == 2


def test_operator_restarts_keep_the_workload_and_its_place() -> None:
    """An error restart with the same resources: the admitted Workload stays, the next pod starts at once."""
    st = running_status(
        phase="Restarting", pending={"action": "restart", "reason": "Error", "podName": "job-1"}
    )
    step = reconcile(queued_world(workload(admitted=True), st=st))
    assert only(step, CreatePod).attempt == 2
    assert not any(isinstance(a, CreateWorkload | DeleteWorkload) for a in step.actions)


def test_more_memory_after_a_host_oom_replaces_the_workload() -> None:
    st = running_status(
        phase="Restarting", pending={"action": "restart", "reason": "OOMKilled", "podName": "job-1"}
    )
    wl = workload(admitted=True, key="the-old-resources")
    step = reconcile(queued_world(wl, st=st))
    assert only(step, DeleteWorkload).name == "job-kueue"
    assert "CreatePod" not in kinds(step)
    # gone: a new one for the larger pod, queued again
    step = reconcile(queued_world(None, st=st))
    assert only(step, CreateWorkload).attempt == 2 and "CreatePod" not in kinds(step)


def test_finished_job_marks_its_workload_finished_once() -> None:
    st = running_status(phase="Succeeded", message="training finished")
    step = reconcile(queued_world(workload(admitted=True), st=st))
    fin = only(step, PatchWorkloadStatus).patch["status"]["conditions"]
    assert {c["type"]: (c["status"], c.get("reason")) for c in fin}["Finished"] == ("True", "Succeeded")
    assert not any(
        isinstance(a, PatchWorkloadStatus)
        for a in reconcile(queued_world(workload(admitted=True, finished=True), st=st)).actions
    )
    failed = reconcile(queued_world(workload(admitted=True), st=running_status(phase="Failed")))
    conds = only(failed, PatchWorkloadStatus).patch["status"]["conditions"]
    assert {c["type"]: c.get("reason") for c in conds}["Finished"] == "Failed"


def test_suspend_deletes_the_workload_once_the_pod_is_gone_and_resume_queues_again() -> None:
    sp = spec(suspend=True)
    step = reconcile(
        queued_world(workload(admitted=True), st=running_status(), pods=[pod(running=True)], sp=sp)
    )
    assert "DeleteWorkload" not in kinds(step)  # first the emergency checkpoint
    step = reconcile(queued_world(workload(admitted=True), st=running_status(phase="Suspended"), sp=sp))
    assert only(step, DeleteWorkload).name == "job-kueue"
    # resumed: a new Workload, Queued; no pod before admission
    step = reconcile(queued_world(None, st=running_status(phase="Suspended")))
    assert only(step, CreateWorkload).attempt == 2 and "CreatePod" not in kinds(step)
    queued = running_status(phase="Queued", reason="WaitingForAdmission")
    assert only(reconcile(queued_world(workload(admitted=True), st=queued)), CreatePod).attempt == 2


def test_kueue_deactivation_waits_queued_until_reactivated() -> None:
    st = running_status(phase="Restarting", pending={"action": "restart", "reason": "x", "podName": "job-1"})
    step = reconcile(queued_world(workload(evicted="Deactivated", active=False), st=st))
    assert "CreatePod" not in kinds(step)
    assert only(step, PatchStatus).patch["reason"] == "Deactivated"


def test_a_labelled_job_without_kueue_installed_waits_with_a_warning() -> None:
    step = reconcile(replace(world(), queue="team-a", kueue_installed=False))
    assert "CreatePod" not in kinds(step) and "CreateWorkload" not in kinds(step)
    assert only(step, PatchStatus).patch["reason"] == "KueueNotInstalled"
    assert only(step, Event).type == "Warning"


def test_workload_manifest_accounts_the_trainer_pod() -> None:
    trainer_pod = {
        "metadata": {"labels": {"finetune.dev/job": "job"}},
        "spec": {"containers": [{"name": "trainer", "resources": {"limits": {"memory": "2Gi"}}}]},
    }
    body = build_workload("job", "ns", "uid-1", "team-a", "high", trainer_pod, 1000)
    assert body["spec"]["queueName"] == "team-a"
    assert body["spec"]["priorityClassRef"]["name"] == "high" and body["spec"]["priority"] == 1000
    assert body["spec"]["podSets"][0]["template"]["spec"] == trainer_pod["spec"]
    assert body["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert body["metadata"]["annotations"][ANNOTATION_RESOURCES] == resources_key(
        {"limits": {"memory": "2Gi"}}
    )


def test_status_patches_keep_kueues_other_conditions() -> None:
    wl = workload_view("job-kueue", workload(admitted=True, evicted="Preempted"))
    released = release_reservation_patch(wl, NOW, "evicted")["status"]["conditions"]
    assert [c["type"] for c in released] == ["Evicted", "QuotaReserved", "Admitted"]
    done = finished_patch(wl, NOW, True, "ok")["status"]["conditions"]
    assert [c["type"] for c in done][-1] == "Finished" and done[-1]["lastTransitionTime"] == T(NOW)


def test_the_admitted_flavors_are_read_from_the_trainers_pod_set() -> None:
    body = workload(admitted=True)
    body["status"]["admission"]["podSetAssignments"] = [
        {"name": "trainer", "flavors": {"cpu": "spot", "memory": "spot", "nvidia.com/gpu": "h100-spot"}},
        {"name": "someone-elses", "flavors": {"cpu": "on-demand"}},
    ]
    assert workload_view("job-kueue", body).flavors == ("h100-spot", "spot")
    assert workload_view("job-kueue", workload(admitted=False)).flavors == ()


def _flavor(name: str, labels: dict[str, str], tolerations: list[dict[str, str]] | None = None) -> dict:
    spec: dict[str, Any] = {"nodeLabels": labels}
    if tolerations is not None:
        spec["tolerations"] = tolerations
    return {"metadata": {"name": name}, "spec": spec}


SPOT_TOLERATION = {
    "key": "cloud.google.com/gke-spot",
    "operator": "Equal",
    "value": "true",
    "effect": "NoSchedule",
}


def test_flavor_placement_joins_node_labels_and_tolerations_and_refuses_a_contradiction() -> None:
    placement = flavor_placement(
        [
            _flavor("spot", {"cloud.google.com/gke-spot": "true"}, [SPOT_TOLERATION]),
            _flavor("h100-spot", {"cloud.google.com/gke-spot": "true", "gpu": "h100"}, [SPOT_TOLERATION]),
        ]
    )
    assert placement == FlavorPlacement(
        {"cloud.google.com/gke-spot": "true", "gpu": "h100"}, (SPOT_TOLERATION,)
    )
    with pytest.raises(ValueError, match=r"spot and on-demand pin node label cloud\.google\.com/gke-spot"):
        flavor_placement(
            [
                _flavor("spot", {"cloud.google.com/gke-spot": "true"}),
                _flavor("on-demand", {"cloud.google.com/gke-spot": "false"}),
            ]
        )


def test_place_pod_adds_the_flavors_to_the_jobs_own_scheduling() -> None:
    own = {"key": "team", "operator": "Exists", "effect": "NoSchedule"}
    trainer = {"metadata": {"name": "p"}, "spec": {"nodeSelector": {"team": "a"}, "tolerations": [own]}}
    placed = place_pod(trainer, FlavorPlacement({"gpu": "h100"}, (SPOT_TOLERATION, own)))
    assert placed["spec"]["nodeSelector"] == {"team": "a", "gpu": "h100"}
    assert placed["spec"]["tolerations"] == [own, SPOT_TOLERATION]
    assert trainer["spec"]["nodeSelector"] == {"team": "a"}, "the input is not changed"
    assert place_pod(trainer, FlavorPlacement({}, ())) == trainer


def test_queued_condition_only_on_jobs_that_were_queued() -> None:
    assert [c["type"] for c in conditions_for("Running", "r", "m", NOW, [])] == [
        "Running",
        "Complete",
        "Failed",
        "Suspended",
    ]
    assert conditions_for("Queued", "r", "m", NOW, [])[0] == {
        "type": "Queued",
        "status": "True",
        "lastTransitionTime": T(NOW),
        "reason": "r",
        "message": "m",
    }
