"""The reconcile state machine: `reconcile(world)` → the `Step` of actions that moves the cluster one step
towards the job's desired state. executor.py carries them out and handlers.py calls `reconcile` again on
fresh state until nothing is left to do.

The layers it drives, each a pure function of plain data (design.md §3, "why a pod ended → what next"):
views.py (Kubernetes JSON → views), endings.py (`classify_end` → `Outcome`), policy.py (`plan_next` →
`Plan`), status_patches.py (status writes), actions.py (`World`, `Step`, the action types).

The single-writer rule lives here too: a new attempt is created only when no pod of the job exists at all
(not merely terminating); a pod on a node that is confirmed lost is force-deleted (see `endings.node_lost`).

Over 400 lines: one state machine (suspension, Kueue admission, the ended pod, the next attempt, the
running pod) read top to bottom; its classification (endings), policy and status patches are elsewhere.
"""

from __future__ import annotations

from finetune_api.contract import LEGACY_RUN_DIR, RUNS_DIR
from finetune_api.models import FineTuneJobStatus, Phase
from finetune_api.status import EmergencySave, OperatorStatus

from finetune_operator.actions import (
    AdoptPod,
    AnnotatePod,
    CreatePod,
    CreateWorkload,
    Decided,
    DeletePod,
    DeleteWorkload,
    Event,
    PatchStatus,
    PatchWorkloadStatus,
    Recovered,
    ReleasePod,
    Step,
    World,
)
from finetune_operator.endings import (
    CREATE_WAITING_REASONS,
    IMAGE_PULL_WAITING_REASONS,
    Outcome,
    classify_end,
    image_pull_seconds,
    node_lost,
    node_unconfirmed,
    node_unreachable_message,
)
from finetune_operator.kueue import LABEL_QUEUE_NAME, finished_patch, release_reservation_patch
from finetune_operator.names import (
    ANNOTATION_LAST_CHECKPOINT,
    ANNOTATION_LAST_CHECKPOINT_STEP,
    format_time,
    parse_time,
    pod_name,
)
from finetune_operator.policy import STORM_AFTER, Plan, plan_next
from finetune_operator.status_patches import decision_patch, emergency_save_status, phase_patch
from finetune_operator.views import ClaimView, PodView

#: status.reason while a pod on an unreachable node is not force-deleted (shared volume, node not confirmed).
NODE_UNREACHABLE = "NodeUnreachable"


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


#: status.reason and Warning Event: an object-store job's checkpoint claim was deleted (its volume is lost).
VOLUME_LOST = "VolumeLost"


def volume_lost(world: World) -> bool:
    """The job's checkpoint claim was deleted after it trained on it (terminating, or gone) while the job
    keeps the durable copy of its checkpoints in an object store: recoverable, a new claim and a resume from
    the store. Without a store the volume held the only copy, and with checkpoint.existingClaimName the
    claim is the user's (the operator never creates it): `claim_blocker` and the next pod go on as before."""
    claim, checkpoint = world.claim, world.spec.checkpoint
    if checkpoint.object_store is None or checkpoint.existing_claim_name or claim is None:
        return False
    if checkpoint.ephemeral_volume:  # a fresh volume with every pod, by design: nothing was lost
        return False
    return world.status.attempt > 0 and (claim.deleting or not claim.exists)


def _durable_text(status: FineTuneJobStatus) -> str:
    if status.durable_checkpoint_step is None:
        return "the store holds no committed checkpoint of this run yet: training starts over"
    return f"resuming from the store's newest committed checkpoint (step {status.durable_checkpoint_step})"


def run_directory(uid: str, status: FineTuneJobStatus) -> str:
    """This job's run directory on the claim: recorded in status at the first attempt (runs/<uid>); a job
    that started before run directories existed (attempts made, none recorded) keeps the legacy one."""
    if status.run_directory:
        return status.run_directory
    return LEGACY_RUN_DIR if status.attempt > 0 else f"{RUNS_DIR}/{uid}"


#: While a pod runs, look again this often even without events. A dead node sends no events itself, but
#: the node controller marks its pods not Ready (a pod event), and from then on `reconcile` asks to look
#: again exactly when the node will count as lost; this is only a safety net.
WATCH_NODE_SECONDS = 30.0


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
        step.actions.append(PatchStatus(OperatorStatus.patch(reason=NODE_UNREACHABLE, message=text)))
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


#: While a job is queued or runs under Kueue and its Workload was read from the API (not yet seen by the
#: operator's Workload watch): look again this soon, when the watch-fed cache will normally have it.
KUEUE_RECHECK_SECONDS = 2.0
#: The Workload is in the watch-fed cache: its changes (admission, eviction) wake the job; this is only the
#: safety net.
KUEUE_WATCHED_RECHECK_SECONDS = 60.0
#: Kueue's Workload API missing: look again this rarely.
KUEUE_MISSING_RECHECK_SECONDS = 30.0


