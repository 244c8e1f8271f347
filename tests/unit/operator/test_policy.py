"""policy.py: what comes after an ending: budgets, backoffs, restart storms, OOM adaptations."""

from __future__ import annotations

import pytest
from finetune_operator.policy import (
    halve_batch,
    lost_steps,
    memory_cap,
    plan_next,
    streak_after,
)
from finetune_operator.status_patches import decision_patch
from finetune_operator.views import NodeView

from tests.unit.operator.decision_helpers import (
    NOW,
    READY,
    VOLUME_FULL_MESSAGE,
    admission_failure,
    classify,
    outcome,
    pod,
    spec,
    status,
)


def test_preemption_restarts_at_once_always() -> None:
    for n in (0, 1, 5, 50, 999):
        plan = plan_next(spec(), status(restarts={"preemption": n}), outcome("Preempted"))
        assert (plan.action, plan.cause, plan.delay_seconds) == ("restart", "preemption", 0.0)


def test_preemption_budget() -> None:
    s = spec(restartPolicy={"maxPreemptions": 3})
    plan = plan_next(s, status(restarts={"preemption": 3}), outcome("Preempted"))
    assert (plan.action, plan.reason) == ("fail", "PreemptionBudgetExhausted")
    assert "maxPreemptions=3" in plan.message


def test_preemptions_do_not_spend_error_budget() -> None:
    s = spec(restartPolicy={"maxFailures": 0})
    plan = plan_next(s, status(restarts={"preemption": 10}), outcome("Preempted"))
    assert plan.action == "restart"


def test_error_backoff_doubles_and_caps() -> None:
    s = spec(restartPolicy={"backoffSeconds": 10, "maxBackoffSeconds": 300, "maxFailures": 100})
    delays = [plan_next(s, status(restarts={"error": n}), outcome("Error")).delay_seconds for n in range(7)]
    assert delays == [10, 20, 40, 80, 160, 300, 300]


def test_error_budget_exhausted() -> None:
    s = spec(restartPolicy={"maxFailures": 2})
    assert plan_next(s, status(restarts={"error": 1}), outcome("Error")).action == "restart"
    plan = plan_next(s, status(restarts={"error": 2}), outcome("Error", message="exit 1: boom"))
    assert (plan.action, plan.reason) == ("fail", "FailureBudgetExhausted")
    assert "boom" in plan.message and "maxFailures=2" in plan.message


def test_host_oom_raises_memory_by_factor() -> None:
    plan = plan_next(spec(), status(), outcome("HostOOM"))
    assert plan.action == "restart" and plan.cause == "hostOOM"
    assert plan.effective is not None and plan.effective.memory == "1536Mi"
    assert plan.change == "memory 1Gi → 1536Mi"


def test_host_oom_uses_effective_memory_and_cap() -> None:
    s = spec(resources={"memory": "1Gi", "maxMemory": "2Gi"})
    plan = plan_next(s, status(effective={"memory": "1536Mi"}), outcome("HostOOM"))
    assert plan.effective is not None and plan.effective.memory == "2Gi"  # min(cap, 2304Mi)
    plan = plan_next(s, status(effective={"memory": "2Gi"}), outcome("HostOOM"))
    assert (plan.action, plan.reason) == ("fail", "OOMAtMemoryCap") and "maxMemory" in plan.message


def test_host_oom_default_cap_is_memory_times_two_factor() -> None:
    s = spec(resources={"memory": "1Gi"}, restartPolicy={"oomMemoryFactor": 2.0})
    assert memory_cap(s) == 4 * 2**30
    plan = plan_next(s, status(effective={"memory": "4Gi"}), outcome("HostOOM"))
    assert plan.reason == "OOMAtMemoryCap"


def test_host_oom_without_memory_limit_restarts_unchanged() -> None:
    s = spec(resources={"memory": None})
    plan = plan_next(s, status(), outcome("HostOOM"))
    assert plan.action == "restart" and plan.effective is None and "no memory limit" in plan.message


def test_cuda_oom_halves_batch_doubles_accumulation() -> None:
    plan = plan_next(spec(), status(), outcome("CudaOOM", batch=8, accumulation=1))
    assert plan.effective is not None
    assert (plan.effective.per_device_train_batch_size, plan.effective.gradient_accumulation_steps) == (4, 2)
    assert "effective batch 8 unchanged" in (plan.change or "")


