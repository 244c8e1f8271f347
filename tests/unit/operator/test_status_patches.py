"""status_patches.py: the status a decision writes (counters, pending restart, conditions)."""

from __future__ import annotations

from datetime import timedelta

from finetune_operator.policy import plan_next
from finetune_operator.status_patches import conditions_for, decision_patch

from tests.unit.operator.decision_helpers import (
    NOW,
    READY,
    T,
    classify,
    outcome,
    pod,
    running_status,
    spec,
    status,
)


def test_decision_patch_records_counters_pending_and_backoff() -> None:
    st = status(
        phase="Running",
        attempt=2,
        podName="job-2",
        step=17,
        lastCheckpointStep=15,
        restarts={"preemption": 1},
        restartsTotal=1,
        lostSteps=3,
    )
    out = outcome("Error", reason="ExitCode1", finished_at=NOW - timedelta(seconds=2))
    plan = plan_next(spec(), st, out)
    patch = decision_patch(st, out, plan, "job-2", NOW)
    assert patch["phase"] == "Restarting"
    assert patch["restarts"] == {"preemption": 1, "hostOOM": 0, "cudaOOM": 0, "error": 1, "infrastructure": 0}
    assert patch["restartsTotal"] == 2
    assert patch["lostSteps"] == 5
    assert patch["lastEndStep"] == 17
    assert patch["pending"]["podName"] == "job-2" and patch["pending"]["cause"] == "error"
    assert patch["pending"]["notBefore"] == T(NOW + timedelta(seconds=10)) == patch["nextAttemptTime"]
    assert patch["lastPodEndTime"] == T(NOW - timedelta(seconds=2))
    running = next(c for c in patch["conditions"] if c["type"] == "Running")
    assert running["status"] == "False"


def test_decision_patch_fail_is_terminal() -> None:
    st = status(phase="Running", attempt=1, podName="job-1")
    out = outcome("ConfigError", reason="ImagePullBackOff", message="cannot pull")
    patch = decision_patch(st, out, plan_next(spec(), st, out), "job-1", NOW)
    assert patch["phase"] == "Failed" and patch["pending"] is None and "completionTime" in patch
    failed = next(c for c in patch["conditions"] if c["type"] == "Failed")
    assert failed["status"] == "True" and failed["reason"] == "ImagePullBackOff"
    assert "restarts" not in patch


def test_conditions_keep_transition_time_when_unchanged() -> None:
    first = conditions_for("Running", "A", "a", NOW, [])
    from finetune_api.models import Condition

    later = conditions_for(
        "Running", "B", "b", NOW + timedelta(hours=1), [Condition.model_validate(c) for c in first]
    )
    assert [c["lastTransitionTime"] for c in later] == [c["lastTransitionTime"] for c in first]


def test_an_ended_attempt_clears_the_time_estimate() -> None:
    st = running_status(stepsPerSecond=0.5, estimatedRemainingSeconds=56, remaining="56s")
    out = classify(pod(exit_code=75, disruption="EvictionByEvictionAPI"), READY)
    assert out is not None
    plan = plan_next(spec(), st, out)
    patch = decision_patch(st, out, plan, "job-1", NOW)
    assert patch["estimatedRemainingSeconds"] is None and patch["remaining"] is None
    assert "stepsPerSecond" not in patch  # the last measured rate stays visible