def kueue_recheck_seconds(world: World) -> float:
    """How soon a queued (or Kueue-run) job looks at its Workload again without an event."""
    if not world.kueue_installed:
        return KUEUE_MISSING_RECHECK_SECONDS
    return KUEUE_WATCHED_RECHECK_SECONDS if world.workload_watched else KUEUE_RECHECK_SECONDS


def _queued(world: World, step: Step, reason: str, text: str, event_type: str = "Normal") -> None:
    """Phase Queued with `reason`/`text` (status and one Event per change)."""
    status = world.status
    if (status.phase, status.reason, status.message) == ("Queued", reason, text[:1024]):
        return
    step.actions.append(PatchStatus(phase_patch(status, "Queued", reason, text, world.now)))
    step.actions.append(Event("Warning" if event_type == "Warning" else "Normal", reason, text))


def _kueue_admits(world: World, step: Step) -> bool:
    """Kueue's say before the next attempt's pod (docs/operator.md "Kueue"): True when the job's Workload
    is admitted for exactly that pod; else the actions that get it there, and the job shows Queued."""
    queue, wl, status = world.queue, world.workload, world.status
    step.requeue(kueue_recheck_seconds(world))
    if not world.kueue_installed:
        _queued(
            world,
            step,
            "KueueNotInstalled",
            f"labelled {LABEL_QUEUE_NAME}={queue}, but Kueue's Workload API (kueue.x-k8s.io) is not"
            " installed: waiting for it (or remove the label to run without Kueue)",
            "Warning",
        )
        return False
    waiting = f"waiting for admission by Kueue (LocalQueue {queue})"
    if wl is None or not wl.exists:
        step.actions.append(CreateWorkload(status.attempt + 1))
        _queued(world, step, "WaitingForAdmission", waiting)
        return False
    if wl.deleting:
        _queued(world, step, "WaitingForAdmission", waiting)
        return False
    if wl.resources_key != world.next_resources_key or wl.queue != queue:
        # A Workload cannot be resized while it holds quota, and the larger request (memory raised after a
        # host OOM, an edited spec.resources) must be admitted against the quota: replace it.
        step.actions.append(DeleteWorkload(wl.name))
        step.actions.append(
            Event(
                "Normal",
                "Requeued",
                "the next attempt asks Kueue for other resources or another queue: its Workload is replaced "
                "and queued again",
            )
        )
        _queued(world, step, "WaitingForAdmission", waiting)
        return False
    if wl.evicted and wl.quota_reserved:  # the pod is gone: hand the quota back, Kueue requeues
        text = f"evicted by Kueue ({wl.evicted}: {wl.evicted_message or 'no detail'}); queued again"
        step.actions.append(PatchWorkloadStatus(wl.name, release_reservation_patch(wl, world.now, text)))
        _queued(world, step, "Evicted", text)
        return False
    if not wl.admitted or wl.evicted:
        if not wl.active:
            _queued(
                world,
                step,
                "Deactivated",
                f"its Kueue Workload {wl.name} is deactivated (spec.active: false)",
            )
        elif wl.inadmissible:  # a LocalQueue that does not exist (a typo), an inactive ClusterQueue, ...
            _queued(world, step, "Inadmissible", f"Kueue cannot queue it: {wl.inadmissible}", "Warning")
        elif (status.phase, status.reason) != ("Queued", "Evicted"):
            # After an eviction the job keeps saying why it waits until Kueue admits it again.
            _queued(world, step, "WaitingForAdmission", waiting)
        return False
    if status.phase == "Queued":
        step.actions.append(
            Event(
                "Normal",
                "Admitted",
                f"admitted by Kueue (ClusterQueue {wl.cluster_queue}, LocalQueue {queue})",
            )
        )
    return True


def _kueue_evicts_running(world: World, step: Step, current: PodView | None) -> bool:
    """Kueue evicted the job's Workload while its pod runs: stop the pod gracefully (emergency checkpoint);
    its end is a preemption, and the next attempt waits for admission. True when that is the case."""
    wl = world.workload
    if world.queue is None or wl is None or not wl.evicted or not wl.quota_reserved:
        return False
    if current is None or current.ended or current.deleting:
        return False
    text = f"Kueue evicted the job ({wl.evicted}: {wl.evicted_message or 'no detail'})"
    step.actions.append(DeletePod(current.name))
    step.actions.append(Event("Normal", "Evicted", f"{text}: stopping {current.name} (emergency checkpoint)"))
    step.actions.append(
        PatchStatus(OperatorStatus.patch(message=f"{text}: waiting for the trainer's emergency checkpoint"))
    )
    return True


