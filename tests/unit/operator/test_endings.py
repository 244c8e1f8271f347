"""endings.py: every row of design.md §3's "why a pod ended" table, the ambiguous cases, and the node rule."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from finetune_operator.endings import node_lost, node_unconfirmed
from finetune_operator.policy import plan_next
from finetune_operator.views import NodeView

from tests.unit.operator.decision_helpers import (
    NODE_TABLE,
    NOW,
    READY,
    TRANSIENT_PULL,
    VOLUME_FULL_MESSAGE,
    classify,
    pod,
    spec,
    status,
)


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
    came_back = NodeView("node-a", ready="True", ready_since=datetime(2026, 1, 1, 12, 0, 10, tzinfo=UTC))
    out = classify(
        pod(exit_code=137, reason="Error"), came_back
    )  # finished 11:59:59, Ready again at 12:00:10
    assert out is not None and (out.end, out.reason) == ("Preempted", "NodeRestarted")
    steady = NodeView("node-a", ready="True", ready_since=datetime(2026, 1, 1, 8, 0, 0, tzinfo=UTC))
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
    plan = plan_next(spec(), status(), out)
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
    assert plan_next(spec(), status(), out).action == "fail"


def test_exit_78_is_config_error() -> None:
    out = classify(
        pod(exit_code=78, message={"reason": "ConfigError", "message": "dataset has no column 'text'"}), READY
    )
    assert out is not None and out.end == "ConfigError" and "no column" in out.message


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
    out = classify(p, NodeView("node-a", ready="Unknown", out_of_service=True))
    assert out is not None and (out.end, out.reason) == ("Preempted", "DeletionByTaintManager")
    assert "while its node was unreachable" in out.message and "before its trainer ran" not in out.message


def test_node_lost_rule() -> None:
    since = NOW - timedelta(seconds=100)
    assert node_lost(NodeView("n", exists=False), NOW, 120)
    assert node_lost(NodeView("n", ready="True", out_of_service=True), NOW, 120)
    assert not node_lost(NodeView("n", ready="Unknown", ready_since=since), NOW, 120)
    assert node_lost(NodeView("n", ready="Unknown", ready_since=since), NOW, 60)
    assert node_lost(NodeView("n", ready="False", ready_since=since), NOW, 60)
    assert not node_lost(NodeView("n", ready="True", ready_since=since), NOW, 0)
    assert not node_lost(None, NOW, 0)


def test_pod_on_lost_node_is_preemption_with_force_delete() -> None:
    node = NodeView("node-a", ready="Unknown", ready_since=NOW - timedelta(seconds=200))
    out = classify(
        pod(running=True, deleted=True, disruption="DeletionByTaintManager"), node, node_lost_seconds=60
    )
    assert out is not None and (out.end, out.reason, out.force_delete) == ("Preempted", "NodeLost", True)
    out = classify(pod(running=True), NodeView("node-a", exists=False))
    assert out is not None and out.reason == "NodeLost" and "deleted" in out.message


@pytest.mark.parametrize("disruption", [None, "EvictionByEvictionAPI"])
def test_exit_74_is_volume_full_even_during_an_emergency_save(disruption: str | None) -> None:
    out = classify(pod(exit_code=74, message=VOLUME_FULL_MESSAGE, disruption=disruption), READY)
    assert out is not None and (out.end, out.reason) == ("VolumeFull", "VolumeFull")
    assert "61440 bytes free" in out.message and out.checkpoint_step == 4


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
    assert node_lost(view, NOW, 60, shared_volume=shared) is lost
    assert node_unconfirmed(view, NOW, 60, shared) is waits_for_admin
