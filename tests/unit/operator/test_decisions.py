"""decisions.py: the reconcile state machine (single writer, restart safety, suspension, shared volumes).

Longer than the other test files: one test a path through `reconcile`, each a few passes of a whole World.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from finetune_operator.actions import (
    AdoptPod,
    AnnotatePod,
    CreatePod,
    Decided,
    DeletePod,
    Event,
    PatchStatus,
    Recovered,
    Step,
    World,
)
from finetune_operator.decisions import CLAIM_RECHECK_SECONDS, WATCH_NODE_SECONDS, reconcile
from finetune_operator.names import ANNOTATION_LAST_CHECKPOINT, ANNOTATION_LAST_CHECKPOINT_STEP
from finetune_operator.policy import plan_next
from finetune_operator.status_patches import decision_patch
from finetune_operator.views import ClaimView, NodeView, pod_view

from tests.unit.operator.decision_helpers import (
    NODE_TABLE,
    NOW,
    READY,
    TRANSIENT_PULL,
    UNREADY_90S,
    T,
    admission_failure,
    classify,
    kinds,
    only,
    pod,
    running_status,
    spec,
    status,
    world,
)

NO_INTACT = (
    "no intact checkpoint in /checkpoints/run: checkpoint-40: optimizer.pt: CRC-32 00000000 != committed "
    "1c2d3e4f (same size, bytes changed); checkpoint-35: rng_state.pth: size 0 != committed size 14909. "
    "Nothing was deleted or moved."
)


def test_exit_65_is_no_intact_checkpoint_and_fails_at_once_with_advice() -> None:
    out = classify(pod(exit_code=65, message={"reason": "NoIntactCheckpoint", "message": NO_INTACT}), READY)
    assert out is not None and (out.end, out.reason, out.exit_code) == ("NoIntactCheckpoint",) * 2 + (65,)
    assert "checkpoint-40: optimizer.pt: CRC-32" in out.message and "checkpoint-35" in out.message
    assert "onNoIntactCheckpoint: restart" in out.message and "deleted nothing" in out.message
    # never retried, whatever the budgets say: a new attempt would find the same damage
    st = status(phase="Running", attempt=1, podName="job-1")
    plan = plan_next(spec(), st, out)
    assert (plan.action, plan.reason, plan.cause) == ("fail", "NoIntactCheckpoint", None)
    patch = decision_patch(st, out, plan, "job-1", NOW)
    assert patch["phase"] == "Failed" and patch["reason"] == "NoIntactCheckpoint" and patch["pending"] is None
    assert "restarts" not in patch and patch["message"].startswith("every committed checkpoint")
    world = World(
        name="job",
        uid="uid-1",
        generation=1,
        spec=spec(),
        status=st,
        pods=(pod_view(pod(exit_code=65, message={"reason": "NoIntactCheckpoint", "message": NO_INTACT})),),
        nodes={"node-a": READY},
        now=NOW,
    )
    events = [a for a in reconcile(world).actions if isinstance(a, Event)]
    assert [(e.type, e.reason) for e in events] == [("Warning", "NoIntactCheckpoint")]
    assert "checkpoint-40: optimizer.pt" in events[0].message


def test_new_job_creates_attempt_one_in_its_own_run_directory() -> None:
    step = reconcile(world())
    create = only(step, CreatePod)
    assert (create.attempt, create.run_directory) == (1, "runs/uid-1")
    assert create.status_patch["podName"] == "job-1" and create.status_patch["phase"] == "Pending"
    assert create.status_patch["runDirectory"] == "runs/uid-1"
    assert create.status_patch["startedFrom"] == "fresh"
    assert "startTime" in create.status_patch


def test_a_job_re_created_under_the_same_name_gets_another_run_directory() -> None:
    """The kept claim of a deleted job with the same name (another uid) is used, but never its run."""
    kept = ClaimView(name="job-checkpoints", exists=True)  # deleteWithJob false: no owner
    step = reconcile(replace(world(claim=kept), uid="uid-2"))
    assert only(step, CreatePod).run_directory == "runs/uid-2"


def test_resume_from_is_named_as_the_start_until_the_trainer_names_the_checkpoint() -> None:
    step = reconcile(world(sp=spec(checkpoint={"resumeFrom": "runs/uid-0"})))
    create = only(step, CreatePod)
    assert create.status_patch["startedFrom"] == "runs/uid-0"
    assert "continuing from runs/uid-0" in create.event_message
    later = status(
        observedGeneration=1,
        phase="Restarting",
        attempt=1,
        podName="job-1",
        runDirectory="runs/uid-1",
        startedFrom="runs/uid-0/checkpoint-40",
        pending={"action": "restart", "cause": "preemption", "reason": "Evicted", "podName": "job-1"},
    )
    patch = only(reconcile(world(st=later, sp=spec(checkpoint={"resumeFrom": "runs/uid-0"}))), CreatePod)
    assert patch.run_directory == "runs/uid-1"
    assert "startedFrom" not in patch.status_patch and "runDirectory" not in patch.status_patch


def test_a_job_started_before_run_directories_keeps_the_legacy_one() -> None:
    st = status(
        observedGeneration=1,
        phase="Restarting",
        attempt=2,
        podName="job-2",
        pending={"action": "restart", "cause": "preemption", "reason": "Evicted", "podName": "job-2"},
    )
    create = only(reconcile(world(st=st)), CreatePod)
    assert create.run_directory == "run" and create.status_patch["runDirectory"] == "run"


def test_waits_while_the_previous_jobs_claim_is_terminating_then_goes_on() -> None:
    """deleteWithJob: a quick delete and re-create meets the old claim Terminating: wait, say why, no pod."""
    terminating = ClaimView(name="job-checkpoints", exists=True, deleting=True, job_owner_uids=("uid-0",))
    step = reconcile(world(claim=terminating))
    assert "CreatePod" not in kinds(step)
    patch = only(step, PatchStatus).patch
    assert patch["phase"] == "Pending" and patch["reason"] == "WaitingForClaim"
    assert patch["message"] == (
        "waiting for the previous job's claim job-checkpoints to be deleted (it is terminating)"
    )
    assert only(step, Event).reason == "WaitingForClaim"
    assert step.requeue_seconds == CLAIM_RECHECK_SECONDS
    # shown once: the next look changes nothing while the claim is still there
    shown = status(observedGeneration=1, phase="Pending", reason="WaitingForClaim", message=patch["message"])
    again = reconcile(world(st=shown, claim=terminating))
    assert again.actions == [] and again.requeue_seconds == CLAIM_RECHECK_SECONDS
    # not yet deleting but still owned by the old job (its garbage collection has not begun): wait as well
    owned = ClaimView(name="job-checkpoints", exists=True, job_owner_uids=("uid-0",))
    assert "CreatePod" not in kinds(reconcile(world(st=shown, claim=owned)))
    # gone: the operator creates a new claim and the first pod
    assert only(reconcile(world(st=shown, claim=ClaimView(name="job-checkpoints"))), CreatePod).attempt == 1
    # our own claim (owned by this job) is no obstacle
    ours = ClaimView(name="job-checkpoints", exists=True, job_owner_uids=("uid-1",))
    assert only(reconcile(world(st=shown, claim=ours)), CreatePod).attempt == 1


def test_observed_generation_is_recorded() -> None:
    step = reconcile(world(st=status(observedGeneration=None)))
    assert PatchStatus({"observedGeneration": 1}) in step.actions


def test_operator_restart_after_create_adopts_pod() -> None:
    """Pod created, then the operator died before writing status: adopt it, create nothing."""
    step = reconcile(world(pods=[pod("job-1", phase="Pending", node=None)]))
    assert kinds(step) == ["AdoptPod"] and only(step, AdoptPod).status_patch["podName"] == "job-1"


def test_foreign_pod_with_our_name_is_not_adopted() -> None:
    step = reconcile(world(pods=[pod("job-1", owner="someone-else")]))
    assert "AdoptPod" not in kinds(step) and "CreatePod" not in kinds(step)


def test_running_pod_becomes_running_phase_and_annotated() -> None:
    st = status(
        observedGeneration=1,
        phase="Pending",
        attempt=1,
        podName="job-1",
        lastCheckpoint={"step": 10, "time": "2026-01-01T11:58:00Z"},
    )
    step = reconcile(world(st=st, pods=[pod(running=True)]))
    assert only(step, PatchStatus).patch["phase"] == "Running"
    ann = only(step, AnnotatePod)
    assert ann.annotations == {
        ANNOTATION_LAST_CHECKPOINT: "2026-01-01T11:58:00Z",
        ANNOTATION_LAST_CHECKPOINT_STEP: "10",
    }
    assert step.requeue_seconds == WATCH_NODE_SECONDS


def test_running_pod_with_current_annotation_needs_nothing() -> None:
    st = status(
        observedGeneration=1,
        phase="Running",
        attempt=1,
        podName="job-1",
        lastCheckpoint={"step": 10, "time": "t1"},
    )
    step = reconcile(world(st=st, pods=[pod(running=True, annotations={ANNOTATION_LAST_CHECKPOINT: "t1"})]))
    assert step.actions == []


def test_preempted_pod_records_decision_then_waits_for_gone_then_creates() -> None:
    ended = pod(
        exit_code=75,
        disruption="EvictionByEvictionAPI",
        deleted=True,
        message={"reason": "Preempted", "step": 12, "checkpoint_step": 12},
    )
    step = reconcile(world(st=running_status(), pods=[ended]))
    # the decision is written first; in the same pass the tracked, deleting pod is released and its deletion
    # finished at once (the kubelet said the trainer stopped)
    assert kinds(step) == ["PatchStatus", "Decided", "Event", "ReleasePod", "DeletePod"]
    assert only(step, DeletePod).grace_seconds == 0
    patch = only(step, PatchStatus).patch
    assert patch["restarts"]["preemption"] == 1 and patch["pending"]["notBefore"] == T(NOW)
    assert "lostSteps" not in patch  # the emergency checkpoint covered everything

    # next pass (the release did not happen, e.g. it failed): the decision is pending; release the pod and
    # finish its deletion
    st2 = running_status(**{k: v for k, v in patch.items() if k != "conditions"})
    step = reconcile(world(st=st2, pods=[ended]))
    assert kinds(step) == ["ReleasePod", "DeletePod"] and only(step, DeletePod).grace_seconds == 0
    # still there, untracked, deletion already final: wait (no new pod yet)
    lingering = pod(exit_code=75, disruption="EvictionByEvictionAPI", deleted=True, finalizer=False)
    lingering["metadata"]["deletionGracePeriodSeconds"] = 0
    step = reconcile(world(st=st2, pods=[lingering]))
    assert step.actions == [] and step.requeue_seconds is not None
    # a pod still saving (running, deleting) is never cut short
    saving = pod(running=True, disruption="EvictionByEvictionAPI", deleted=True, finalizer=False)
    assert reconcile(world(st=st2, pods=[saving])).actions == []
    # gone: create attempt 2 with --resume auto, clear the pending decision
    step = reconcile(world(st=st2, pods=[]))
    create = only(step, CreatePod)
    # (this status records no runDirectory, as a job started before run directories: the legacy one)
    assert (create.attempt, create.run_directory) == (2, "run")
    assert create.status_patch["pending"] is None and create.status_patch["podName"] == "job-2"
    assert create.status_patch["phase"] == "Restarting"


def test_decided_pod_is_not_classified_twice() -> None:
    """Duplicate events / an operator restart after the decision: the counters are not charged again."""
    ended = pod(exit_code=1, reason="Error")
    first = only(reconcile(world(st=running_status(), pods=[ended])), PatchStatus).patch
    st2 = running_status(**{k: v for k, v in first.items() if k != "conditions"})
    again = reconcile(world(st=st2, pods=[ended]))
    assert "Decided" not in kinds(again)
    assert kinds(again) == [
        "ReleasePod",
        "DeletePod",
    ]  # an ended pod is removed at once (force: it's stopped)
    assert only(again, DeletePod).force


def test_backoff_waits_until_not_before() -> None:
    st = running_status(
        phase="Restarting",
        pending={
            "action": "restart",
            "cause": "error",
            "reason": "ExitCode1",
            "podName": "job-1",
            "notBefore": T(NOW + timedelta(seconds=20)),
        },
    )
    step = reconcile(world(st=st, pods=[]))
    assert step.actions == [] and step.requeue_seconds == pytest.approx(20)
    step = reconcile(world(st=st, pods=[], now=NOW + timedelta(seconds=21)))
    assert only(step, CreatePod).attempt == 2


def test_restart_after_crash_between_create_and_status_adopts() -> None:
    st = running_status(
        phase="Restarting",
        pending={
            "action": "restart",
            "cause": "preemption",
            "reason": "x",
            "podName": "job-1",
            "notBefore": T(NOW + timedelta(seconds=5)),
        },
    )
    step = reconcile(world(st=st, pods=[pod("job-2", phase="Pending", node=None)]))
    assert kinds(step) == ["AdoptPod"]


def test_single_writer_never_creates_while_another_pod_exists() -> None:
    st = running_status(phase="Restarting", pending={"action": "restart", "reason": "x", "podName": "job-1"})
    stray = pod("job-0", running=True)  # a leftover pod still running: must go first
    step = reconcile(world(st=st, pods=[stray]))
    assert "CreatePod" not in kinds(step)
    assert only(step, DeletePod).force is False  # graceful: it may be saving


def test_node_lost_pod_is_force_deleted_and_replaced() -> None:
    lost = {"node-a": NodeView("node-a", ready="Unknown", ready_since=NOW - timedelta(seconds=90))}
    stuck = pod(running=True, deleted=True, disruption="DeletionByTaintManager")
    step = reconcile(world(st=running_status(), pods=[stuck], nodes=lost))
    patch = only(step, PatchStatus).patch
    assert patch["pending"]["reason"] == "NodeLost" and patch["restarts"]["preemption"] == 1
    st2 = running_status(**{k: v for k, v in patch.items() if k != "conditions"})
    step = reconcile(world(st=st2, pods=[stuck], nodes=lost))
    assert kinds(step) == ["ReleasePod", "DeletePod"] and only(step, DeletePod).force


def test_node_not_yet_lost_waits_and_requeues() -> None:
    nodes = {"node-a": NodeView("node-a", ready="Unknown", ready_since=NOW - timedelta(seconds=55))}
    step = reconcile(world(st=running_status(), pods=[pod(running=True)], nodes=nodes))
    assert step.actions == [] and step.requeue_seconds == pytest.approx(5.5)  # node_lost_seconds=60


def test_vanished_pod_is_preemption() -> None:
    step = reconcile(world(st=running_status(), pods=[]))
    assert only(step, PatchStatus).patch["pending"]["reason"] == "PodVanished"


def test_config_error_fails_and_deletes_stuck_pod() -> None:
    st = running_status(phase="Pending", step=None)
    step = reconcile(world(st=st, pods=[pod(phase="Pending", waiting="InvalidImageName")]))
    assert only(step, PatchStatus).patch["phase"] == "Failed"
    event = only(step, Event)
    assert event.type == "Warning" and event.reason == "InvalidImageName"
    assert "ReleasePod" in kinds(step) and "DeletePod" in kinds(step)


def test_success_keeps_pod_for_logs() -> None:
    step = reconcile(
        world(st=running_status(), pods=[pod(exit_code=0, message={"reason": "Completed", "step": 40})])
    )
    assert only(step, PatchStatus).patch["phase"] == "Succeeded"
    assert "DeletePod" not in kinds(step) and "ReleasePod" in kinds(step)
    st = running_status(phase="Succeeded")
    assert reconcile(world(st=st, pods=[pod(exit_code=0, finalizer=False)])).actions == []


def test_failed_job_stops_running_pods() -> None:
    step = reconcile(world(st=running_status(phase="Failed"), pods=[pod(running=True)]))
    assert kinds(step) == ["DeletePod"]


def test_suspend_deletes_gracefully_then_stops_without_counting() -> None:
    sp = spec(suspend=True)
    step = reconcile(world(st=running_status(), pods=[pod(running=True)], sp=sp))
    delete = only(step, DeletePod)
    assert delete.grace_seconds is None and not delete.force
    # the trainer saves and exits 75: Suspended, no restart counted
    stopped = pod(
        exit_code=75, deleted=True, message={"reason": "Preempted", "step": 12, "checkpoint_step": 12}
    )
    step = reconcile(world(st=running_status(), pods=[stopped], sp=sp))
    patch = only(step, PatchStatus).patch
    assert patch["phase"] == "Suspended" and "restarts" not in patch and patch["pending"] is None
    # stays suspended, nothing created
    st = running_status(phase="Suspended")
    assert "CreatePod" not in kinds(reconcile(world(st=st, pods=[], sp=sp)))
    # resume: a new attempt, resuming
    step = reconcile(world(st=st, pods=[]))
    create = only(step, CreatePod)
    assert (create.attempt, create.run_directory, create.status_patch["phase"]) == (
        2,
        "run",  # no runDirectory recorded in this status: the legacy directory
        "Pending",
    )


def test_suspend_while_restart_pending_cancels_it() -> None:
    st = running_status(phase="Restarting", pending={"action": "restart", "reason": "x", "podName": "job-1"})
    step = reconcile(world(st=st, pods=[], sp=spec(suspend=True)))
    assert "CreatePod" not in kinds(step)
    phases = [a.patch.get("phase") for a in step.actions if isinstance(a, PatchStatus)]
    assert "Suspended" in phases


def test_suspend_before_first_pod() -> None:
    step = reconcile(world(sp=spec(suspend=True)))
    assert "CreatePod" not in kinds(step) and only(step, PatchStatus).patch["phase"] == "Suspended"


def test_recovery_is_reported_once_trainer_reports_again() -> None:
    st = running_status(
        phase="Restarting",
        attempt=2,
        podName="job-2",
        step=12,
        lastEndStep=12,
        lastPodEndTime=T(NOW - timedelta(seconds=14)),
    )
    assert "Recovered" not in kinds(reconcile(world(st=st, pods=[pod("job-2", running=True)])))
    st = running_status(
        phase="Restarting",
        attempt=2,
        podName="job-2",
        step=13,
        lastEndStep=12,
        lastPodEndTime=T(NOW - timedelta(seconds=14)),
    )
    step = reconcile(world(st=st, pods=[pod("job-2", running=True)]))
    assert only(step, Recovered).seconds == pytest.approx(14)
    assert only(step, PatchStatus).patch["phase"] == "Running"


def test_unschedulable_times_out_into_failed() -> None:
    sp = spec(restartPolicy={"pendingTimeoutSeconds": 60})
    st = running_status(phase="Pending", step=None)
    step = reconcile(world(st=st, pods=[pod(phase="Pending", node=None, unschedulable_for=30)], sp=sp))
    assert only(step, PatchStatus).patch["reason"] == "Unschedulable"  # message only, still waiting
    assert step.requeue_seconds == pytest.approx(30.5)
    step = reconcile(world(st=st, pods=[pod(phase="Pending", node=None, unschedulable_for=61)], sp=sp))
    assert only(step, PatchStatus).patch["phase"] == "Failed"


def test_budget_exhaustion_fails_with_event() -> None:
    sp = spec(restartPolicy={"maxFailures": 1})
    st = running_status(restarts={"error": 1}, restartsTotal=1)
    step = reconcile(world(st=st, pods=[pod(exit_code=1, message="RuntimeError: boom")], sp=sp))
    patch = only(step, PatchStatus).patch
    assert patch["phase"] == "Failed" and patch["reason"] == "FailureBudgetExhausted"
    assert "boom" in patch["message"]
    event = only(step, Event)
    assert event.type == "Warning" and event.reason == "FailureBudgetExhausted"


def test_pending_restart_waits_for_terminating_pod_on_unready_node_until_lost() -> None:
    st = running_status(phase="Restarting", pending={"action": "restart", "reason": "x", "podName": "job-1"})
    stuck = pod(running=True, deleted=True, finalizer=False)
    nodes = {"node-a": NodeView("node-a", ready="Unknown", ready_since=NOW - timedelta(seconds=50))}
    step = reconcile(world(st=st, pods=[stuck], nodes=nodes))
    assert step.actions == [] and step.requeue_seconds == pytest.approx(10.5)
    nodes = {"node-a": NodeView("node-a", ready="Unknown", ready_since=NOW - timedelta(seconds=61))}
    step = reconcile(world(st=st, pods=[stuck], nodes=nodes))
    assert only(step, DeletePod).force


def test_storm_posts_a_warning_and_waits() -> None:
    st = running_status(
        phase="Restarting", step=None, streak={"reason": "UnexpectedAdmissionError", "count": 2}
    )
    step = reconcile(world(st=st, pods=[admission_failure()], nodes={"gpu-7": NodeView("gpu-7")}))
    patch = only(step, PatchStatus).patch
    assert patch["streak"] == {"reason": "UnexpectedAdmissionError", "count": 3}
    assert patch["pending"]["notBefore"] == T(NOW + timedelta(seconds=10))
    assert patch["pending"]["avoidNode"] == "gpu-7"
    storm = [a for a in step.actions if isinstance(a, Event) and a.reason == "RestartStorm"]
    assert len(storm) == 1 and storm[0].type == "Warning"
    assert "3 pod ends in a row for UnexpectedAdmissionError on node gpu-7" in storm[0].message
    # below the threshold: no storm Event
    st = running_status(
        phase="Restarting", step=None, streak={"reason": "UnexpectedAdmissionError", "count": 1}
    )
    step = reconcile(world(st=st, pods=[admission_failure()], nodes={"gpu-7": NodeView("gpu-7")}))
    assert not [a for a in step.actions if isinstance(a, Event) and a.reason == "RestartStorm"]


def test_training_progress_ends_the_streak() -> None:
    st = running_status(
        phase="Restarting",
        attempt=4,
        podName="job-4",
        step=13,
        lastEndStep=12,
        streak={"reason": "UnexpectedAdmissionError", "count": 3},
    )
    step = reconcile(world(st=st, pods=[pod("job-4", running=True)]))
    assert PatchStatus({"streak": None}) in step.actions
    # no progress yet (the step is the one reported before the end): the streak stays
    st = running_status(
        phase="Restarting", attempt=4, podName="job-4", step=12, lastEndStep=12, streak=st.streak
    )
    step = reconcile(world(st=st, pods=[pod("job-4", running=True)]))
    assert PatchStatus({"streak": None}) not in step.actions


def test_waiting_for_the_image_is_shown_in_status_until_the_timeout() -> None:
    st = running_status(phase="Restarting", attempt=2, podName="job-2")
    pulling = pod(
        "job-2", phase="Pending", waiting="ErrImagePull", waiting_message=TRANSIENT_PULL, started_ago=590
    )
    step = reconcile(world(st=st, pods=[pulling]))
    patch = only(step, PatchStatus).patch
    assert patch["reason"] == "ErrImagePull"
    assert "restartPolicy.imagePullTimeoutSeconds" in patch["message"] and "429" in patch["message"]
    assert step.requeue_seconds == pytest.approx(10.5)  # look again when the 600 s run out
    assert "Decided" not in kinds(step)
    # recorded: nothing more to write
    st2 = running_status(phase="Restarting", attempt=2, podName="job-2", **patch)
    assert not reconcile(world(st=st2, pods=[pulling])).actions
    # the timeout passes: a new pod on another node, on the infrastructure budget
    late = pod(
        "job-2", phase="Pending", waiting="ImagePullBackOff", waiting_message=TRANSIENT_PULL, started_ago=601
    )
    step = reconcile(world(st=st2, pods=[late]))
    decided = only(step, PatchStatus).patch
    assert decided["phase"] == "Restarting" and decided["restarts"]["infrastructure"] == 1
    assert decided["pending"]["reason"] == "ImagePullTimeout" and decided["pending"]["avoidNode"] == "node-a"


def test_unschedulable_replacement_says_waiting_for_a_node() -> None:
    """A replacement pod with no node: the scheduler's message replaces the old "restarting now"."""
    st = running_status(
        phase="Restarting",
        attempt=2,
        podName="job-2",
        reason="SIGTERM",
        message="preempted; restarting now",
        lastEndStep=12,
    )
    step = reconcile(world(st=st, pods=[pod("job-2", phase="Pending", node=None, unschedulable_for=5)]))
    patch = only(step, PatchStatus).patch
    assert patch == {
        "reason": "Unschedulable",
        "message": "waiting for a node: 0/1 nodes are available: insufficient nvidia.com/gpu",
    }
    assert "phase" not in patch  # still Restarting: the counters and the phase tell what happened
    shown = st.model_copy(update={"reason": patch["reason"], "message": patch["message"]})
    again = reconcile(world(st=shown, pods=[pod("job-2", phase="Pending", node=None, unschedulable_for=9)]))
    assert not any(isinstance(a, PatchStatus) for a in again.actions)