def test_cuda_oom_without_message_uses_effective_then_spec() -> None:
    plan = plan_next(
        spec(),
        status(effective={"perDeviceTrainBatchSize": 4, "gradientAccumulationSteps": 2}),
        outcome("CudaOOM"),
    )
    assert plan.effective is not None
    assert (plan.effective.per_device_train_batch_size, plan.effective.gradient_accumulation_steps) == (2, 4)


def test_cuda_oom_odd_batch_keeps_effective_batch_exact() -> None:
    assert halve_batch(6) == 3 and halve_batch(3) == 1 and halve_batch(9) == 3 and halve_batch(7) == 1
    plan = plan_next(spec(), status(), outcome("CudaOOM", batch=3, accumulation=2))
    assert plan.effective is not None and plan.effective.gradient_accumulation_steps == 6


def test_cuda_oom_at_batch_one_fails() -> None:
    plan = plan_next(spec(), status(), outcome("CudaOOM", batch=1, accumulation=8))
    assert (plan.action, plan.reason) == ("fail", "CudaOOMAtBatchOne")


def test_oom_budget_is_shared_by_host_and_cuda() -> None:
    s = spec(restartPolicy={"maxOomRestarts": 2})
    st = status(restarts={"hostOOM": 1, "cudaOOM": 1, "preemption": 50, "error": 0})
    for end in ("HostOOM", "CudaOOM"):
        plan = plan_next(s, st, outcome(end, batch=8))  # type: ignore[arg-type]
        assert (plan.action, plan.reason) == ("fail", "OOMBudgetExhausted")


def test_config_error_and_unschedulable_fail_at_once() -> None:
    for end in ("ConfigError", "Unschedulable"):
        plan = plan_next(spec(), status(), outcome(end, reason="ImagePullBackOff"))  # type: ignore[arg-type]
        assert plan.action == "fail" and plan.cause is None


def test_completed_succeeds_even_when_suspending() -> None:
    assert plan_next(spec(suspend=True), status(), outcome("Completed")).action == "succeed"


def test_suspend_turns_any_end_into_stop_without_counting() -> None:
    for end in ("Preempted", "Error", "HostOOM"):
        plan = plan_next(spec(suspend=True), status(), outcome(end))  # type: ignore[arg-type]
        assert plan.action == "stop" and plan.cause is None


def test_lost_steps() -> None:
    # reported step 17, committed 15 at the end → 2 steps to redo
    st = status(step=17, lastCheckpointStep=15)
    assert lost_steps(st, outcome("Error")) == 2
    # the termination message wins where it knows more
    assert lost_steps(st, outcome("Preempted", step=18, checkpoint_step=18)) == 0
    # nothing reported since the previous end: the stale step is not counted twice
    st = status(step=17, lastEndStep=17, lastCheckpointStep=10)
    assert lost_steps(st, outcome("Error")) == 0
    # never committed: everything is lost
    assert lost_steps(status(step=4), outcome("Error")) == 4


def test_volume_full_fails_at_once_with_advice_not_a_blind_retry() -> None:
    out = classify(pod(exit_code=74, message=VOLUME_FULL_MESSAGE), READY)
    assert out is not None
    small = spec(checkpoint={"volumeSize": "2Gi"}, training={"save_total_limit": 3})
    plan = plan_next(small, status(), out)
    assert (plan.action, plan.reason, plan.cause) == ("fail", "VolumeFull", None)
    assert "61440 bytes free" in plan.message
    assert "raise spec.checkpoint.volumeSize (now 2Gi)" in plan.message
    assert "lower spec.training.save_total_limit (now 3)" in plan.message

    shared = plan_next(spec(checkpoint={"existingClaimName": "team-ckpts"}), status(), out)
    assert "grow the PersistentVolumeClaim team-ckpts" in shared.message
    assert "volumeSize" not in shared.message


