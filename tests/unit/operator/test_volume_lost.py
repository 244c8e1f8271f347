"""A job's checkpoint claim deleted mid-run (the volume is lost; issue 14): with spec.checkpoint.objectStore
the operator treats it as recoverable (waits for the claim to go, creates a new one and the next pod, which
resumes from the store; status reason and one Warning Event VolumeLost; the restart spends the preemption
budget, never the error budget); without a store, or with the user's own existingClaimName, it goes on as
before (WaitingForClaim, then a fresh claim)."""

from __future__ import annotations

from typing import Any

from finetune_operator.actions import CreatePod, Decided, Event, PatchStatus
from finetune_operator.cache import WatchCache, cached_world
from finetune_operator.decisions import CLAIM_RECHECK_SECONDS, VOLUME_LOST, reconcile, volume_lost
from finetune_operator.views import ClaimView

from tests.unit.operator.decision_helpers import NOW, kinds, only, pod, running_status, spec, status, world

STORE = {
    "bucket": "checkpoints",
    "endpoint": "http://10.0.0.5:7070",
    "pathStyle": True,
    "credentials": {"secretName": "s3-keys"},
}
TERMINATING = ClaimView(name="job-checkpoints", exists=True, deleting=True, job_owner_uids=("uid-1",))
GONE = ClaimView(name="job-checkpoints")
THERE = ClaimView(name="job-checkpoints", exists=True, job_owner_uids=("uid-1",))


def store_spec(**checkpoint: Any) -> Any:
    return spec(checkpoint={"objectStore": STORE, **checkpoint})


def restarting(**kw: Any) -> Any:
    """Attempt 1 ended (its pod deleted with the claim) and a restart is pending; the pod is gone."""
    fields: dict[str, Any] = {
        "observedGeneration": 1,
        "phase": "Restarting",
        "reason": "PodDeleted",
        "attempt": 1,
        "podName": "job-1",
        "runDirectory": "runs/uid-1",
        "lastCheckpointStep": 12,
        "durableCheckpointStep": 12,
        "pending": {"action": "restart", "cause": "preemption", "reason": "PodDeleted", "podName": "job-1"},
    }
    fields.update(kw)
    return status(**fields)


def events(step: Any) -> list[Event]:
    return [a for a in step.actions if isinstance(a, Event)]


def test_a_lost_claim_counts_only_with_an_object_store_after_the_job_trained_on_it() -> None:
    assert volume_lost(world(st=restarting(), sp=store_spec(), claim=TERMINATING))
    assert volume_lost(world(st=restarting(), sp=store_spec(), claim=GONE))
    assert not volume_lost(world(st=restarting(), sp=store_spec(), claim=THERE))
    assert not volume_lost(world(st=restarting(), sp=store_spec(), claim=None))  # not looked at
    assert not volume_lost(world(st=restarting(), sp=spec(), claim=TERMINATING))  # no store: the only copy
    # the user's claim: the operator never creates it, so it cannot replace it
    assert not volume_lost(
        world(st=restarting(), sp=store_spec(existingClaimName="team-claim"), claim=TERMINATING)
    )
    # no attempt yet: a terminating claim is the previous job's of the same name (claim_blocker waits)
    assert not volume_lost(world(st=status(observedGeneration=1), sp=store_spec(), claim=TERMINATING))


def test_an_ephemeral_volume_is_new_with_every_pod_by_design_not_lost() -> None:
    ephemeral = store_spec(ephemeralVolume=True)
    assert not volume_lost(world(st=restarting(), sp=ephemeral, claim=GONE))
    step = reconcile(world(st=restarting(), sp=ephemeral, claim=GONE))
    assert only(step, CreatePod).attempt == 2  # the next pod at once, no VolumeLost, no wait for a claim
    assert VOLUME_LOST not in [e.reason for e in events(step)]


def test_with_an_object_store_the_job_waits_for_the_lost_claim_then_resumes_from_the_store() -> None:
    step = reconcile(world(st=restarting(), sp=store_spec(), claim=TERMINATING))
    assert "CreatePod" not in kinds(step) and step.requeue_seconds == CLAIM_RECHECK_SECONDS
    patch = only(step, PatchStatus).patch
    assert patch["reason"] == VOLUME_LOST
    assert patch["message"] == (
        "checkpoint volume lost (claim job-checkpoints was deleted): waiting for it to go, then a new claim; "
        "resuming from the store's newest committed checkpoint (step 12)"
    )
    (event,) = events(step)
    assert (event.type, event.reason, event.message) == ("Warning", VOLUME_LOST, patch["message"])

    # said once: the next looks while the claim terminates change nothing
    said = restarting(reason=VOLUME_LOST, message=patch["message"])
    again = reconcile(world(st=said, sp=store_spec(), claim=TERMINATING))
    assert again.actions == [] and again.requeue_seconds == CLAIM_RECHECK_SECONDS

    # gone: the next attempt (the executor creates the new claim with it), no second Event
    step = reconcile(world(st=said, sp=store_spec(), claim=GONE))
    create = only(step, CreatePod)
    assert create.attempt == 2 and create.run_directory == "runs/uid-1"
    assert create.status_patch["phase"] == "Restarting" and create.status_patch["reason"] == VOLUME_LOST
    assert "new claim" in create.status_patch["message"]
    assert create.event_message == (
        "created pod job-2 (attempt 2, run directory runs/uid-1, on a new claim: resuming from the store's "
        "newest committed checkpoint (step 12))"
    )
    assert not events(step)