def _kueue_release(world: World, step: Step, finished: bool) -> None:
    """The job ended (finished) or is suspended: give its quota back."""
    wl = world.workload
    if world.queue is None or wl is None or not wl.exists or wl.deleting:
        return
    if finished:
        if not wl.finished:
            succeeded = world.status.phase == "Succeeded"
            text = world.status.message or ("job succeeded" if succeeded else "job failed")
            step.actions.append(PatchWorkloadStatus(wl.name, finished_patch(wl, world.now, succeeded, text)))
    else:
        step.actions.append(DeleteWorkload(wl.name))


def _create_next(world: World, step: Step, phase: Phase, reason: str, message: str) -> None:
    status = world.status
    if world.queue is not None and not world.pods and not _kueue_admits(world, step):
        return
    attempt = status.attempt + 1
    name = pod_name(world.name, attempt)
    directory = run_directory(world.uid, status)
    existing = {p.name: p for p in world.pods}
    patch = phase_patch(status, phase, reason, message, world.now)
    patch.update(OperatorStatus.patch(attempt=attempt, pod_name=name, pending=None, next_attempt_time=None))
    if status.start_time is None:
        patch.update(OperatorStatus.patch(start_time=format_time(world.now)))
    if status.run_directory != directory:
        patch.update(OperatorStatus.patch(run_directory=directory))
    if status.started_from is None:  # the trainer names the exact checkpoint once it has chosen one
        patch.update(OperatorStatus.patch(started_from=world.spec.checkpoint.resume_from or "fresh"))
    if name in existing and (not existing[name].owner_uids or world.uid in existing[name].owner_uids):
        step.actions.append(AdoptPod(name, patch))
        return
    others = list(world.pods)  # incl. a pod with our name left by an earlier job of the same name
    if others:  # single writer: wait until every older pod is gone, not merely terminating
        for pod in others:
            _cleanup_pod(step, pod, world)
        step.requeue(WATCH_NODE_SECONDS)
        return
    lost = volume_lost(world)
    blocked = claim_blocker(world.claim, world.uid)
    if lost:
        # Said once, when first seen: the claim still terminating (then waited for), or already gone.
        text = _volume_lost_text(world, waiting=blocked is not None)
        said = status.reason == VOLUME_LOST
        if blocked is not None:
            step.requeue(CLAIM_RECHECK_SECONDS)
            if not said:
                step.actions.append(PatchStatus(OperatorStatus.patch(reason=VOLUME_LOST, message=text)))
                step.actions.append(Event("Warning", VOLUME_LOST, text))
            return
        patch.update(phase_patch(status, phase, VOLUME_LOST, text, world.now))
    elif blocked is not None:
        _wait_for_claim(world, step, blocked)
        return
    how = f"run directory {directory}"
    if lost:
        how += f", on a new claim: {_durable_text(status)}"
    elif status.last_checkpoint is None and world.spec.checkpoint.resume_from:
        how += f", continuing from {world.spec.checkpoint.resume_from} if it has no checkpoint yet"
    step.actions.append(
        CreatePod(
            attempt, directory, patch, "AttemptCreated", f"created pod {name} (attempt {attempt}, {how})"
        )
    )
    if lost and not said:
        step.actions.append(Event("Warning", VOLUME_LOST, text))


#: How often a job waiting for its previous claim to go looks again (the claim's deletion sends no job event).
CLAIM_RECHECK_SECONDS = 2.0


def _volume_lost_text(world: World, waiting: bool) -> str:
    claim = world.claim.name if world.claim is not None else "the checkpoint claim"
    then = "waiting for it to go, then a new claim" if waiting else "a new claim"
    return f"checkpoint volume lost (claim {claim} was deleted): {then}; {_durable_text(world.status)}"


def _wait_for_claim(world: World, step: Step, text: str) -> None:
    status = world.status
    step.requeue(CLAIM_RECHECK_SECONDS)
    if (status.reason, status.message) == ("WaitingForClaim", text):
        return  # already shown, Event posted
    if status.phase is None:
        step.actions.append(PatchStatus(phase_patch(status, "Pending", "WaitingForClaim", text, world.now)))
    else:
        step.actions.append(PatchStatus(OperatorStatus.patch(reason="WaitingForClaim", message=text)))
    step.actions.append(Event("Normal", "WaitingForClaim", text))