def test_start_failure_restarts_with_backoff_on_another_node_on_its_own_budget() -> None:
    s = spec(restartPolicy={"backoffSeconds": 10, "maxBackoffSeconds": 300, "maxFailures": 0})
    out = outcome("StartFailure", reason="StartError", node="gpu-7")
    plan = plan_next(s, status(), out)
    assert (plan.action, plan.cause, plan.delay_seconds, plan.avoid_node) == (
        "restart",
        "infrastructure",
        10,
        "gpu-7",
    )
    # again in a row: the delay doubles; the error budget (maxFailures=0) is never touched
    st = status(restarts={"infrastructure": 1}, streak={"reason": "StartError", "count": 1})
    assert plan_next(s, st, out).delay_seconds == 20
    patch = decision_patch(st, out, plan_next(s, st, out), "job-2", NOW)
    assert patch["restarts"]["infrastructure"] == 2 and patch["restarts"]["error"] == 0
    assert patch["pending"]["avoidNode"] == "gpu-7" and patch["pending"]["cause"] == "infrastructure"
    assert patch["streak"] == {"reason": "StartError", "count": 2}


def test_start_failure_budget() -> None:
    s = spec(restartPolicy={"maxInfrastructureRestarts": 2})
    out = outcome("StartFailure", reason="ImagePullTimeout", node="gpu-7")
    assert plan_next(s, status(restarts={"infrastructure": 1}), out).action == "restart"
    plan = plan_next(s, status(restarts={"infrastructure": 2}), out)
    assert (plan.action, plan.reason) == ("fail", "InfrastructureBudgetExhausted")
    assert "maxInfrastructureRestarts=2" in plan.message


@pytest.mark.parametrize("reason", ["UnexpectedAdmissionError", "OutOfnvidia.com/gpu", "OutOfcpu"])
def test_repeated_admission_failures_back_off_after_a_few(reason: str) -> None:
    """A bad GPU: the kubelet rejects pod after pod at once. The first ones restart at once, then a short
    doubling backoff, preferring another node, on the preemption budget (no work was lost)."""
    s = spec(restartPolicy={"backoffSeconds": 10, "maxBackoffSeconds": 60})
    out = classify(admission_failure(reason), NodeView("gpu-7"))
    assert out is not None and out.end == "Preempted" and out.node_trouble and out.node == "gpu-7"
    delays, streak = [], None
    for _ in range(7):
        plan = plan_next(s, status(streak=streak), out)
        assert plan.action == "restart" and plan.cause == "preemption" and plan.avoid_node == "gpu-7"
        delays.append(plan.delay_seconds)
        streak = {"reason": reason, "count": plan.streak}
    assert delays == [0, 0, 10, 20, 40, 60, 60]


def test_repeated_kubelet_evictions_back_off() -> None:
    p = pod(exit_code=137, reason="Error", disruption="TerminationByKubelet", node="gpu-7")
    p["status"]["reason"] = "Evicted"
    p["status"]["message"] = "The node was low on resource: ephemeral-storage."
    out = classify(p, READY)
    assert out is not None and out.end == "Preempted" and out.node_trouble
    assert "low on resource: ephemeral-storage" in out.message
    st = status(streak={"reason": out.reason, "count": 2})
    assert plan_next(spec(), st, out).delay_seconds == 10


@pytest.mark.parametrize(
    "disruption", ["EvictionByEvictionAPI", "DeletionByTaintManager", "PreemptionByScheduler"]
)
def test_real_disruptions_stay_immediate_even_in_a_streak(disruption: str) -> None:
    """Drain, NoExecute taint, priority preemption: another node or capacity comes from elsewhere."""
    out = classify(pod(exit_code=75, disruption=disruption), READY)
    assert out is not None and not out.node_trouble
    plan = plan_next(spec(), status(streak={"reason": disruption, "count": 9}), out)
    assert (plan.delay_seconds, plan.avoid_node, plan.streak) == (0, None, 10)


def test_streak_counts_only_the_same_reason_in_a_row() -> None:
    out = outcome("Preempted", reason="UnexpectedAdmissionError", node_trouble=True)
    assert streak_after(status(), out) == 1
    assert streak_after(status(streak={"reason": "UnexpectedAdmissionError", "count": 4}), out) == 5
    assert streak_after(status(streak={"reason": "OutOfcpu", "count": 4}), out) == 1


def test_host_oom_after_the_user_raised_memory_adapts_from_the_raise() -> None:
    """After one OOM (1Gi → 1536Mi) the user raises resources.memory to 4Gi: the next OOM starts from 4Gi."""
    s = spec(resources={"memory": "4Gi"})
    plan = plan_next(s, status(effective={"memory": "1536Mi"}), outcome("HostOOM"))
    assert plan.effective is not None and plan.effective.memory == "6Gi"
    assert plan.change == "memory 4Gi → 6Gi"