def test_shared_volume_pod_on_unready_node_is_not_force_deleted_and_status_says_why() -> None:
    stuck = pod(running=True, deleted=True, disruption="DeletionByTaintManager")
    step = reconcile(
        world(st=running_status(), pods=[stuck], nodes={"node-a": UNREADY_90S}, shared_volume=True)
    )
    assert kinds(step) == ["PatchStatus", "Event"], step.actions  # no decision, no delete, no new pod
    patch = only(step, PatchStatus).patch
    assert patch["reason"] == "NodeUnreachable" and "phase" not in patch and "restarts" not in patch
    text = patch["message"]
    assert "ReadWriteMany" in text and "job-1" in text
    assert "kubectl taint nodes node-a node.kubernetes.io/out-of-service=nodeshutdown:NoExecute" in text
    event = only(step, Event)
    assert (event.type, event.reason, event.message) == ("Warning", "NodeUnreachable", text)
    assert step.requeue_seconds == WATCH_NODE_SECONDS  # a taint sends no pod event: look again
    # Shown once: the next pass neither patches nor posts again while nothing changed.
    shown = running_status(reason="NodeUnreachable", message=text)
    step = reconcile(world(st=shown, pods=[stuck], nodes={"node-a": UNREADY_90S}, shared_volume=True))
    assert step.actions == [] and step.requeue_seconds == WATCH_NODE_SECONDS