def reconcile(world: World) -> Step:
    """One step towards the job's desired state. Re-run on fresh state after executing the actions."""
    step = Step()
    status, spec, now = world.status, world.spec, world.now
    pods = {p.name: p for p in world.pods}

    if status.observed_generation != world.generation:
        step.actions.append(PatchStatus(OperatorStatus.patch(observed_generation=world.generation)))

    # --- finished jobs: keep the last pod for `kubectl logs`, stop anything still running ----------
    if status.phase in ("Succeeded", "Failed"):
        for pod in world.pods:
            if not pod.ended and not pod.deleting:
                step.actions.append(DeletePod(pod.name))
            elif pod.tracked and (pod.ended or pod.deleting):
                step.actions.append(ReleasePod(pod.name))
        _kueue_release(world, step, finished=True)
        return step

    # --- a recorded decision still being carried out --------------------------------------------------
    pending = status.pending
    if pending is not None and pending.action == "restart":
        old = pods.get(pending.pod_name)
        if old is not None:
            _cleanup_pod(step, old, world)
            return step
        if spec.suspend:
            _kueue_release(world, step, finished=False)
            step.actions.append(PatchStatus(OperatorStatus.patch(pending=None, next_attempt_time=None)))
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
            if not world.pods:
                _kueue_release(world, step, finished=False)
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
                PatchStatus(
                    OperatorStatus.patch(message="suspending: waiting for the trainer's emergency checkpoint")
                )
            )
            return step
        # the current pod is stopping or stopped: classified below, and the plan is "stop"

    if _kueue_evicts_running(world, step, current):
        return step

    # --- no attempt yet, or resuming after a suspension --------------------------------------------------
    if status.pod_name is None:
        _create_next(world, step, "Pending", "Created", "creating the first trainer pod")
        return step
    if status.phase == "Suspended" or (status.phase == "Queued" and current is None):
        # (Queued with an earlier attempt recorded: a resumed job waiting for Kueue's admission)
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
        if world.queue is not None:  # an eviction sends no job or pod event: a Workload event, or this
            step.requeue(kueue_recheck_seconds(world))
        return step

    plan = plan_next(spec, status, outcome)
    patch = decision_patch(status, outcome, plan, status.pod_name, now)
    save = emergency_save_status(current, outcome, now)
    if save is not None:
        patch.update(OperatorStatus.patch(last_emergency_save=save))
        if not save.in_time:
            patch.update(OperatorStatus.patch(late_emergency_saves=status.late_emergency_saves + 1))
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
    if (
        current is not None
        and plan.action == "restart"
        and current.deleting
        and (current.ended or not current.node_name)
    ):
        # Its end is recorded by the write above (conditional, first): let it go in the same pass instead
        # of a pass of its own, as the next pass would (`_cleanup_pod`); a burst of preemptions is mostly
        # API round trips.
        if current.tracked:
            step.actions.append(ReleasePod(current.name))
        if current.ended and (current.deletion_grace_seconds or 0) > 0:
            step.actions.append(DeletePod(current.name, grace_seconds=0, force=True))
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


def _late_save_event(save: EmergencySave, pod_name: str | None, checkpoint_step: int | None) -> Event:
    deadline = f" of {save.deadline_seconds:g} s" if save.deadline_seconds else ""
    older = f"checkpoint-{checkpoint_step}" if checkpoint_step is not None else "the start"
    return Event(
        "Warning",
        "EmergencySaveLate",
        f"{pod_name or 'the trainer'}: the emergency checkpoint was not committed within the save deadline"
        f"{deadline}; resuming from {older}. If the nodes give more time, raise "
        "checkpoint.terminationGracePeriodSeconds or scheduling.preemptionNoticeSeconds; "
        "else save more often",
    )


def _cap(cause: str | None) -> str:
    return (cause or "")[:1].upper() + (cause or "")[1:]


def _while_running(world: World, pod: PodView, step: Step) -> None:
    status, now = world.status, world.now
    if _say_why_waiting_for_node(step, pod, world):
        return
    if status.reason == NODE_UNREACHABLE:
        step.actions.append(
            PatchStatus(
                OperatorStatus.patch(
                    reason="NodeReady", message=f"node {pod.node_name} is back; {pod.name} carries on"
                )
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
            step.actions.append(PatchStatus(OperatorStatus.patch(streak=None)))
        ended = parse_time(status.last_pod_end_time)
        if ended is not None:
            step.actions.append(Recovered(max(0.0, (now - ended).total_seconds())))
    elif status.phase in (None, "Pending", "Restarting") and pod.unschedulable_since is not None:
        # the scheduler's words replace "restarting now" while a replacement has no node
        text = f"waiting for a node: {pod.unschedulable_message or 'unschedulable'}"
        if status.message != text[:1024]:
            step.actions.append(
                PatchStatus(OperatorStatus.patch(message=text[:1024], reason="Unschedulable"))
            )
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
        step.actions.append(PatchStatus(OperatorStatus.patch(reason=pod.waiting_reason, message=text[:1024])))
    waited = image_pull_seconds(pod, world.now)
    if timeout and waited is not None:
        step.requeue(timeout - waited + 0.5)
