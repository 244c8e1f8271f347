"""refusals.py: an apiserver refusal to create the next attempt's objects: fail, wait or retry."""

from __future__ import annotations

import pytest
from finetune_operator.actions import CreatePod, Event, PatchStatus
from finetune_operator.decisions import reconcile
from finetune_operator.refusals import (
    REFUSAL_RECHECK_SECONDS,
    Refusal,
    judge_refusal,
    refusal_from_response,
    refused_step,
)

from tests.unit.operator.decision_helpers import (
    only,
    refusal,
    running_status,
    status,
    world,
)

PC_MISSING = 'pods "job-1" is forbidden: no PriorityClass with name gpu-spot was found'

QUOTA = 'pods "job-1" is forbidden: exceeded quota: q, requested: cpu=300m, used: cpu=0, limited: cpu=100m'

RBAC = 'pods is forbidden: User "system:serviceaccount:x:op" cannot create resource "pods"'

TOO_BIG = 'ConfigMap "job-trainer-config" is invalid: []: Too long: must have at most 1048576 bytes'


def test_refusal_is_read_from_the_status_body() -> None:
    r = refusal(422, TOO_BIG, kind="ConfigMap", reason="Invalid")
    assert (r.kind, r.name, r.code, r.reason, r.message) == ("ConfigMap", "job-1", 422, "Invalid", TOO_BIG)
    plain = refusal_from_response("Pod", "job-1", 400, b"not json")
    assert (plain.reason, plain.message) == ("", "not json")


@pytest.mark.parametrize(
    ("code", "message", "verdict", "reason"),
    [
        (403, PC_MISSING, "wait", "PriorityClassNotFound"),
        (403, QUOTA, "wait", "QuotaExceeded"),
        (
            403,
            'pods "job-1" is forbidden: status unknown for quota: q, resource: requests.cpu',
            "wait",
            "QuotaExceeded",
        ),
        (
            403,
            'pods is forbidden: User "system:serviceaccount:x:op" cannot create resource',
            "wait",
            "OperatorForbidden",
        ),
        (
            403,
            'resourceflavors.kueue.x-k8s.io "spot" is forbidden: User "system:serviceaccount:x:op" cannot '
            'get resource "resourceflavors" in API group "kueue.x-k8s.io" at the cluster scope',
            "wait",
            "OperatorForbidden",
        ),
        (
            403,
            'persistentvolumeclaims "job-checkpoints" is forbidden: unable to create new content in '
            "namespace ns because it is being terminated",
            "wait",
            "NamespaceTerminating",
        ),
        (403, 'pods "job-1" is forbidden: violates PodSecurity "restricted:latest"', "fail", "CreateRefused"),
        (422, TOO_BIG, "fail", "CreateRefused"),
        (400, "admission webhook denied the request", "fail", "CreateRefused"),
        (413, "Request entity too large", "fail", "CreateRefused"),
        (429, "too many requests", "retry", ""),
        (500, "etcdserver: request timed out", "retry", ""),
    ],
)
def test_refusal_verdicts(code: int, message: str, verdict: str, reason: str) -> None:
    assert judge_refusal(refusal(code, message)) == (verdict, reason)


def test_contradicting_kueue_flavors_wait_for_their_admin() -> None:
    conflict = Refusal(
        "ResourceFlavor", "a,b", 409, "FlavorConflict", "ResourceFlavors a and b pin node label x"
    )
    assert judge_refusal(conflict) == ("wait", "FlavorConflict")


def test_invalid_object_fails_the_job_with_the_apiservers_message_and_a_warning() -> None:
    step = refused_step(world(), refusal(422, TOO_BIG, kind="ConfigMap", reason="Invalid"))
    patch = only(step, PatchStatus).patch
    assert patch["phase"] == "Failed" and patch["reason"] == "CreateRefused"
    assert "ConfigMap job-1" in patch["message"] and "1048576 bytes" in patch["message"]
    assert patch["completionTime"] and patch["pending"] is None
    event = only(step, Event)
    assert event.type == "Warning" and event.reason == "CreateRefused" and "1048576" in event.message
    assert step.requeue_seconds is None
    # and once Failed, nothing is created any more
    failed = status(observedGeneration=1, phase="Failed", reason="CreateRefused")
    assert not any(isinstance(a, CreatePod) for a in reconcile(world(st=failed)).actions)


def test_missing_priority_class_waits_pending_and_says_so_once() -> None:
    step = refused_step(world(), refusal(403, PC_MISSING))
    patch = only(step, PatchStatus).patch
    assert patch["phase"] == "Pending" and patch["reason"] == "PriorityClassNotFound"
    assert "no PriorityClass with name gpu-spot" in patch["message"]
    assert only(step, Event).type == "Warning"
    assert step.requeue_seconds == REFUSAL_RECHECK_SECONDS
    # the next recheck is refused the same way: nothing new to say, look again later
    shown = status(observedGeneration=1, phase="Pending", reason=patch["reason"], message=patch["message"])
    again = refused_step(world(st=shown), refusal(403, PC_MISSING))
    assert again.actions == [] and again.requeue_seconds == REFUSAL_RECHECK_SECONDS
    # still not created: reconcile asks for the pod again (the handler tries, and is refused or not)
    assert only(reconcile(world(st=shown)), CreatePod).attempt == 1


def test_refusal_while_restarting_keeps_the_phase_and_the_pending_decision() -> None:
    st = running_status(
        phase="Restarting",
        pending={"action": "restart", "cause": "preemption", "reason": "SIGTERM", "podName": "job-1"},
    )
    step = refused_step(world(st=st), refusal(403, QUOTA))
    assert only(step, PatchStatus).patch.keys() == {"reason", "message"}
    assert only(step, PatchStatus).patch["reason"] == "QuotaExceeded"


def test_transient_refusal_is_left_to_the_retry_loop() -> None:
    step = refused_step(world(), refusal(500, "etcdserver: request timed out", reason="InternalError"))
    assert step.actions == [] and step.requeue_seconds is None