@pytest.mark.parametrize("node", ["unready, out-of-service taint", "Node object deleted"])
def test_shared_volume_pod_is_replaced_once_the_node_is_confirmed_down(node: str) -> None:
    stuck = pod(running=True, deleted=True, disruption="DeletionByTaintManager")
    nodes = {"node-a": NODE_TABLE[node]}
    step = reconcile(world(st=running_status(), pods=[stuck], nodes=nodes, shared_volume=True))
    patch = only(step, PatchStatus).patch
    assert patch["pending"]["reason"] == "NodeLost" and patch["restarts"]["preemption"] == 1
    st2 = running_status(**{k: v for k, v in patch.items() if k != "conditions"})
    step = reconcile(world(st=st2, pods=[stuck], nodes=nodes, shared_volume=True))
    assert kinds(step) == ["ReleasePod", "DeletePod"] and only(step, DeletePod).force


def test_shared_volume_pending_restart_waits_for_the_old_pod_and_says_why() -> None:
    st = running_status(phase="Restarting", pending={"action": "restart", "reason": "x", "podName": "job-1"})
    stuck = pod(running=True, deleted=True, finalizer=False)
    step = reconcile(world(st=st, pods=[stuck], nodes={"node-a": UNREADY_90S}, shared_volume=True))
    assert "DeletePod" not in kinds(step) and "CreatePod" not in kinds(step)
    assert only(step, PatchStatus).patch["reason"] == "NodeUnreachable"
    # ReadWriteOnce: the same pod is force-deleted on the timeout, as before.
    step = reconcile(world(st=st, pods=[stuck], nodes={"node-a": UNREADY_90S}))
    assert only(step, DeletePod).force


