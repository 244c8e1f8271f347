"""decisions.py: every row of design.md §3's "why a pod ended → what next" table, the ambiguous
cases, budgets, adaptations, and the reconcile state machine (single writer, restart safety, suspension)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from finetune_api.models import FineTuneJobSpec, FineTuneJobStatus
from finetune_operator import decisions as d

NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
T = d.format_time


def spec(**overrides: Any) -> FineTuneJobSpec:
    doc: dict[str, Any] = {
        "model": {"name_or_path": "/models/tiny"},
        "dataset": {"path": "/data/train.jsonl"},
        "training": {"max_steps": 40, "save_steps": 5, "per_device_train_batch_size": 8},
        "resources": {"gpus": 0, "cpu": "1", "memory": "1Gi"},
    }
    for key, value in overrides.items():
        doc[key] = {**doc.get(key, {}), **value} if isinstance(value, dict) else value
    return FineTuneJobSpec.model_validate(doc)


def status(**fields: Any) -> FineTuneJobStatus:
    return FineTuneJobStatus.model_validate(fields)


def pod(
    name: str = "job-1",
    *,
    phase: str = "Running",
    node: str | None = "node-a",
    exit_code: int | None = None,
    reason: str | None = None,
    message: dict[str, Any] | str | None = None,
    disruption: str | None = None,
    deleted: bool = False,
    waiting: str | None = None,
    waiting_message: str | None = None,
    started_ago: float | None = None,
    running: bool = False,
    unschedulable_for: float | None = None,
    finalizer: bool = True,
    annotations: dict[str, str] | None = None,
    owner: str = "uid-1",
) -> dict[str, Any]:
    state: dict[str, Any] = {}
    if exit_code is not None:
        term: dict[str, Any] = {"exitCode": exit_code, "finishedAt": "2026-01-01T11:59:59Z"}
        if reason:
            term["reason"] = reason
        if message is not None:
            term["message"] = json.dumps(message) if isinstance(message, dict) else message
        state["terminated"] = term
        phase = "Succeeded" if exit_code == 0 else "Failed"
    elif waiting:
        state["waiting"] = {"reason": waiting, "message": waiting_message or f"{waiting} detail"}
    elif running:
        state["running"] = {"startedAt": "2026-01-01T11:00:00Z"}
    conditions = []
    if disruption:
        conditions.append({"type": "DisruptionTarget", "status": "True", "reason": disruption})
    if unschedulable_for is not None:
        conditions.append(
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": "0/1 nodes are available: insufficient nvidia.com/gpu",
                "lastTransitionTime": T(NOW - timedelta(seconds=unschedulable_for)),
            }
        )
    meta: dict[str, Any] = {
        "name": name,
        "uid": f"pod-{name}",
        "labels": {d.LABEL_JOB: "job", d.LABEL_ATTEMPT: name.rsplit("-", 1)[-1]},
        "finalizers": [d.POD_FINALIZER] if finalizer else [],
        "ownerReferences": [{"uid": owner}],
        "annotations": annotations or {},
    }
    if deleted:
        meta["deletionTimestamp"] = T(NOW - timedelta(seconds=1))
        meta["deletionGracePeriodSeconds"] = 30
    body: dict[str, Any] = {
        "metadata": meta,
        "spec": {"nodeName": node} if node else {},
        "status": {
            "phase": phase,
            "conditions": conditions,
            "containerStatuses": [{"name": "trainer", "state": state}] if state else [],
        },
    }
    if started_ago is not None:
        body["status"]["startTime"] = T(NOW - timedelta(seconds=started_ago))
    return body


def classify(p: dict[str, Any] | None, node: d.NodeView | None = None, **kw: Any) -> d.Outcome | None:
    return d.classify_end(d.pod_view(p) if p is not None else None, node, NOW, **kw)


READY = d.NodeView("node-a")


# =============================================================================== classify: the table


@pytest.mark.parametrize(
    "reason",
    [
        "PreemptionByScheduler",
        "EvictionByEvictionAPI",
        "DeletionByTaintManager",
        "DeletionByPodGC",
        "TerminationByKubelet",
    ],
)
def test_disruption_target_is_preemption(reason: str) -> None:
    out = classify(
        pod(
            exit_code=75,
            disruption=reason,
            message={"reason": "Preempted", "step": 12, "checkpoint_step": 12},
        ),
        READY,
    )
    assert out is not None and out.end == "Preempted" and out.reason == reason
    assert out.step == 12 and out.checkpoint_step == 12


def test_exit_75_without_condition_is_preemption() -> None:
    out = classify(pod(exit_code=75), READY)
    assert out is not None and (out.end, out.reason) == ("Preempted", "SIGTERM")


def test_deleted_by_user_is_preemption() -> None:
    out = classify(pod(exit_code=75, deleted=True), READY)
    assert out is not None and (out.end, out.reason) == ("Preempted", "PodDeleted")


def test_pod_gone_unseen_is_preemption() -> None:
    out = classify(None)
    assert out is not None and (out.end, out.reason) == ("Preempted", "PodVanished")


def test_kubelet_eviction_reason_is_preemption() -> None:
    p = pod(exit_code=137)
    p["status"]["reason"] = "Evicted"
    out = classify(p, READY)
    assert out is not None and out.end == "Preempted"


def test_oomkilled_is_host_oom() -> None:
    out = classify(pod(exit_code=137, reason="OOMKilled"), READY)
    assert out is not None and (out.end, out.reason) == ("HostOOM", "OOMKilled")


def test_exit_137_without_disruption_is_host_oom() -> None:
    out = classify(pod(exit_code=137, reason="Error"), READY)
    assert out is not None and (out.end, out.reason) == ("HostOOM", "Killed")


def test_exit_137_when_the_node_restarted_is_preemption() -> None:
    """A spot VM or kubelet restart kills every container (SIGKILL, no DisruptionTarget): not an OOM."""
    came_back = d.NodeView("node-a", ready="True", ready_since=datetime(2026, 1, 1, 12, 0, 10, tzinfo=UTC))
    out = classify(
        pod(exit_code=137, reason="Error"), came_back
    )  # finished 11:59:59, Ready again at 12:00:10
    assert out is not None and (out.end, out.reason) == ("Preempted", "NodeRestarted")
    steady = d.NodeView("node-a", ready="True", ready_since=datetime(2026, 1, 1, 8, 0, 0, tzinfo=UTC))
    out = classify(pod(exit_code=137, reason="Error"), steady)
    assert out is not None and out.end == "HostOOM"
    # the kernel's verdict wins even then
    out = classify(pod(exit_code=137, reason="OOMKilled"), came_back)
    assert out is not None and out.end == "HostOOM"


def test_container_status_unknown_is_preemption() -> None:
    out = classify(pod(exit_code=137, reason="ContainerStatusUnknown"), READY)
    assert out is not None and (out.end, out.reason) == ("Preempted", "NodeRestarted")


def test_exit_137_with_disruption_is_preemption_past_grace() -> None:
    out = classify(
        pod(exit_code=137, reason="Error", disruption="EvictionByEvictionAPI"), READY, grace_seconds=120
    )
    assert out is not None and out.end == "Preempted" and "120 s" in out.message


def test_oom_during_emergency_save_is_host_oom() -> None:
    """Evicted, then OOM-killed while writing the emergency checkpoint: memory is the real problem."""
    out = classify(pod(exit_code=137, reason="OOMKilled", disruption="EvictionByEvictionAPI"), READY)
    assert out is not None and out.end == "HostOOM" and "emergency save" in out.message


def test_cuda_oom_exit_76_carries_batch() -> None:
    msg = {
        "reason": "CudaOOM",
        "step": 3,
        "checkpoint_step": 2,
        "per_device_train_batch_size": 8,
        "gradient_accumulation_steps": 1,
    }
    out = classify(pod(exit_code=76, message=msg), READY)
    assert out is not None and out.end == "CudaOOM" and out.batch == 8 and out.accumulation == 1


def test_exit_0_completed() -> None:
    out = classify(pod(exit_code=0, message={"reason": "Completed", "step": 40}), READY)
    assert out is not None and out.end == "Completed" and out.step == 40


def test_exit_0_without_message_completed() -> None:
    out = classify(pod(exit_code=0), READY)
    assert out is not None and out.end == "Completed"


def test_exit_0_with_other_reason_is_error() -> None:
    out = classify(pod(exit_code=0, message={"reason": "Error", "message": "final adapter missing"}), READY)
    assert out is not None and out.end == "Error" and "final adapter missing" in out.message


def test_exit_0_while_evicted_is_still_success() -> None:
    out = classify(pod(exit_code=0, disruption="EvictionByEvictionAPI"), READY)
    assert out is not None and out.end == "Completed"


@pytest.mark.parametrize("waiting", ["CreateContainerConfigError", "InvalidImageName", "ErrImageNeverPull"])
def test_image_and_config_waiting_reasons_are_config_errors(waiting: str) -> None:
    out = classify(pod(phase="Pending", waiting=waiting), READY, image_pull_timeout_seconds=600)
    assert out is not None and out.end == "ConfigError" and out.reason == waiting


TRANSIENT_PULL = (
    'failed to pull and unpack image "ghcr.io/acme/trainer:1.2": failed to copy: httpReadSeeker: '
    "failed open: unexpected status code https://ghcr.io/v2/acme/trainer/blobs/sha256:4f2e: "
    "429 Too Many Requests"
)


@pytest.mark.parametrize("waiting", ["ErrImagePull", "ImagePullBackOff"])
def test_transient_pull_failure_waits_up_to_the_timeout(waiting: str) -> None:
    """Registry 429/5xx, a credential race on a fresh node: the kubelet retries; a multi-day job must not
    end on the first ErrImagePull."""
    p = pod(phase="Pending", waiting=waiting, waiting_message=TRANSIENT_PULL, started_ago=599)
    assert classify(p, READY, image_pull_timeout_seconds=600) is None
    late = pod(phase="Pending", waiting=waiting, waiting_message=TRANSIENT_PULL, started_ago=600)
    out = classify(late, READY, image_pull_timeout_seconds=600)
    assert out is not None and (out.end, out.reason, out.node) == (
        "StartFailure",
        "ImagePullTimeout",
        "node-a",
    )
    assert "imagePullTimeoutSeconds" in out.message and "429 Too Many Requests" in out.message
    # 0 = wait as long as it takes
    assert classify(late, READY, image_pull_timeout_seconds=0) is None


@pytest.mark.parametrize(
    "message",
    [
        'rpc error: code = NotFound desc = failed to pull and unpack image "docker.io/acme/trainer:typo": '
        'failed to resolve reference "docker.io/acme/trainer:typo": docker.io/acme/trainer:typo: not found',
        'failed to resolve reference "ghcr.io/acme/private:1": failed to authorize: failed to fetch '
        "anonymous token: unexpected status: 401 Unauthorized",
        "pull access denied, repository does not exist or may require authorization: server message: "
        "insufficient_scope: authorization failed",
        'manifest unknown: manifest tagged by "v9" is not found',
    ],
)
def test_pull_of_a_missing_or_forbidden_image_fails_at_once(message: str) -> None:
    out = classify(
        pod(phase="Pending", waiting="ErrImagePull", waiting_message=message, started_ago=1),
        READY,
        image_pull_timeout_seconds=600,
    )
    assert out is not None and (out.end, out.reason) == ("ConfigError", "ErrImagePull")
    plan = d.plan_next(spec(), status(), out)
    assert plan.action == "fail" and plan.cause is None


GPU_HOOK_FAILURE = (
    "failed to create containerd task: failed to create shim task: OCI runtime create failed: runc create "
    "failed: unable to start container process: error during container init: error running hook #0: error "
    "running hook: exit status 1, stdout: , stderr: nvidia-container-cli: initialization error: nvml error: "
    "driver not loaded: unknown"
)


def test_container_that_cannot_start_is_an_infrastructure_failure() -> None:
    """StartError (exit 128): the runtime or the GPU hook failed on this node, the trainer never ran."""
    out = classify(pod(exit_code=128, reason="StartError", message=GPU_HOOK_FAILURE), READY)
    assert out is not None and (out.end, out.reason, out.node) == ("StartFailure", "StartError", "node-a")
    assert "driver not loaded" in out.message
    # exit 128 without a trainer's termination message: the same
    out = classify(pod(exit_code=128, reason="Error", message="runc: exec failed"), READY)
    assert out is not None and out.end == "StartFailure"


def test_missing_trainer_executable_is_a_config_error() -> None:
    message = (
        "failed to create containerd task: failed to create shim task: OCI runtime create failed: runc "
        'create failed: unable to start container process: exec: "finetune-trainer": executable file not '
        "found in $PATH: unknown"
    )
    out = classify(pod(exit_code=128, reason="StartError", message=message), READY)
    assert out is not None and (out.end, out.reason) == ("ConfigError", "ExecutableNotFound")
    assert "spec.image" in out.message
    assert d.plan_next(spec(), status(), out).action == "fail"


def test_exit_78_is_config_error() -> None:
    out = classify(
        pod(exit_code=78, message={"reason": "ConfigError", "message": "dataset has no column 'text'"}), READY
    )
    assert out is not None and out.end == "ConfigError" and "no column" in out.message


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
    plan = d.plan_next(spec(), st, out)
    assert (plan.action, plan.reason, plan.cause) == ("fail", "NoIntactCheckpoint", None)
    patch = d.decision_patch(st, out, plan, "job-1", NOW)
    assert patch["phase"] == "Failed" and patch["reason"] == "NoIntactCheckpoint" and patch["pending"] is None
    assert "restarts" not in patch and patch["message"].startswith("every committed checkpoint")
    world = d.World(
        name="job",
        uid="uid-1",
        generation=1,
        spec=spec(),
        status=st,
        pods=(d.pod_view(pod(exit_code=65, message={"reason": "NoIntactCheckpoint", "message": NO_INTACT})),),
        nodes={"node-a": READY},
        now=NOW,
    )
    events = [a for a in d.reconcile(world).actions if isinstance(a, d.Event)]
    assert [(e.type, e.reason) for e in events] == [("Warning", "NoIntactCheckpoint")]
    assert "checkpoint-40: optimizer.pt" in events[0].message


def test_exit_65_without_a_message_still_says_what_happened() -> None:
    out = classify(pod(exit_code=65, reason="Error"), READY)
    assert out is not None and out.end == "NoIntactCheckpoint" and "damaged" in out.message


def test_other_exit_is_error_with_log_tail() -> None:
    out = classify(pod(exit_code=1, reason="Error", message="Traceback...\nRuntimeError: boom\n"), READY)
    assert (
        out is not None
        and (out.end, out.reason) == ("Error", "ExitCode1")
        and "RuntimeError: boom" in out.message
    )


def test_running_pod_has_no_outcome() -> None:
    assert classify(pod(running=True), READY) is None


def test_terminating_pod_still_saving_has_no_outcome() -> None:
    assert classify(pod(running=True, deleted=True, disruption="EvictionByEvictionAPI"), READY) is None


def test_pod_deleted_while_pending_is_preemption() -> None:
    out = classify(pod(phase="Pending", node=None, deleted=True, unschedulable_for=5))
    assert out is not None and (out.end, out.reason) == ("Preempted", "DeletedWhilePending")


def test_pending_unschedulable_too_long_fails() -> None:
    p = pod(phase="Pending", node=None, unschedulable_for=301)
    assert classify(p, pending_timeout_seconds=0) is None  # 0 = wait forever
    assert classify(p, pending_timeout_seconds=600) is None
    out = classify(p, pending_timeout_seconds=300)
    assert out is not None and out.end == "Unschedulable" and "gpu" in out.message


def test_failed_pod_without_container_status_is_preemption() -> None:
    p = pod(phase="Failed")
    p["status"]["reason"] = "OutOfcpu"
    out = classify(p, READY)
    assert out is not None and (out.end, out.reason) == ("Preempted", "OutOfcpu")
    assert "before its trainer ran" in out.message


def test_pod_failed_by_the_pod_gc_while_running_says_so() -> None:
    """Out-of-service taint: the pod garbage collector marks the pod Failed; the trainer had been running."""
    p = pod(running=True, deleted=True, disruption="DeletionByTaintManager")
    p["status"]["phase"] = "Failed"
    out = classify(p, d.NodeView("node-a", ready="Unknown", out_of_service=True))
    assert out is not None and (out.end, out.reason) == ("Preempted", "DeletionByTaintManager")
    assert "while its node was unreachable" in out.message and "before its trainer ran" not in out.message


# =============================================================================== node lost


def test_node_lost_rule() -> None:
    since = NOW - timedelta(seconds=100)
    assert d.node_lost(d.NodeView("n", exists=False), NOW, 120)
    assert d.node_lost(d.NodeView("n", ready="True", out_of_service=True), NOW, 120)
    assert not d.node_lost(d.NodeView("n", ready="Unknown", ready_since=since), NOW, 120)
    assert d.node_lost(d.NodeView("n", ready="Unknown", ready_since=since), NOW, 60)
    assert d.node_lost(d.NodeView("n", ready="False", ready_since=since), NOW, 60)
    assert not d.node_lost(d.NodeView("n", ready="True", ready_since=since), NOW, 0)
    assert not d.node_lost(None, NOW, 0)


def test_pod_on_lost_node_is_preemption_with_force_delete() -> None:
    node = d.NodeView("node-a", ready="Unknown", ready_since=NOW - timedelta(seconds=200))
    out = classify(
        pod(running=True, deleted=True, disruption="DeletionByTaintManager"), node, node_lost_seconds=60
    )
    assert out is not None and (out.end, out.reason, out.force_delete) == ("Preempted", "NodeLost", True)
    out = classify(pod(running=True), d.NodeView("node-a", exists=False))
    assert out is not None and out.reason == "NodeLost" and "deleted" in out.message


def test_node_view_reads_ready_and_taints() -> None:
    node = {
        "status": {
            "conditions": [
                {"type": "Ready", "status": "Unknown", "lastTransitionTime": "2026-01-01T11:00:00Z"}
            ]
        },
        "spec": {"taints": [{"key": "node.kubernetes.io/out-of-service", "effect": "NoExecute"}]},
    }
    view = d.node_view("n", node)
    assert view.ready == "Unknown" and view.out_of_service and view.ready_since is not None
    assert not d.node_view("n", None).exists


# =============================================================================== plan


def outcome(end: d.End, **kw: Any) -> d.Outcome:
    return d.Outcome(end, kw.pop("reason", end), kw.pop("message", end), **kw)


def test_preemption_restarts_at_once_always() -> None:
    for n in (0, 1, 5, 50, 999):
        plan = d.plan_next(spec(), status(restarts={"preemption": n}), outcome("Preempted"))
        assert (plan.action, plan.cause, plan.delay_seconds) == ("restart", "preemption", 0.0)


def test_preemption_budget() -> None:
    s = spec(restartPolicy={"maxPreemptions": 3})
    plan = d.plan_next(s, status(restarts={"preemption": 3}), outcome("Preempted"))
    assert (plan.action, plan.reason) == ("fail", "PreemptionBudgetExhausted")
    assert "maxPreemptions=3" in plan.message


def test_preemptions_do_not_spend_error_budget() -> None:
    s = spec(restartPolicy={"maxFailures": 0})
    plan = d.plan_next(s, status(restarts={"preemption": 10}), outcome("Preempted"))
    assert plan.action == "restart"


def test_error_backoff_doubles_and_caps() -> None:
    s = spec(restartPolicy={"backoffSeconds": 10, "maxBackoffSeconds": 300, "maxFailures": 100})
    delays = [d.plan_next(s, status(restarts={"error": n}), outcome("Error")).delay_seconds for n in range(7)]
    assert delays == [10, 20, 40, 80, 160, 300, 300]


def test_error_budget_exhausted() -> None:
    s = spec(restartPolicy={"maxFailures": 2})
    assert d.plan_next(s, status(restarts={"error": 1}), outcome("Error")).action == "restart"
    plan = d.plan_next(s, status(restarts={"error": 2}), outcome("Error", message="exit 1: boom"))
    assert (plan.action, plan.reason) == ("fail", "FailureBudgetExhausted")
    assert "boom" in plan.message and "maxFailures=2" in plan.message


def test_host_oom_raises_memory_by_factor() -> None:
    plan = d.plan_next(spec(), status(), outcome("HostOOM"))
    assert plan.action == "restart" and plan.cause == "hostOOM"
    assert plan.effective is not None and plan.effective.memory == "1536Mi"
    assert plan.change == "memory 1Gi → 1536Mi"


def test_host_oom_uses_effective_memory_and_cap() -> None:
    s = spec(resources={"memory": "1Gi", "maxMemory": "2Gi"})
    plan = d.plan_next(s, status(effective={"memory": "1536Mi"}), outcome("HostOOM"))
    assert plan.effective is not None and plan.effective.memory == "2Gi"  # min(cap, 2304Mi)
    plan = d.plan_next(s, status(effective={"memory": "2Gi"}), outcome("HostOOM"))
    assert (plan.action, plan.reason) == ("fail", "OOMAtMemoryCap") and "maxMemory" in plan.message


def test_host_oom_default_cap_is_memory_times_two_factor() -> None:
    s = spec(resources={"memory": "1Gi"}, restartPolicy={"oomMemoryFactor": 2.0})
    assert d.memory_cap(s) == 4 * 2**30
    plan = d.plan_next(s, status(effective={"memory": "4Gi"}), outcome("HostOOM"))
    assert plan.reason == "OOMAtMemoryCap"


def test_host_oom_without_memory_limit_restarts_unchanged() -> None:
    s = spec(resources={"memory": None})
    plan = d.plan_next(s, status(), outcome("HostOOM"))
    assert plan.action == "restart" and plan.effective is None and "no memory limit" in plan.message


def test_cuda_oom_halves_batch_doubles_accumulation() -> None:
    plan = d.plan_next(spec(), status(), outcome("CudaOOM", batch=8, accumulation=1))
    assert plan.effective is not None
    assert (plan.effective.per_device_train_batch_size, plan.effective.gradient_accumulation_steps) == (4, 2)
    assert "effective batch 8 unchanged" in (plan.change or "")


def test_cuda_oom_without_message_uses_effective_then_spec() -> None:
    plan = d.plan_next(
        spec(),
        status(effective={"perDeviceTrainBatchSize": 4, "gradientAccumulationSteps": 2}),
        outcome("CudaOOM"),
    )
    assert plan.effective is not None
    assert (plan.effective.per_device_train_batch_size, plan.effective.gradient_accumulation_steps) == (2, 4)


def test_cuda_oom_odd_batch_keeps_effective_batch_exact() -> None:
    assert d.halve_batch(6) == 3 and d.halve_batch(3) == 1 and d.halve_batch(9) == 3 and d.halve_batch(7) == 1
    plan = d.plan_next(spec(), status(), outcome("CudaOOM", batch=3, accumulation=2))
    assert plan.effective is not None and plan.effective.gradient_accumulation_steps == 6


def test_cuda_oom_at_batch_one_fails() -> None:
    plan = d.plan_next(spec(), status(), outcome("CudaOOM", batch=1, accumulation=8))
    assert (plan.action, plan.reason) == ("fail", "CudaOOMAtBatchOne")


def test_oom_budget_is_shared_by_host_and_cuda() -> None:
    s = spec(restartPolicy={"maxOomRestarts": 2})
    st = status(restarts={"hostOOM": 1, "cudaOOM": 1, "preemption": 50, "error": 0})
    for end in ("HostOOM", "CudaOOM"):
        plan = d.plan_next(s, st, outcome(end, batch=8))  # type: ignore[arg-type]
        assert (plan.action, plan.reason) == ("fail", "OOMBudgetExhausted")


def test_config_error_and_unschedulable_fail_at_once() -> None:
    for end in ("ConfigError", "Unschedulable"):
        plan = d.plan_next(spec(), status(), outcome(end, reason="ImagePullBackOff"))  # type: ignore[arg-type]
        assert plan.action == "fail" and plan.cause is None


def test_completed_succeeds_even_when_suspending() -> None:
    assert d.plan_next(spec(suspend=True), status(), outcome("Completed")).action == "succeed"


def test_suspend_turns_any_end_into_stop_without_counting() -> None:
    for end in ("Preempted", "Error", "HostOOM"):
        plan = d.plan_next(spec(suspend=True), status(), outcome(end))  # type: ignore[arg-type]
        assert plan.action == "stop" and plan.cause is None


def test_lost_steps() -> None:
    # reported step 17, committed 15 at the end → 2 steps to redo
    st = status(step=17, lastCheckpointStep=15)
    assert d.lost_steps(st, outcome("Error")) == 2
    # the termination message wins where it knows more
    assert d.lost_steps(st, outcome("Preempted", step=18, checkpoint_step=18)) == 0
    # nothing reported since the previous end: the stale step is not counted twice
    st = status(step=17, lastEndStep=17, lastCheckpointStep=10)
    assert d.lost_steps(st, outcome("Error")) == 0
    # never committed: everything is lost
    assert d.lost_steps(status(step=4), outcome("Error")) == 4


# =============================================================================== decision patch


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
    plan = d.plan_next(spec(), st, out)
    patch = d.decision_patch(st, out, plan, "job-2", NOW)
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
    patch = d.decision_patch(st, out, d.plan_next(spec(), st, out), "job-1", NOW)
    assert patch["phase"] == "Failed" and patch["pending"] is None and "completionTime" in patch
    failed = next(c for c in patch["conditions"] if c["type"] == "Failed")
    assert failed["status"] == "True" and failed["reason"] == "ImagePullBackOff"
    assert "restarts" not in patch


def test_conditions_keep_transition_time_when_unchanged() -> None:
    first = d.conditions_for("Running", "A", "a", NOW, [])
    from finetune_api.models import Condition

    later = d.conditions_for(
        "Running", "B", "b", NOW + timedelta(hours=1), [Condition.model_validate(c) for c in first]
    )
    assert [c["lastTransitionTime"] for c in later] == [c["lastTransitionTime"] for c in first]


# =============================================================================== reconcile


def world(
    st: FineTuneJobStatus | None = None,
    pods: list[dict[str, Any]] | None = None,
    sp: FineTuneJobSpec | None = None,
    nodes: dict[str, d.NodeView] | None = None,
    now: datetime = NOW,
    claim: d.ClaimView | None = None,
    shared_volume: bool = False,
) -> d.World:
    return d.World(
        name="job",
        uid="uid-1",
        generation=1,
        spec=sp or spec(),
        status=st or status(observedGeneration=1),
        pods=tuple(d.pod_view(p) for p in pods or []),
        nodes=nodes if nodes is not None else {"node-a": READY},
        now=now,
        claim=claim,
        node_lost_seconds=60,
        shared_volume=shared_volume,
    )


def kinds(step: d.Step) -> list[str]:
    return [type(a).__name__ for a in step.actions]


def only(step: d.Step, cls: type) -> Any:
    found = [a for a in step.actions if isinstance(a, cls)]
    assert len(found) == 1, step.actions
    return found[0]


def test_new_job_creates_attempt_one_in_its_own_run_directory() -> None:
    step = d.reconcile(world())
    create = only(step, d.CreatePod)
    assert (create.attempt, create.run_directory) == (1, "runs/uid-1")
    assert create.status_patch["podName"] == "job-1" and create.status_patch["phase"] == "Pending"
    assert create.status_patch["runDirectory"] == "runs/uid-1"
    assert create.status_patch["startedFrom"] == "fresh"
    assert "startTime" in create.status_patch


def test_a_job_re_created_under_the_same_name_gets_another_run_directory() -> None:
    """The kept claim of a deleted job with the same name (another uid) is used, but never its run."""
    kept = d.ClaimView(name="job-checkpoints", exists=True)  # deleteWithJob false: no owner
    step = d.reconcile(d.replace(world(claim=kept), uid="uid-2"))
    assert only(step, d.CreatePod).run_directory == "runs/uid-2"


def test_resume_from_is_named_as_the_start_until_the_trainer_names_the_checkpoint() -> None:
    step = d.reconcile(world(sp=spec(checkpoint={"resumeFrom": "runs/uid-0"})))
    create = only(step, d.CreatePod)
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
    patch = only(d.reconcile(world(st=later, sp=spec(checkpoint={"resumeFrom": "runs/uid-0"}))), d.CreatePod)
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
    create = only(d.reconcile(world(st=st)), d.CreatePod)
    assert create.run_directory == "run" and create.status_patch["runDirectory"] == "run"


def test_waits_while_the_previous_jobs_claim_is_terminating_then_goes_on() -> None:
    """deleteWithJob: a quick delete and re-create meets the old claim Terminating: wait, say why, no pod."""
    terminating = d.ClaimView(name="job-checkpoints", exists=True, deleting=True, job_owner_uids=("uid-0",))
    step = d.reconcile(world(claim=terminating))
    assert "CreatePod" not in kinds(step)
    patch = only(step, d.PatchStatus).patch
    assert patch["phase"] == "Pending" and patch["reason"] == "WaitingForClaim"
    assert patch["message"] == (
        "waiting for the previous job's claim job-checkpoints to be deleted (it is terminating)"
    )
    assert only(step, d.Event).reason == "WaitingForClaim"
    assert step.requeue_seconds == d.CLAIM_RECHECK_SECONDS
    # shown once: the next look changes nothing while the claim is still there
    shown = status(observedGeneration=1, phase="Pending", reason="WaitingForClaim", message=patch["message"])
    again = d.reconcile(world(st=shown, claim=terminating))
    assert again.actions == [] and again.requeue_seconds == d.CLAIM_RECHECK_SECONDS
    # not yet deleting but still owned by the old job (its garbage collection has not begun): wait as well
    owned = d.ClaimView(name="job-checkpoints", exists=True, job_owner_uids=("uid-0",))
    assert "CreatePod" not in kinds(d.reconcile(world(st=shown, claim=owned)))
    # gone: the operator creates a new claim and the first pod
    assert (
        only(d.reconcile(world(st=shown, claim=d.ClaimView(name="job-checkpoints"))), d.CreatePod).attempt
        == 1
    )
    # our own claim (owned by this job) is no obstacle
    ours = d.ClaimView(name="job-checkpoints", exists=True, job_owner_uids=("uid-1",))
    assert only(d.reconcile(world(st=shown, claim=ours)), d.CreatePod).attempt == 1


def test_claim_view_reads_deletion_and_job_owners() -> None:
    pvc = {
        "metadata": {
            "name": "job-checkpoints",
            "deletionTimestamp": "2026-01-01T00:00:00Z",
            "ownerReferences": [
                {"kind": "FineTuneJob", "uid": "uid-0"},
                {"kind": "ConfigMap", "uid": "other"},
            ],
        }
    }
    view = d.claim_view("job-checkpoints", pvc)
    assert view.exists and view.deleting and view.job_owner_uids == ("uid-0",)
    assert d.claim_view("job-checkpoints", None) == d.ClaimView(name="job-checkpoints")


def test_observed_generation_is_recorded() -> None:
    step = d.reconcile(world(st=status(observedGeneration=None)))
    assert d.PatchStatus({"observedGeneration": 1}) in step.actions


def test_operator_restart_after_create_adopts_pod() -> None:
    """Pod created, then the operator died before writing status: adopt it, create nothing."""
    step = d.reconcile(world(pods=[pod("job-1", phase="Pending", node=None)]))
    assert kinds(step) == ["AdoptPod"] and only(step, d.AdoptPod).status_patch["podName"] == "job-1"


def test_foreign_pod_with_our_name_is_not_adopted() -> None:
    step = d.reconcile(world(pods=[pod("job-1", owner="someone-else")]))
    assert "AdoptPod" not in kinds(step) and "CreatePod" not in kinds(step)


def test_running_pod_becomes_running_phase_and_annotated() -> None:
    st = status(
        observedGeneration=1,
        phase="Pending",
        attempt=1,
        podName="job-1",
        lastCheckpoint={"step": 10, "time": "2026-01-01T11:58:00Z"},
    )
    step = d.reconcile(world(st=st, pods=[pod(running=True)]))
    assert only(step, d.PatchStatus).patch["phase"] == "Running"
    ann = only(step, d.AnnotatePod)
    assert ann.annotations == {
        d.ANNOTATION_LAST_CHECKPOINT: "2026-01-01T11:58:00Z",
        d.ANNOTATION_LAST_CHECKPOINT_STEP: "10",
    }
    assert step.requeue_seconds == d.WATCH_NODE_SECONDS


def test_running_pod_with_current_annotation_needs_nothing() -> None:
    st = status(
        observedGeneration=1,
        phase="Running",
        attempt=1,
        podName="job-1",
        lastCheckpoint={"step": 10, "time": "t1"},
    )
    step = d.reconcile(
        world(st=st, pods=[pod(running=True, annotations={d.ANNOTATION_LAST_CHECKPOINT: "t1"})])
    )
    assert step.actions == []


def running_status(**kw: Any) -> FineTuneJobStatus:
    base: dict[str, Any] = {
        "observedGeneration": 1,
        "phase": "Running",
        "attempt": 1,
        "podName": "job-1",
        "step": 12,
        "lastCheckpointStep": 10,
    }
    base.update(kw)
    return status(**base)


def test_preempted_pod_records_decision_then_waits_for_gone_then_creates() -> None:
    ended = pod(
        exit_code=75,
        disruption="EvictionByEvictionAPI",
        deleted=True,
        message={"reason": "Preempted", "step": 12, "checkpoint_step": 12},
    )
    step = d.reconcile(world(st=running_status(), pods=[ended]))
    assert kinds(step) == ["PatchStatus", "Decided", "Event"]
    patch = only(step, d.PatchStatus).patch
    assert patch["restarts"]["preemption"] == 1 and patch["pending"]["notBefore"] == T(NOW)
    assert "lostSteps" not in patch  # the emergency checkpoint covered everything

    # next pass: the decision is pending; release the tracked, deleting pod and finish its deletion at once
    # (the kubelet said the trainer stopped)
    st2 = running_status(**{k: v for k, v in patch.items() if k != "conditions"})
    step = d.reconcile(world(st=st2, pods=[ended]))
    assert kinds(step) == ["ReleasePod", "DeletePod"] and only(step, d.DeletePod).grace_seconds == 0
    # still there, untracked, deletion already final: wait (no new pod yet)
    lingering = pod(exit_code=75, disruption="EvictionByEvictionAPI", deleted=True, finalizer=False)
    lingering["metadata"]["deletionGracePeriodSeconds"] = 0
    step = d.reconcile(world(st=st2, pods=[lingering]))
    assert step.actions == [] and step.requeue_seconds is not None
    # a pod still saving (running, deleting) is never cut short
    saving = pod(running=True, disruption="EvictionByEvictionAPI", deleted=True, finalizer=False)
    assert d.reconcile(world(st=st2, pods=[saving])).actions == []
    # gone: create attempt 2 with --resume auto, clear the pending decision
    step = d.reconcile(world(st=st2, pods=[]))
    create = only(step, d.CreatePod)
    # (this status records no runDirectory, as a job started before run directories: the legacy one)
    assert (create.attempt, create.run_directory) == (2, "run")
    assert create.status_patch["pending"] is None and create.status_patch["podName"] == "job-2"
    assert create.status_patch["phase"] == "Restarting"


def test_decided_pod_is_not_classified_twice() -> None:
    """Duplicate events / an operator restart after the decision: the counters are not charged again."""
    ended = pod(exit_code=1, reason="Error")
    first = only(d.reconcile(world(st=running_status(), pods=[ended])), d.PatchStatus).patch
    st2 = running_status(**{k: v for k, v in first.items() if k != "conditions"})
    again = d.reconcile(world(st=st2, pods=[ended]))
    assert "Decided" not in kinds(again)
    assert kinds(again) == [
        "ReleasePod",
        "DeletePod",
    ]  # an ended pod is removed at once (force: it's stopped)
    assert only(again, d.DeletePod).force


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
    step = d.reconcile(world(st=st, pods=[]))
    assert step.actions == [] and step.requeue_seconds == pytest.approx(20)
    step = d.reconcile(world(st=st, pods=[], now=NOW + timedelta(seconds=21)))
    assert only(step, d.CreatePod).attempt == 2


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
    step = d.reconcile(world(st=st, pods=[pod("job-2", phase="Pending", node=None)]))
    assert kinds(step) == ["AdoptPod"]


def test_single_writer_never_creates_while_another_pod_exists() -> None:
    st = running_status(phase="Restarting", pending={"action": "restart", "reason": "x", "podName": "job-1"})
    stray = pod("job-0", running=True)  # a leftover pod still running: must go first
    step = d.reconcile(world(st=st, pods=[stray]))
    assert "CreatePod" not in kinds(step)
    assert only(step, d.DeletePod).force is False  # graceful: it may be saving


def test_node_lost_pod_is_force_deleted_and_replaced() -> None:
    lost = {"node-a": d.NodeView("node-a", ready="Unknown", ready_since=NOW - timedelta(seconds=90))}
    stuck = pod(running=True, deleted=True, disruption="DeletionByTaintManager")
    step = d.reconcile(world(st=running_status(), pods=[stuck], nodes=lost))
    patch = only(step, d.PatchStatus).patch
    assert patch["pending"]["reason"] == "NodeLost" and patch["restarts"]["preemption"] == 1
    st2 = running_status(**{k: v for k, v in patch.items() if k != "conditions"})
    step = d.reconcile(world(st=st2, pods=[stuck], nodes=lost))
    assert kinds(step) == ["ReleasePod", "DeletePod"] and only(step, d.DeletePod).force


def test_node_not_yet_lost_waits_and_requeues() -> None:
    nodes = {"node-a": d.NodeView("node-a", ready="Unknown", ready_since=NOW - timedelta(seconds=55))}
    step = d.reconcile(world(st=running_status(), pods=[pod(running=True)], nodes=nodes))
    assert step.actions == [] and step.requeue_seconds == pytest.approx(5.5)  # node_lost_seconds=60


def test_vanished_pod_is_preemption() -> None:
    step = d.reconcile(world(st=running_status(), pods=[]))
    assert only(step, d.PatchStatus).patch["pending"]["reason"] == "PodVanished"


def test_config_error_fails_and_deletes_stuck_pod() -> None:
    st = running_status(phase="Pending", step=None)
    step = d.reconcile(world(st=st, pods=[pod(phase="Pending", waiting="InvalidImageName")]))
    assert only(step, d.PatchStatus).patch["phase"] == "Failed"
    event = only(step, d.Event)
    assert event.type == "Warning" and event.reason == "InvalidImageName"
    assert "ReleasePod" in kinds(step) and "DeletePod" in kinds(step)


def test_success_keeps_pod_for_logs() -> None:
    step = d.reconcile(
        world(st=running_status(), pods=[pod(exit_code=0, message={"reason": "Completed", "step": 40})])
    )
    assert only(step, d.PatchStatus).patch["phase"] == "Succeeded"
    assert "DeletePod" not in kinds(step) and "ReleasePod" in kinds(step)
    st = running_status(phase="Succeeded")
    assert d.reconcile(world(st=st, pods=[pod(exit_code=0, finalizer=False)])).actions == []


def test_failed_job_stops_running_pods() -> None:
    step = d.reconcile(world(st=running_status(phase="Failed"), pods=[pod(running=True)]))
    assert kinds(step) == ["DeletePod"]


def test_suspend_deletes_gracefully_then_stops_without_counting() -> None:
    sp = spec(suspend=True)
    step = d.reconcile(world(st=running_status(), pods=[pod(running=True)], sp=sp))
    delete = only(step, d.DeletePod)
    assert delete.grace_seconds is None and not delete.force
    # the trainer saves and exits 75: Suspended, no restart counted
    stopped = pod(
        exit_code=75, deleted=True, message={"reason": "Preempted", "step": 12, "checkpoint_step": 12}
    )
    step = d.reconcile(world(st=running_status(), pods=[stopped], sp=sp))
    patch = only(step, d.PatchStatus).patch
    assert patch["phase"] == "Suspended" and "restarts" not in patch and patch["pending"] is None
    # stays suspended, nothing created
    st = running_status(phase="Suspended")
    assert "CreatePod" not in kinds(d.reconcile(world(st=st, pods=[], sp=sp)))
    # resume: a new attempt, resuming
    step = d.reconcile(world(st=st, pods=[]))
    create = only(step, d.CreatePod)
    assert (create.attempt, create.run_directory, create.status_patch["phase"]) == (
        2,
        "run",  # no runDirectory recorded in this status: the legacy directory
        "Pending",
    )


def test_suspend_while_restart_pending_cancels_it() -> None:
    st = running_status(phase="Restarting", pending={"action": "restart", "reason": "x", "podName": "job-1"})
    step = d.reconcile(world(st=st, pods=[], sp=spec(suspend=True)))
    assert "CreatePod" not in kinds(step)
    phases = [a.patch.get("phase") for a in step.actions if isinstance(a, d.PatchStatus)]
    assert "Suspended" in phases


def test_suspend_before_first_pod() -> None:
    step = d.reconcile(world(sp=spec(suspend=True)))
    assert "CreatePod" not in kinds(step) and only(step, d.PatchStatus).patch["phase"] == "Suspended"


def test_recovery_is_reported_once_trainer_reports_again() -> None:
    st = running_status(
        phase="Restarting",
        attempt=2,
        podName="job-2",
        step=12,
        lastEndStep=12,
        lastPodEndTime=T(NOW - timedelta(seconds=14)),
    )
    assert "Recovered" not in kinds(d.reconcile(world(st=st, pods=[pod("job-2", running=True)])))
    st = running_status(
        phase="Restarting",
        attempt=2,
        podName="job-2",
        step=13,
        lastEndStep=12,
        lastPodEndTime=T(NOW - timedelta(seconds=14)),
    )
    step = d.reconcile(world(st=st, pods=[pod("job-2", running=True)]))
    assert only(step, d.Recovered).seconds == pytest.approx(14)
    assert only(step, d.PatchStatus).patch["phase"] == "Running"


def test_unschedulable_times_out_into_failed() -> None:
    sp = spec(restartPolicy={"pendingTimeoutSeconds": 60})
    st = running_status(phase="Pending", step=None)
    step = d.reconcile(world(st=st, pods=[pod(phase="Pending", node=None, unschedulable_for=30)], sp=sp))
    assert only(step, d.PatchStatus).patch["reason"] == "Unschedulable"  # message only, still waiting
    assert step.requeue_seconds == pytest.approx(30.5)
    step = d.reconcile(world(st=st, pods=[pod(phase="Pending", node=None, unschedulable_for=61)], sp=sp))
    assert only(step, d.PatchStatus).patch["phase"] == "Failed"


def test_budget_exhaustion_fails_with_event() -> None:
    sp = spec(restartPolicy={"maxFailures": 1})
    st = running_status(restarts={"error": 1}, restartsTotal=1)
    step = d.reconcile(world(st=st, pods=[pod(exit_code=1, message="RuntimeError: boom")], sp=sp))
    patch = only(step, d.PatchStatus).patch
    assert patch["phase"] == "Failed" and patch["reason"] == "FailureBudgetExhausted"
    assert "boom" in patch["message"]
    event = only(step, d.Event)
    assert event.type == "Warning" and event.reason == "FailureBudgetExhausted"


def test_time_helpers_roundtrip() -> None:
    assert d.parse_time(T(NOW)) == NOW
    assert d.parse_time("garbage") is None and d.parse_time(None) is None
    assert d.parse_time("2026-01-01T12:00:00") == NOW


def test_pending_restart_waits_for_terminating_pod_on_unready_node_until_lost() -> None:
    st = running_status(phase="Restarting", pending={"action": "restart", "reason": "x", "podName": "job-1"})
    stuck = pod(running=True, deleted=True, finalizer=False)
    nodes = {"node-a": d.NodeView("node-a", ready="Unknown", ready_since=NOW - timedelta(seconds=50))}
    step = d.reconcile(world(st=st, pods=[stuck], nodes=nodes))
    assert step.actions == [] and step.requeue_seconds == pytest.approx(10.5)
    nodes = {"node-a": d.NodeView("node-a", ready="Unknown", ready_since=NOW - timedelta(seconds=61))}
    step = d.reconcile(world(st=st, pods=[stuck], nodes=nodes))
    assert only(step, d.DeletePod).force


VOLUME_FULL_MESSAGE = {
    "reason": "VolumeFull",
    "message": "checkpoint volume full: checkpoint-6 could not be written: 61440 bytes free on "
    "/checkpoints/run, the checkpoint needs about 80805 bytes; make the volume bigger or lower "
    "training.save_total_limit",
    "free_bytes": 61440,
    "needed_bytes": 80805,
    "checkpoint": "checkpoint-4",
    "checkpoint_step": 4,
}


@pytest.mark.parametrize("disruption", [None, "EvictionByEvictionAPI"])
def test_exit_74_is_volume_full_even_during_an_emergency_save(disruption: str | None) -> None:
    out = classify(pod(exit_code=74, message=VOLUME_FULL_MESSAGE, disruption=disruption), READY)
    assert out is not None and (out.end, out.reason) == ("VolumeFull", "VolumeFull")
    assert "61440 bytes free" in out.message and out.checkpoint_step == 4


def test_volume_full_fails_at_once_with_advice_not_a_blind_retry() -> None:
    out = classify(pod(exit_code=74, message=VOLUME_FULL_MESSAGE), READY)
    assert out is not None
    small = spec(checkpoint={"volumeSize": "2Gi"}, training={"save_total_limit": 3})
    plan = d.plan_next(small, status(), out)
    assert (plan.action, plan.reason, plan.cause) == ("fail", "VolumeFull", None)
    assert "61440 bytes free" in plan.message
    assert "raise spec.checkpoint.volumeSize (now 2Gi)" in plan.message
    assert "lower spec.training.save_total_limit (now 3)" in plan.message

    shared = d.plan_next(spec(checkpoint={"existingClaimName": "team-ckpts"}), status(), out)
    assert "grow the PersistentVolumeClaim team-ckpts" in shared.message
    assert "volumeSize" not in shared.message


# =============================================================================== infrastructure, storms


def test_container_the_runtime_keeps_failing_to_create() -> None:
    """CreateContainerError: the kubelet retries; a missing executable (CRI-O reports it here) is a config
    error at once, anything else is bounded like a pull and then replaced on another node."""
    missing = 'container create failed: exec: "finetune-trainer": executable file not found in $PATH'
    out = classify(pod(phase="Pending", waiting="CreateContainerError", waiting_message=missing), READY)
    assert out is not None and (out.end, out.reason) == ("ConfigError", "ExecutableNotFound")
    flaky = "failed to reserve container name: name is reserved"
    early = pod(phase="Pending", waiting="CreateContainerError", waiting_message=flaky, started_ago=30)
    assert classify(early, READY, image_pull_timeout_seconds=600) is None
    late = pod(phase="Pending", waiting="CreateContainerError", waiting_message=flaky, started_ago=700)
    out = classify(late, READY, image_pull_timeout_seconds=600)
    assert out is not None and (out.end, out.reason) == ("StartFailure", "CreateContainerTimeout")
    assert "could not be created" in out.message


def test_start_failure_restarts_with_backoff_on_another_node_on_its_own_budget() -> None:
    s = spec(restartPolicy={"backoffSeconds": 10, "maxBackoffSeconds": 300, "maxFailures": 0})
    out = outcome("StartFailure", reason="StartError", node="gpu-7")
    plan = d.plan_next(s, status(), out)
    assert (plan.action, plan.cause, plan.delay_seconds, plan.avoid_node) == (
        "restart",
        "infrastructure",
        10,
        "gpu-7",
    )
    # again in a row: the delay doubles; the error budget (maxFailures=0) is never touched
    st = status(restarts={"infrastructure": 1}, streak={"reason": "StartError", "count": 1})
    assert d.plan_next(s, st, out).delay_seconds == 20
    patch = d.decision_patch(st, out, d.plan_next(s, st, out), "job-2", NOW)
    assert patch["restarts"]["infrastructure"] == 2 and patch["restarts"]["error"] == 0
    assert patch["pending"]["avoidNode"] == "gpu-7" and patch["pending"]["cause"] == "infrastructure"
    assert patch["streak"] == {"reason": "StartError", "count": 2}


def test_start_failure_budget() -> None:
    s = spec(restartPolicy={"maxInfrastructureRestarts": 2})
    out = outcome("StartFailure", reason="ImagePullTimeout", node="gpu-7")
    assert d.plan_next(s, status(restarts={"infrastructure": 1}), out).action == "restart"
    plan = d.plan_next(s, status(restarts={"infrastructure": 2}), out)
    assert (plan.action, plan.reason) == ("fail", "InfrastructureBudgetExhausted")
    assert "maxInfrastructureRestarts=2" in plan.message


def admission_failure(reason: str = "UnexpectedAdmissionError") -> dict[str, Any]:
    p = pod(phase="Failed", node="gpu-7")
    p["status"]["reason"] = reason
    p["status"]["message"] = "Allocate failed due to no healthy devices present; cannot allocate unhealthy"
    return p


@pytest.mark.parametrize("reason", ["UnexpectedAdmissionError", "OutOfnvidia.com/gpu", "OutOfcpu"])
def test_repeated_admission_failures_back_off_after_a_few(reason: str) -> None:
    """A bad GPU: the kubelet rejects pod after pod at once. The first ones restart at once, then a short
    doubling backoff, preferring another node, on the preemption budget (no work was lost)."""
    s = spec(restartPolicy={"backoffSeconds": 10, "maxBackoffSeconds": 60})
    out = classify(admission_failure(reason), d.NodeView("gpu-7"))
    assert out is not None and out.end == "Preempted" and out.node_trouble and out.node == "gpu-7"
    delays, streak = [], None
    for _ in range(7):
        plan = d.plan_next(s, status(streak=streak), out)
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
    assert d.plan_next(spec(), st, out).delay_seconds == 10


@pytest.mark.parametrize(
    "disruption", ["EvictionByEvictionAPI", "DeletionByTaintManager", "PreemptionByScheduler"]
)
def test_real_disruptions_stay_immediate_even_in_a_streak(disruption: str) -> None:
    """Drain, NoExecute taint, priority preemption: another node or capacity comes from elsewhere."""
    out = classify(pod(exit_code=75, disruption=disruption), READY)
    assert out is not None and not out.node_trouble
    plan = d.plan_next(spec(), status(streak={"reason": disruption, "count": 9}), out)
    assert (plan.delay_seconds, plan.avoid_node, plan.streak) == (0, None, 10)


def test_streak_counts_only_the_same_reason_in_a_row() -> None:
    out = outcome("Preempted", reason="UnexpectedAdmissionError", node_trouble=True)
    assert d.streak_after(status(), out) == 1
    assert d.streak_after(status(streak={"reason": "UnexpectedAdmissionError", "count": 4}), out) == 5
    assert d.streak_after(status(streak={"reason": "OutOfcpu", "count": 4}), out) == 1


def test_storm_posts_a_warning_and_waits() -> None:
    st = running_status(
        phase="Restarting", step=None, streak={"reason": "UnexpectedAdmissionError", "count": 2}
    )
    step = d.reconcile(world(st=st, pods=[admission_failure()], nodes={"gpu-7": d.NodeView("gpu-7")}))
    patch = only(step, d.PatchStatus).patch
    assert patch["streak"] == {"reason": "UnexpectedAdmissionError", "count": 3}
    assert patch["pending"]["notBefore"] == T(NOW + timedelta(seconds=10))
    assert patch["pending"]["avoidNode"] == "gpu-7"
    storm = [a for a in step.actions if isinstance(a, d.Event) and a.reason == "RestartStorm"]
    assert len(storm) == 1 and storm[0].type == "Warning"
    assert "3 pod ends in a row for UnexpectedAdmissionError on node gpu-7" in storm[0].message
    # below the threshold: no storm Event
    st = running_status(
        phase="Restarting", step=None, streak={"reason": "UnexpectedAdmissionError", "count": 1}
    )
    step = d.reconcile(world(st=st, pods=[admission_failure()], nodes={"gpu-7": d.NodeView("gpu-7")}))
    assert not [a for a in step.actions if isinstance(a, d.Event) and a.reason == "RestartStorm"]


def test_training_progress_ends_the_streak() -> None:
    st = running_status(
        phase="Restarting",
        attempt=4,
        podName="job-4",
        step=13,
        lastEndStep=12,
        streak={"reason": "UnexpectedAdmissionError", "count": 3},
    )
    step = d.reconcile(world(st=st, pods=[pod("job-4", running=True)]))
    assert d.PatchStatus({"streak": None}) in step.actions
    # no progress yet (the step is the one reported before the end): the streak stays
    st = running_status(
        phase="Restarting", attempt=4, podName="job-4", step=12, lastEndStep=12, streak=st.streak
    )
    step = d.reconcile(world(st=st, pods=[pod("job-4", running=True)]))
    assert d.PatchStatus({"streak": None}) not in step.actions


def test_waiting_for_the_image_is_shown_in_status_until_the_timeout() -> None:
    st = running_status(phase="Restarting", attempt=2, podName="job-2")
    pulling = pod(
        "job-2", phase="Pending", waiting="ErrImagePull", waiting_message=TRANSIENT_PULL, started_ago=590
    )
    step = d.reconcile(world(st=st, pods=[pulling]))
    patch = only(step, d.PatchStatus).patch
    assert patch["reason"] == "ErrImagePull"
    assert "restartPolicy.imagePullTimeoutSeconds" in patch["message"] and "429" in patch["message"]
    assert step.requeue_seconds == pytest.approx(10.5)  # look again when the 600 s run out
    assert "Decided" not in kinds(step)
    # recorded: nothing more to write
    st2 = running_status(phase="Restarting", attempt=2, podName="job-2", **patch)
    assert not d.reconcile(world(st=st2, pods=[pulling])).actions
    # the timeout passes: a new pod on another node, on the infrastructure budget
    late = pod(
        "job-2", phase="Pending", waiting="ImagePullBackOff", waiting_message=TRANSIENT_PULL, started_ago=601
    )
    step = d.reconcile(world(st=st2, pods=[late]))
    decided = only(step, d.PatchStatus).patch
    assert decided["phase"] == "Restarting" and decided["restarts"]["infrastructure"] == 1
    assert decided["pending"]["reason"] == "ImagePullTimeout" and decided["pending"]["avoidNode"] == "node-a"


def test_effective_memory_the_larger_of_adapted_and_explicit() -> None:
    adapted = d.EffectiveTraining(memory="3Gi")
    assert d.effective_memory(spec(resources={"memory": "1Gi"}), adapted) == "3Gi"
    assert d.effective_memory(spec(resources={"memory": "4Gi"}), adapted) == "4Gi"  # the user raised it
    assert d.effective_memory(spec(resources={"memory": "4Gi"}), None) == "4Gi"
    assert d.effective_memory(spec(resources={"memory": None}), adapted) == "3Gi"


def test_host_oom_after_the_user_raised_memory_adapts_from_the_raise() -> None:
    """After one OOM (1Gi → 1536Mi) the user raises resources.memory to 4Gi: the next OOM starts from 4Gi."""
    s = spec(resources={"memory": "4Gi"})
    plan = d.plan_next(s, status(effective={"memory": "1536Mi"}), outcome("HostOOM"))
    assert plan.effective is not None and plan.effective.memory == "6Gi"
    assert plan.change == "memory 4Gi → 6Gi"


# =============================================================================== create refused (issue 12)


def refusal(code: int, message: str, kind: str = "Pod", reason: str = "Forbidden") -> d.Refusal:
    body = json.dumps({"kind": "Status", "status": "Failure", "reason": reason, "message": message})
    return d.refusal_from_response(kind, "job-1", code, body)


PC_MISSING = 'pods "job-1" is forbidden: no PriorityClass with name gpu-spot was found'
QUOTA = 'pods "job-1" is forbidden: exceeded quota: q, requested: cpu=300m, used: cpu=0, limited: cpu=100m'
RBAC = 'pods is forbidden: User "system:serviceaccount:x:op" cannot create resource "pods"'
TOO_BIG = 'ConfigMap "job-trainer-config" is invalid: []: Too long: must have at most 1048576 bytes'


def test_refusal_is_read_from_the_status_body() -> None:
    r = refusal(422, TOO_BIG, kind="ConfigMap", reason="Invalid")
    assert (r.kind, r.name, r.code, r.reason, r.message) == ("ConfigMap", "job-1", 422, "Invalid", TOO_BIG)
    plain = d.refusal_from_response("Pod", "job-1", 400, b"not json")
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
    assert d.judge_refusal(refusal(code, message)) == (verdict, reason)


def test_invalid_object_fails_the_job_with_the_apiservers_message_and_a_warning() -> None:
    step = d.refused_step(world(), refusal(422, TOO_BIG, kind="ConfigMap", reason="Invalid"))
    patch = only(step, d.PatchStatus).patch
    assert patch["phase"] == "Failed" and patch["reason"] == "CreateRefused"
    assert "ConfigMap job-1" in patch["message"] and "1048576 bytes" in patch["message"]
    assert patch["completionTime"] and patch["pending"] is None
    event = only(step, d.Event)
    assert event.type == "Warning" and event.reason == "CreateRefused" and "1048576" in event.message
    assert step.requeue_seconds is None
    # and once Failed, nothing is created any more
    failed = status(observedGeneration=1, phase="Failed", reason="CreateRefused")
    assert not any(isinstance(a, d.CreatePod) for a in d.reconcile(world(st=failed)).actions)


def test_missing_priority_class_waits_pending_and_says_so_once() -> None:
    step = d.refused_step(world(), refusal(403, PC_MISSING))
    patch = only(step, d.PatchStatus).patch
    assert patch["phase"] == "Pending" and patch["reason"] == "PriorityClassNotFound"
    assert "no PriorityClass with name gpu-spot" in patch["message"]
    assert only(step, d.Event).type == "Warning"
    assert step.requeue_seconds == d.REFUSAL_RECHECK_SECONDS
    # the next recheck is refused the same way: nothing new to say, look again later
    shown = status(observedGeneration=1, phase="Pending", reason=patch["reason"], message=patch["message"])
    again = d.refused_step(world(st=shown), refusal(403, PC_MISSING))
    assert again.actions == [] and again.requeue_seconds == d.REFUSAL_RECHECK_SECONDS
    # still not created: reconcile asks for the pod again (the handler tries, and is refused or not)
    assert only(d.reconcile(world(st=shown)), d.CreatePod).attempt == 1


def test_refusal_while_restarting_keeps_the_phase_and_the_pending_decision() -> None:
    st = running_status(
        phase="Restarting",
        pending={"action": "restart", "cause": "preemption", "reason": "SIGTERM", "podName": "job-1"},
    )
    step = d.refused_step(world(st=st), refusal(403, QUOTA))
    assert only(step, d.PatchStatus).patch.keys() == {"reason", "message"}
    assert only(step, d.PatchStatus).patch["reason"] == "QuotaExceeded"


def test_transient_refusal_is_left_to_the_retry_loop() -> None:
    step = d.refused_step(world(), refusal(500, "etcdserver: request timed out", reason="InternalError"))
    assert step.actions == [] and step.requeue_seconds is None


# ======================================================================== kubectl get says why (issue 12)


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
    step = d.reconcile(world(st=st, pods=[pod("job-2", phase="Pending", node=None, unschedulable_for=5)]))
    patch = only(step, d.PatchStatus).patch
    assert patch == {
        "reason": "Unschedulable",
        "message": "waiting for a node: 0/1 nodes are available: insufficient nvidia.com/gpu",
    }
    assert "phase" not in patch  # still Restarting: the counters and the phase tell what happened
    shown = st.model_copy(update={"reason": patch["reason"], "message": patch["message"]})
    again = d.reconcile(world(st=shown, pods=[pod("job-2", phase="Pending", node=None, unschedulable_for=9)]))
    assert not any(isinstance(a, d.PatchStatus) for a in again.actions)


def test_an_ended_attempt_clears_the_time_estimate() -> None:
    st = running_status(stepsPerSecond=0.5, estimatedRemainingSeconds=56, remaining="56s")
    out = classify(pod(exit_code=75, disruption="EvictionByEvictionAPI"), READY)
    assert out is not None
    plan = d.plan_next(spec(), st, out)
    patch = d.decision_patch(st, out, plan, "job-1", NOW)
    assert patch["estimatedRemainingSeconds"] is None and patch["remaining"] is None
    assert "stepsPerSecond" not in patch  # the last measured rate stays visible


# =============================================================================== shared volumes: fencing


UNREADY_90S = d.NodeView("node-a", ready="Unknown", ready_since=NOW - timedelta(seconds=90))
NODE_TABLE = {
    "unready past the timeout": UNREADY_90S,
    "unready, out-of-service taint": d.NodeView(
        "node-a", ready="Unknown", ready_since=NOW - timedelta(seconds=90), out_of_service=True
    ),
    "out-of-service taint at once": d.NodeView(
        "node-a", ready="False", ready_since=NOW - timedelta(seconds=5), out_of_service=True
    ),
    "Node object deleted": d.NodeView("node-a", exists=False, ready="Unknown"),
    "unready, within the timeout": d.NodeView(
        "node-a", ready="Unknown", ready_since=NOW - timedelta(seconds=30)
    ),
    "ready": READY,
}


@pytest.mark.parametrize(
    ("node", "shared", "lost", "waits_for_admin"),
    [
        ("unready past the timeout", False, True, False),  # ReadWriteOnce: today's bet on the timeout
        ("unready past the timeout", True, False, True),  # ReadWriteMany: never on the timeout alone
        ("unready, out-of-service taint", True, True, False),
        ("out-of-service taint at once", True, True, False),
        ("Node object deleted", True, True, False),
        ("unready, within the timeout", True, False, False),
        ("unready, within the timeout", False, False, False),
        ("ready", True, False, False),
    ],
)
def test_node_lost_rule_for_shared_volumes(
    node: str, shared: bool, lost: bool, waits_for_admin: bool
) -> None:
    view = NODE_TABLE[node]
    assert d.node_lost(view, NOW, 60, shared_volume=shared) is lost
    assert d.node_unconfirmed(view, NOW, 60, shared) is waits_for_admin


def test_volume_shared_by_access_mode() -> None:
    assert d.volume_shared(["ReadWriteMany"]) and d.volume_shared(["ReadWriteOnce", "ReadWriteMany"])
    assert not d.volume_shared(["ReadWriteOnce"]) and not d.volume_shared(["ReadWriteOncePod"])


def test_shared_volume_pod_on_unready_node_is_not_force_deleted_and_status_says_why() -> None:
    stuck = pod(running=True, deleted=True, disruption="DeletionByTaintManager")
    step = d.reconcile(
        world(st=running_status(), pods=[stuck], nodes={"node-a": UNREADY_90S}, shared_volume=True)
    )
    assert kinds(step) == ["PatchStatus", "Event"], step.actions  # no decision, no delete, no new pod
    patch = only(step, d.PatchStatus).patch
    assert patch["reason"] == "NodeUnreachable" and "phase" not in patch and "restarts" not in patch
    text = patch["message"]
    assert "ReadWriteMany" in text and "job-1" in text
    assert "kubectl taint nodes node-a node.kubernetes.io/out-of-service=nodeshutdown:NoExecute" in text
    event = only(step, d.Event)
    assert (event.type, event.reason, event.message) == ("Warning", "NodeUnreachable", text)
    assert step.requeue_seconds == d.WATCH_NODE_SECONDS  # a taint sends no pod event: look again
    # Shown once: the next pass neither patches nor posts again while nothing changed.
    shown = running_status(reason="NodeUnreachable", message=text)
    step = d.reconcile(world(st=shown, pods=[stuck], nodes={"node-a": UNREADY_90S}, shared_volume=True))
    assert step.actions == [] and step.requeue_seconds == d.WATCH_NODE_SECONDS


@pytest.mark.parametrize("node", ["unready, out-of-service taint", "Node object deleted"])
def test_shared_volume_pod_is_replaced_once_the_node_is_confirmed_down(node: str) -> None:
    stuck = pod(running=True, deleted=True, disruption="DeletionByTaintManager")
    nodes = {"node-a": NODE_TABLE[node]}
    step = d.reconcile(world(st=running_status(), pods=[stuck], nodes=nodes, shared_volume=True))
    patch = only(step, d.PatchStatus).patch
    assert patch["pending"]["reason"] == "NodeLost" and patch["restarts"]["preemption"] == 1
    st2 = running_status(**{k: v for k, v in patch.items() if k != "conditions"})
    step = d.reconcile(world(st=st2, pods=[stuck], nodes=nodes, shared_volume=True))
    assert kinds(step) == ["ReleasePod", "DeletePod"] and only(step, d.DeletePod).force


def test_shared_volume_pending_restart_waits_for_the_old_pod_and_says_why() -> None:
    st = running_status(phase="Restarting", pending={"action": "restart", "reason": "x", "podName": "job-1"})
    stuck = pod(running=True, deleted=True, finalizer=False)
    step = d.reconcile(world(st=st, pods=[stuck], nodes={"node-a": UNREADY_90S}, shared_volume=True))
    assert "DeletePod" not in kinds(step) and "CreatePod" not in kinds(step)
    assert only(step, d.PatchStatus).patch["reason"] == "NodeUnreachable"
    # ReadWriteOnce: the same pod is force-deleted on the timeout, as before.
    step = d.reconcile(world(st=st, pods=[stuck], nodes={"node-a": UNREADY_90S}))
    assert only(step, d.DeletePod).force


def test_shared_volume_node_back_clears_the_reason() -> None:
    shown = running_status(reason="NodeUnreachable", message="node node-a is not ready ...")
    step = d.reconcile(world(st=shown, pods=[pod(running=True)], shared_volume=True))
    assert only(step, d.PatchStatus).patch["reason"] == "NodeReady"


def test_shared_volume_suspend_on_unready_node_deletes_gracefully() -> None:
    step = d.reconcile(
        world(
            st=running_status(),
            pods=[pod(running=True)],
            sp=spec(suspend=True),
            nodes={"node-a": UNREADY_90S},
            shared_volume=True,
        )
    )
    assert only(step, d.DeletePod).force is False


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
    step = d.reconcile(world(st=running_status(), pods=[pod(exit_code=73, message=SUPERSEDED_MESSAGE)]))
    patch = only(step, d.PatchStatus).patch
    assert patch["phase"] == "Failed" and patch["reason"] == "Superseded" and "restarts" not in patch
    assert "CreatePod" not in kinds(step)


def test_an_older_attempt_ending_with_73_afterwards_changes_nothing() -> None:
    """Attempt 1's node came back after attempt 2 took over: its trainer was fenced (exit 73). Its pod is a
    stray to clean up, never judged: no restart counted, no lost steps, attempt 2 untouched."""
    st = running_status(attempt=2, podName="job-2", step=30, restarts={"preemption": 1}, lostSteps=2)
    old = pod("job-1", exit_code=73, message=SUPERSEDED_MESSAGE)
    step = d.reconcile(world(st=st, pods=[old, pod("job-2", running=True)]))
    assert kinds(step) == ["ReleasePod", "DeletePod"], step.actions
    assert {a.name for a in step.actions} == {"job-1"}  # type: ignore[attr-defined]
    # Also while the decision about attempt 1 is still pending (its pod named there): only cleanup.
    st = running_status(
        phase="Restarting",
        restarts={"preemption": 1},
        pending={"action": "restart", "reason": "NodeLost", "podName": "job-1"},
    )
    step = d.reconcile(world(st=st, pods=[old], shared_volume=True))
    assert kinds(step) == ["ReleasePod", "DeletePod"]


# =============================================================================== emergency save in time?


def ended_after_sigterm(exit_code: int, message: dict[str, Any] | None) -> d.Step:
    ended = pod(exit_code=exit_code, disruption="TerminationByKubelet", deleted=True, message=message)
    return d.reconcile(world(st=running_status(lateEmergencySaves=2), pods=[ended]))


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
    patch = only(step, d.PatchStatus).patch
    assert patch["lastEmergencySave"] == {
        "step": 12,
        "seconds": 0.4,
        "deadlineSeconds": 10.0,
        "inTime": True,
        "time": "2026-01-01T11:59:59.000Z",  # when the container ended
    }
    assert "lateEmergencySaves" not in patch
    assert not [a for a in step.actions if isinstance(a, d.Event) and a.reason == "EmergencySaveLate"]
    # the trainer wrote its message, then the kubelet's SIGKILL came before the process was gone: in time
    patch = only(ended_after_sigterm(137, message), d.PatchStatus).patch
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
    patch = only(step, d.PatchStatus).patch
    save = patch["lastEmergencySave"]
    assert (save["step"], save["seconds"], save["inTime"], save["deadlineSeconds"]) == (
        None,
        None,
        False,
        10.0,
    )
    assert patch["lateEmergencySaves"] == 3
    late = [a for a in step.actions if isinstance(a, d.Event) and a.reason == "EmergencySaveLate"]
    assert len(late) == 1 and late[0].type == "Warning"
    assert "10 s" in late[0].message and "checkpoint-10" in late[0].message
    decided = only(step, d.Decided)
    assert "not committed within the save deadline" in decided.outcome.message


def test_killed_during_the_emergency_save_is_late() -> None:
    patch = only(ended_after_sigterm(137, None), d.PatchStatus).patch
    assert patch["lastEmergencySave"]["inTime"] is False and patch["lateEmergencySaves"] == 3


def test_no_emergency_save_without_one_to_make() -> None:
    # SIGTERM before training began: nothing to save, nothing reported
    before = ended_after_sigterm(75, {"reason": "Preempted", "message": "SIGTERM before training started"})
    assert "lastEmergencySave" not in only(before, d.PatchStatus).patch
    # a node that went down and came back: no SIGTERM, no save attempted
    restarted = pod(exit_code=137, reason="ContainerStatusUnknown")
    step = d.reconcile(world(st=running_status(), pods=[restarted]))
    assert "lastEmergencySave" not in only(step, d.PatchStatus).patch