def test_a_claim_already_gone_at_the_first_look_is_said_with_the_next_attempt() -> None:
    step = reconcile(world(st=restarting(), sp=store_spec(), claim=GONE))
    assert kinds(step)[-2:] == ["CreatePod", "Event"]  # the Event once the pod is on its way
    (event,) = events(step)
    assert event.type == "Warning" and event.reason == VOLUME_LOST
    assert event.message.startswith(
        "checkpoint volume lost (claim job-checkpoints was deleted): a new claim; resuming from the store's"
    )
    assert only(step, CreatePod).status_patch["reason"] == VOLUME_LOST


def test_nothing_durable_yet_says_training_starts_over() -> None:
    st = restarting(durableCheckpointStep=None)
    text = only(reconcile(world(st=st, sp=store_spec(), claim=TERMINATING)), PatchStatus).patch["message"]
    assert text.endswith("the store holds no committed checkpoint of this run yet: training starts over")


def test_without_an_object_store_a_deleted_claim_is_handled_as_before() -> None:
    step = reconcile(world(st=restarting(), sp=spec(), claim=TERMINATING))
    patch = only(step, PatchStatus).patch
    assert patch["reason"] == "WaitingForClaim" and "CreatePod" not in kinds(step)
    assert [e.reason for e in events(step)] == ["WaitingForClaim"]
    step = reconcile(world(st=restarting(), sp=spec(), claim=GONE))
    create = only(step, CreatePod)
    assert create.status_patch["reason"] == "PodDeleted" and "new claim" not in create.event_message
    assert VOLUME_LOST not in [e.reason for e in events(step)]


def test_the_pod_deleted_with_its_claim_spends_the_preemption_budget_not_the_error_budget() -> None:
    running = running_status(step=14, lastCheckpointStep=12, durableCheckpointStep=12)
    ended = pod("job-1", exit_code=75, deleted=True, message={"reason": "Preempted", "checkpoint_step": 14})
    step = reconcile(world(st=running, pods=[ended], sp=store_spec(), claim=TERMINATING))
    decided = only(step, Decided)
    assert decided.plan.action == "restart" and decided.plan.cause == "preemption", decided
    restarts = next(a.patch for a in step.actions if isinstance(a, PatchStatus) and "restarts" in a.patch)
    assert restarts["restarts"]["preemption"] == 1 and restarts["restarts"]["error"] == 0


def test_the_cache_leaves_a_missing_claim_of_an_object_store_job_to_the_api() -> None:
    """A claim the watch has not (or no longer) shown must be read before it counts as lost."""
    cache = WatchCache()
    body: dict[str, Any] = {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "job", "namespace": "ns", "uid": "uid-1", "generation": 1},
        "spec": store_spec().model_dump(by_alias=True, exclude_none=True),
        "status": {"phase": "Restarting", "attempt": 1, "podName": "job-1"},
    }
    cache.observe_job(("ns", "job"), body)
    now = NOW
    assert cached_world(cache, ("ns", "job"), now=now, node_lost_seconds=60) is None
    cache.observe_claim("ns", {"metadata": {"name": "job-checkpoints"}})
    assembled = cached_world(cache, ("ns", "job"), now=now, node_lost_seconds=60)
    assert assembled is not None and assembled.world.claim == ClaimView("job-checkpoints", exists=True)
    # before the first attempt, or without a store, a missing claim is simply not there yet (as before)
    cache.observe_claim("ns", {"metadata": {"name": "job-checkpoints"}}, deleted=True)
    assert cached_world(cache, ("ns", "job"), now=now, node_lost_seconds=60) is None
    cache.observe_job(("ns", "job"), {**body, "status": {}})
    assert cached_world(cache, ("ns", "job"), now=now, node_lost_seconds=60) is not None
    without_store = {
        **body,
        "metadata": {**body["metadata"], "generation": 2},  # a new spec (parsed once per generation)
        "spec": spec().model_dump(by_alias=True, exclude_none=True),
    }
    cache.observe_job(("ns", "job"), without_store)
    assert cached_world(cache, ("ns", "job"), now=now, node_lost_seconds=60) is not None