def test_shared_volume_node_back_clears_the_reason() -> None:
    shown = running_status(reason="NodeUnreachable", message="node node-a is not ready ...")
    step = reconcile(world(st=shown, pods=[pod(running=True)], shared_volume=True))
    assert only(step, PatchStatus).patch["reason"] == "NodeReady"


def test_shared_volume_suspend_on_unready_node_deletes_gracefully() -> None:
    step = reconcile(
        world(
            st=running_status(),
            pods=[pod(running=True)],
            sp=spec(suspend=True),
            nodes={"node-a": UNREADY_90S},
            shared_volume=True,
        )
    )
    assert only(step, DeletePod).force is False


SUPERSEDED_MESSAGE = {
    "reason": "Superseded",
    "message": "superseded: /checkpoints/run now belongs to attempt 3 (pod other-3, since t); this is "
    "attempt 1, stopping before writing checkpoint-15 without changing anything there",
    "step": 14,
    "checkpoint": "checkpoint-10",
    "checkpoint_step": 10,
}


def test_exit_73_of_the_current_attempt_fails_at_once_without_counting() -> None:
    out = classify(pod(exit_code=73, message=SUPERSEDED_MESSAGE), READY)
    assert out is not None and (out.end, out.reason) == ("Superseded", "Superseded")
    assert "another writer" in out.message and "attempt 3 (pod other-3" in out.message
    step = reconcile(world(st=running_status(), pods=[pod(exit_code=73, message=SUPERSEDED_MESSAGE)]))
    patch = only(step, PatchStatus).patch
    assert patch["phase"] == "Failed" and patch["reason"] == "Superseded" and "restarts" not in patch
    assert "CreatePod" not in kinds(step)


def test_an_older_attempt_ending_with_73_afterwards_changes_nothing() -> None:
    """Attempt 1's node came back after attempt 2 took over: its trainer was fenced (exit 73). Its pod is a
    stray to clean up, never judged: no restart counted, no lost steps, attempt 2 untouched."""
    st = running_status(attempt=2, podName="job-2", step=30, restarts={"preemption": 1}, lostSteps=2)
    old = pod("job-1", exit_code=73, message=SUPERSEDED_MESSAGE)
    step = reconcile(world(st=st, pods=[old, pod("job-2", running=True)]))
    assert kinds(step) == ["ReleasePod", "DeletePod"], step.actions
    assert {a.name for a in step.actions} == {"job-1"}  # type: ignore[attr-defined]
    # Also while the decision about attempt 1 is still pending (its pod named there): only cleanup.
    st = running_status(
        phase="Restarting",
        restarts={"preemption": 1},
        pending={"action": "restart", "reason": "NodeLost", "podName": "job-1"},
    )
    step = reconcile(world(st=st, pods=[old], shared_volume=True))
    assert kinds(step) == ["ReleasePod", "DeletePod"]


# =============================================================================== emergency save in time?


def ended_after_sigterm(exit_code: int, message: dict[str, Any] | None) -> Step:
    ended = pod(exit_code=exit_code, disruption="TerminationByKubelet", deleted=True, message=message)
    return reconcile(world(st=running_status(lateEmergencySaves=2), pods=[ended]))


def test_emergency_save_in_time_is_recorded_without_warning() -> None:
    message = {
        "reason": "Preempted",
        "step": 12,
        "checkpoint_step": 12,
        "save_seconds": 0.4,
        "save_in_time": True,
        "save_deadline_seconds": 10.0,
    }
    step = ended_after_sigterm(75, message)
    patch = only(step, PatchStatus).patch
    assert patch["lastEmergencySave"] == {
        "step": 12,
        "seconds": 0.4,
        "deadlineSeconds": 10.0,
        "inTime": True,
        "time": "2026-01-01T11:59:59.000Z",  # when the container ended
    }
    assert "lateEmergencySaves" not in patch
    assert not [a for a in step.actions if isinstance(a, Event) and a.reason == "EmergencySaveLate"]
    # the trainer wrote its message, then the kubelet's SIGKILL came before the process was gone: in time
    patch = only(ended_after_sigterm(137, message), PatchStatus).patch
    assert patch["lastEmergencySave"]["inTime"] is True and "lateEmergencySaves" not in patch


def test_emergency_save_past_the_deadline_is_counted_with_a_warning() -> None:
    message = {
        "reason": "Preempted",
        "step": 12,
        "checkpoint": "checkpoint-10",
        "checkpoint_step": 10,
        "save_in_time": False,
        "save_deadline_seconds": 10.0,
    }
    step = ended_after_sigterm(75, message)
    patch = only(step, PatchStatus).patch
    save = patch["lastEmergencySave"]
    assert (save["step"], save["seconds"], save["inTime"], save["deadlineSeconds"]) == (
        None,
        None,
        False,
        10.0,
    )
    assert patch["lateEmergencySaves"] == 3
    late = [a for a in step.actions if isinstance(a, Event) and a.reason == "EmergencySaveLate"]
    assert len(late) == 1 and late[0].type == "Warning"
    assert "10 s" in late[0].message and "checkpoint-10" in late[0].message
    decided = only(step, Decided)
    assert "not committed within the save deadline" in decided.outcome.message


def test_killed_during_the_emergency_save_is_late() -> None:
    patch = only(ended_after_sigterm(137, None), PatchStatus).patch
    assert patch["lastEmergencySave"]["inTime"] is False and patch["lateEmergencySaves"] == 3


def test_no_emergency_save_without_one_to_make() -> None:
    # SIGTERM before training began: nothing to save, nothing reported
    before = ended_after_sigterm(75, {"reason": "Preempted", "message": "SIGTERM before training started"})
    assert "lastEmergencySave" not in only(before, PatchStatus).patch
    # a node that went down and came back: no SIGTERM, no save attempted
    restarted = pod(exit_code=137, reason="ContainerStatusUnknown")
    step = reconcile(world(st=running_status(), pods=[restarted]))
    assert "lastEmergencySave" not in only(step, PatchStatus).patch
