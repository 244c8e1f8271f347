"""Operator scenarios as plain functions of a cluster provider, shared by the local-cluster integration tests
(tests/integration/operator) and the kind e2e suite (tests/e2e): one scenario module, several providers.

A provider (see `Provider`) gives the Kubernetes client, a namespace, the trainer image that holds the tiny
model, and the disruptions it can perform; a scenario skips itself (`Unsupported`) when the provider cannot
do what it needs (e.g. restarting an operator that runs in-cluster from the chart).

Each scenario applies a small FineTuneJob on the tiny offline model (20-40 steps), disturbs it, and checks
the job's status, Events and the final adapter on the volume.
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from collections.abc import Callable
from functools import partial
from typing import Any, Protocol

from kubernetes.client.rest import ApiException

from tests.harness import disruptions
from tests.harness.kube import Kube, wait_for

GROUP, VERSION, PLURAL = "finetune.dev", "v1alpha1", "finetunejobs"
TINY_DIR = "/opt/finetune-tiny"  # where trainer-image/Dockerfile.tiny puts the tiny model


class Unsupported(Exception):
    """The provider cannot perform what this scenario needs."""


class Provider(Protocol):
    kube: Kube
    namespace: str
    node_name: str
    trainer_image: str

    def read_volume_file(self, namespace: str, claim: str, path: str) -> bytes: ...

    def restart_operator(self, kill: bool = True) -> None: ...  # raise Unsupported if not possible

    def stop_operator(self) -> None: ...

    def start_operator(self) -> None: ...

    def vanish_node(self) -> None: ...

    def restore_node(self) -> None: ...


# ============================================================================================ helpers


def tiny_job(
    name: str,
    image: str,
    *,
    steps: int = 24,
    save_steps: int = 4,
    step_sleep: float = 0.25,
    env: dict[str, str] | None = None,
    memory: str = "1536Mi",
    **spec_overrides: Any,
) -> dict[str, Any]:
    """A FineTuneJob on the tiny model: a few seconds of training, a checkpoint every `save_steps`."""
    variables = {"FTO_TEST_STEP_SLEEP_SECONDS": str(step_sleep), "OMP_NUM_THREADS": "1"}
    variables.update(env or {})
    spec: dict[str, Any] = {
        "model": {"name_or_path": f"{TINY_DIR}/model"},
        "dataset": {"path": f"{TINY_DIR}/data.jsonl"},
        "lora": {"r": 4, "lora_alpha": 8, "target_modules": ["c_attn"]},
        "training": {
            "max_steps": steps,
            "save_steps": save_steps,
            "save_total_limit": 2,
            "per_device_train_batch_size": 4,
            "gradient_accumulation_steps": 1,
            "max_length": 64,
            "logging_steps": 1,
            "learning_rate": 1e-3,
            "seed": 7,
        },
        "checkpoint": {"volumeSize": "1Gi", "terminationGracePeriodSeconds": 30, "deleteWithJob": True},
        "resources": {"gpus": 0, "cpu": "1", "memory": memory},
        "restartPolicy": {"backoffSeconds": 1, "maxBackoffSeconds": 4},
        "image": image,
        "imagePullPolicy": "Never",
        "env": [{"name": k, "value": v} for k, v in variables.items()],
    }
    for key, value in spec_overrides.items():
        if isinstance(value, dict) and isinstance(spec.get(key), dict):
            spec[key] = {**spec[key], **value}
        else:
            spec[key] = value
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "FineTuneJob",
        "metadata": {"name": name},
        "spec": spec,
    }


def apply_job(p: Provider, manifest: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = p.kube.custom.create_namespaced_custom_object(
        GROUP, VERSION, p.namespace, PLURAL, copy.deepcopy(manifest)
    )
    return result


def get_job(p: Provider, name: str) -> dict[str, Any]:
    job: dict[str, Any] = p.kube.custom.get_namespaced_custom_object(
        GROUP, VERSION, p.namespace, PLURAL, name
    )
    return job


def status(p: Provider, name: str) -> dict[str, Any]:
    return dict(get_job(p, name).get("status") or {})


def wait_status(
    p: Provider, name: str, check: Callable[[dict[str, Any]], bool], timeout: float = 180, what: str = ""
) -> dict[str, Any]:
    last: dict[str, Any] = {}

    def probe() -> dict[str, Any] | None:
        nonlocal last
        last = status(p, name)
        if last.get("phase") == "Failed" and not check(last):
            raise AssertionError(f"{name} failed: {last.get('reason')}: {last.get('message')}")
        return last if check(last) else None

    try:
        return wait_for(probe, timeout, interval=0.5, what=what or f"{name} status")
    except TimeoutError as error:
        raise TimeoutError(f"{error}; status: {summary(last)}") from None


def summary(s: dict[str, Any]) -> str:
    keys = ("phase", "attempt", "podName", "step", "lastCheckpointStep", "restarts", "reason", "message")
    return str({k: s.get(k) for k in keys})


def wait_phase(p: Provider, name: str, phase: str, timeout: float = 180) -> dict[str, Any]:
    return wait_status(p, name, lambda s: s.get("phase") == phase, timeout, f"{name} phase {phase}")


def wait_checkpoint(p: Provider, name: str, step: int, timeout: float = 180) -> dict[str, Any]:
    """Until a checkpoint at or after `step` is committed and the trainer still runs."""
    return wait_status(
        p,
        name,
        lambda s: (s.get("lastCheckpointStep") or 0) >= step and s.get("phase") == "Running",
        timeout,
        f"{name} committed checkpoint >= {step}",
    )


def events(p: Provider, name: str) -> list[Any]:
    items = p.kube.core.list_namespaced_event(
        p.namespace, field_selector=f"involvedObject.kind=FineTuneJob,involvedObject.name={name}"
    ).items
    return sorted(items, key=lambda e: e.metadata.creation_timestamp)


def pods(p: Provider, name: str) -> list[Any]:
    return list(p.kube.core.list_namespaced_pod(p.namespace, label_selector=f"finetune.dev/job={name}").items)


def final_adapter_sha256(p: Provider, name: str, claim: str | None = None) -> str:
    """The final adapter in the job's own run directory (status.runDirectory: runs/<uid>)."""
    job = get_job(p, name)
    run_dir = (job.get("status") or {}).get("runDirectory")
    assert run_dir == f"runs/{job['metadata']['uid']}", job.get("status")
    data = p.read_volume_file(
        p.namespace, claim or f"{name}-checkpoints", f"{run_dir}/final/adapter_model.safetensors"
    )
    return hashlib.sha256(data).hexdigest()


def assert_succeeded(p: Provider, name: str, steps: int) -> dict[str, Any]:
    s = wait_phase(p, name, "Succeeded", timeout=240)
    assert s["step"] == steps, summary(s)
    assert s.get("progress") == f"{steps}/{steps}", summary(s)
    assert s.get("completionTime"), summary(s)
    assert s.get("observedGeneration") == get_job(p, name)["metadata"]["generation"], summary(s)
    complete = {c["type"]: c for c in s.get("conditions") or []}
    assert complete["Complete"]["status"] == "True" and complete["Failed"]["status"] == "False"
    return s


def printer_columns(p: Provider, name: str) -> dict[str, str]:
    """`kubectl get ftj NAME -o wide` as {COLUMN: value} (columns are separated by 2+ spaces)."""
    header, row = p.kube.kubectl("-n", p.namespace, "get", "ftj", name, "-o", "wide").stdout.splitlines()[:2]
    starts = [i for i, ch in enumerate(header) if ch != " " and (i == 0 or header[max(0, i - 2) : i] == "  ")]
    bounds = [*starts[1:], None]
    return {header[a:b].strip(): row[a:b].strip() for a, b in zip(starts, bounds, strict=True)}


# ============================================================================================ scenarios


def happy_path(p: Provider, name: str = "happy") -> str:
    """apply → Succeeded; final adapter on the volume; status, conditions, Events, printer columns.
    Returns the final adapter's sha256 (the reference for the disruption scenarios)."""
    apply_job(p, tiny_job(name, p.trainer_image))
    s = assert_succeeded(p, name, 24)
    assert s["attempt"] == 1 and s["restartsTotal"] == 0 and s.get("lostSteps", 0) == 0, summary(s)
    assert s["lastCheckpointStep"] == 24 or s["lastCheckpointStep"] >= 20, summary(s)
    assert s.get("checkpoints") in (1, 2), summary(s)
    reasons = [e.reason for e in events(p, name)]
    assert "AttemptCreated" in reasons and "Succeeded" in reasons, reasons
    cols = printer_columns(p, name)
    assert cols.get("PHASE") == "Succeeded" and cols.get("STEP") == "24/24" and cols.get("RESTARTS") == "0", (
        cols
    )
    assert cols.get("ATTEMPT") == "1", cols
    # the last pod stays (for `kubectl logs`), without our finalizer; the kubelet reports the container's
    # exit before the pod's phase
    (pod,) = pods(p, name)
    assert not pod.metadata.finalizers, pod.metadata
    p.kube.wait_pod(p.namespace, pod.metadata.name, lambda q: q.status.phase == "Succeeded", 30)
    return final_adapter_sha256(p, name)


def _disrupt_and_check(
    p: Provider,
    name: str,
    disrupt: Callable[[str], Callable[[], None] | None],
    reference: str | None,
    expect_reason: str | None = None,
    **spec: Any,
) -> dict[str, Any]:
    """Start a job, wait for a committed checkpoint, disrupt its pod, and check it resumes and finishes."""
    apply_job(p, tiny_job(name, p.trainer_image, **spec))
    before = wait_checkpoint(p, name, 8)
    victim = before["podName"]
    # the running pod carries the time of the last committed checkpoint (for schedulers choosing victims)
    wait_for(
        lambda: (p.kube.pod(p.namespace, victim).metadata.annotations or {}).get(
            "finetune.dev/last-checkpoint-time"
        ),
        30,
        what=f"{victim} last-checkpoint-time annotation",
    )
    undo = disrupt(victim)
    try:
        decided = wait_status(
            p, name, lambda s: (s.get("restarts") or {}).get("preemption", 0) >= 1, 180, f"{name} preemption"
        )
    finally:
        if undo is not None:
            undo()
    s = assert_succeeded(p, name, 24)
    restarts = s["restarts"]
    assert restarts["preemption"] == 1 and restarts["error"] == 0, summary(s)
    assert restarts["hostOOM"] == 0 and restarts["cudaOOM"] == 0, summary(s)
    assert s["attempt"] == 2, summary(s)
    if expect_reason:
        reasons = " ".join(f"{e.reason}: {e.message}" for e in events(p, name))
        assert expect_reason in reasons, reasons
    # the replacement resumed from a committed checkpoint (the trainer says so in its log)
    log = p.kube.logs(p.namespace, f"{name}-2")
    assert "resum" in log.lower(), log[-2000:]
    if reference is not None:
        assert final_adapter_sha256(p, name) == reference, "resumed run differs from the undisturbed one"
    del decided
    return s


def preempt_by_drain(p: Provider, reference: str | None, name: str = "drain") -> dict[str, Any]:
    def disrupt(victim: str) -> Callable[[], None]:
        disruptions.drain(p.kube, p.node_name, p.namespace)
        return lambda: disruptions.uncordon(p.kube, p.node_name)

    return _disrupt_and_check(p, name, disrupt, reference, "EvictionByEvictionAPI")


def preempt_by_taint(p: Provider, reference: str | None, name: str = "taint") -> dict[str, Any]:
    def disrupt(victim: str) -> Callable[[], None]:
        disruptions.taint_noexecute(p.kube, p.node_name)
        return lambda: disruptions.untaint(p.kube, p.node_name)

    return _disrupt_and_check(p, name, disrupt, reference, "DeletionByTaintManager")


LOW_PRIORITY_CLASS = "fto-test-training"


def ensure_low_priority_class(p: Provider) -> None:
    """Training on spot capacity usually runs at a low priority: the scheduler picks such pods as victims."""
    body = {
        "apiVersion": "scheduling.k8s.io/v1",
        "kind": "PriorityClass",
        "metadata": {"name": LOW_PRIORITY_CLASS},
        "value": -100,
        "preemptionPolicy": "Never",
        "description": "finetune-operator tests: preemptible training",
    }
    try:
        p.kube.scheduling.create_priority_class(body)
    except ApiException as error:
        if error.status != 409:
            raise


def preempt_by_priority(p: Provider, reference: str | None, name: str = "preempt") -> dict[str, Any]:
    holder: list[disruptions.Preemptor] = []
    ensure_low_priority_class(p)

    def disrupt(victim: str) -> Callable[[], None]:
        holder.append(disruptions.preempt(p.kube, p.namespace, victim))
        # the preemptor holds the CPU the replacement needs: let it go once the victim is gone
        return lambda: holder[0].release(wait=False)

    return _disrupt_and_check(
        p,
        name,
        disrupt,
        reference,
        "PreemptionByScheduler",
        scheduling={"priorityClassName": LOW_PRIORITY_CLASS},
    )


def preempt_by_user_delete(p: Provider, reference: str | None, name: str = "userdelete") -> dict[str, Any]:
    def disrupt(victim: str) -> None:
        p.kube.core.delete_namespaced_pod(victim, p.namespace)

    s = _disrupt_and_check(p, name, disrupt, reference, "PodDeleted")
    # the trainer committed its emergency checkpoint within the deadline, and said so (issue 13)
    save = s.get("lastEmergencySave") or {}
    assert save.get("inTime") is True and save.get("step") is not None, summary(s)
    assert save.get("deadlineSeconds") == 25 and not s.get("lateEmergencySaves"), summary(s)
    return s


def node_gone(p: Provider, reference: str | None, name: str = "nodegone") -> dict[str, Any]:
    def disrupt(victim: str) -> Callable[[], None]:
        p.vanish_node()
        return p.restore_node

    return _disrupt_and_check(p, name, disrupt, reference, "NodeLost")


OUT_OF_SERVICE = disruptions.OUT_OF_SERVICE_KEY


def node_gone_shared_volume(p: Provider, reference: str | None, name: str = "nodegonerwx") -> dict[str, Any]:
    """A ReadWriteMany checkpoint claim: the node-lost timeout alone never force-deletes the pod (its trainer
    might still write there). The job waits and says why; once an admin taints the node out-of-service, the
    pod is replaced and the job resumes as after any node loss."""

    def disrupt(victim: str) -> Callable[[], None]:
        p.vanish_node()
        s = wait_status(p, name, lambda s: s.get("reason") == "NodeUnreachable", 120, f"{name} waits")
        assert "ReadWriteMany" in s["message"] and victim in s["message"], summary(s)
        assert f"kubectl taint nodes {p.node_name} {OUT_OF_SERVICE}=" in s["message"], summary(s)
        time.sleep(5)  # well past --node-lost-seconds: still the same pod, no decision, no replacement
        s = status(p, name)
        assert s["reason"] == "NodeUnreachable" and (s.get("restarts") or {}).get("preemption", 0) == 0
        assert [x.metadata.name for x in pods(p, name)] == [victim]
        warnings = [e for e in events(p, name) if e.reason == "NodeUnreachable"]
        assert warnings and warnings[0].type == "Warning", [e.reason for e in events(p, name)]
        disruptions.taint_noexecute(p.kube, p.node_name, key=OUT_OF_SERVICE, value="nodeshutdown")

        def undo() -> None:
            disruptions.untaint(p.kube, p.node_name, key=OUT_OF_SERVICE)
            p.restore_node()

        return undo

    # Once tainted, the pod garbage collector marks the pod Failed (DeletionByTaintManager) or the operator
    # finds the node lost: either way one preemption and a replacement.
    s = _disrupt_and_check(
        p, name, disrupt, reference, "RestartPreemption", checkpoint={"accessMode": "ReadWriteMany"}
    )
    order = [e.reason for e in events(p, name)]
    assert order.index("NodeUnreachable") < order.index("RestartPreemption"), order
    return s


def host_oom(p: Provider, name: str = "hostoom") -> dict[str, Any]:
    """A memory limit the trainer cannot live with → OOMKilled → restarted with more memory (bounded)."""
    apply_job(
        p,
        tiny_job(
            name,
            p.trainer_image,
            memory="200Mi",
            resources={"maxMemory": "2Gi"},
            restartPolicy={"oomMemoryFactor": 4.0, "maxOomRestarts": 3},
        ),
    )
    s = wait_phase(p, name, "Succeeded", timeout=300)
    assert s["restarts"]["hostOOM"] >= 1 and s["restarts"]["preemption"] == 0 and s["restarts"]["error"] == 0
    from finetune_api.quantity import parse_quantity

    assert parse_quantity(s["effective"]["memory"]) > parse_quantity("200Mi"), summary(s)
    assert parse_quantity(s["effective"]["memory"]) <= parse_quantity("2Gi"), summary(s)
    last = p.kube.pod(p.namespace, s["podName"])
    assert last.spec.containers[0].resources.limits["memory"] == s["effective"]["memory"]
    reasons = " ".join(e.message for e in events(p, name) if e.reason == "RestartHostOOM")
    assert "memory 200Mi →" in reasons, reasons
    return s


def cuda_oom(p: Provider, name: str = "cudaoom") -> dict[str, Any]:
    """An injected CUDA OOM at batch > 2 → batch 4 → 2, accumulation 1 → 2 (same effective batch)."""
    apply_job(p, tiny_job(name, p.trainer_image, env={"FTO_TEST_CUDA_OOM_IF_BATCH_ABOVE": "2"}))
    s = assert_succeeded(p, name, 24)
    assert s["restarts"]["cudaOOM"] == 1 and s["restartsTotal"] == 1, summary(s)
    assert s["effective"]["perDeviceTrainBatchSize"] == 2 and s["effective"]["gradientAccumulationSteps"] == 2
    # The adapted batch reached attempt 2 through its config (the only route; it finished under the
    # injected limit of 2), not as CLI flags.
    args = p.kube.pod(p.namespace, f"{name}-2").spec.containers[0].args
    assert "--per-device-train-batch-size" not in args, args
    config_map = p.kube.core.read_namespaced_config_map(f"{name}-trainer-config", p.namespace)
    training = json.loads(config_map.data["config.json"])["training"]
    assert training["per_device_train_batch_size"] == 2 and training["gradient_accumulation_steps"] == 2
    return s


def app_error_budget(p: Provider, name: str = "apperror") -> dict[str, Any]:
    """An application error every attempt → backoff 1, 2 s → budget (2) exhausted → Failed + Event."""
    apply_job(
        p,
        tiny_job(
            name,
            p.trainer_image,
            env={"FTO_TEST_FAIL_AT_STEP": "3"},
            restartPolicy={"maxFailures": 2, "backoffSeconds": 1, "maxBackoffSeconds": 2},
        ),
    )
    s = wait_phase(p, name, "Failed", timeout=240)
    assert s["reason"] == "FailureBudgetExhausted" and s["restarts"]["error"] == 2, summary(s)
    assert "injected failure" in s["message"], summary(s)
    assert s["restarts"]["preemption"] == 0 and s["attempt"] == 3
    failed = [e for e in events(p, name) if e.reason == "FailureBudgetExhausted"]
    assert failed and failed[0].type == "Warning"
    return s


def operator_restarts(p: Provider, name: str = "oprestart", steps: int = 48) -> dict[str, Any]:
    """Kill the operator mid-job, and again between a pod's end and its replacement: no duplicate pod,
    no lost or doubled counter.

    `steps`: after checkpoint 8 the trainer must still be running when the operator stops and its pod is
    deleted. 48 steps of 0.3 s are enough for an operator process (with 24 the job could finish first); an
    in-cluster operator pod takes ~15 s to come back (readiness probe), and kind runs this with 96."""
    apply_job(p, tiny_job(name, p.trainer_image, steps=steps, step_sleep=0.3))
    wait_checkpoint(p, name, 4)
    p.restart_operator(kill=True)  # mid-job
    s = wait_checkpoint(p, name, 8)
    # mid-restart: stop the operator, end the pod, start the operator again
    p.stop_operator()
    p.kube.core.delete_namespaced_pod(s["podName"], p.namespace)
    time.sleep(6)  # the trainer saves and exits; the pod object stays (our finalizer) until recorded
    p.start_operator()
    s = assert_succeeded(p, name, steps)
    assert s["restarts"]["preemption"] == 1 and s["restartsTotal"] == 1 and s["attempt"] == 2, summary(s)
    seen = {pod.metadata.name for pod in pods(p, name)}
    assert seen == {f"{name}-2"}, seen
    created = [e for e in events(p, name) if e.reason == "AttemptCreated"]
    assert len(created) == 2, [e.message for e in created]
    return s


def invalid_spec(p: Provider, name: str = "invalid") -> None:
    """The apiserver rejects an invalid FineTuneJob (CRD schema + CEL): nothing is created."""
    bad = tiny_job(name, p.trainer_image)
    # Kubernetes would refuse this toleration only when creating the pod; the CRD refuses it at apply time.
    bad["spec"]["scheduling"] = {"tolerations": [{"key": "spot", "operator": "Exists", "value": "true"}]}
    try:
        apply_job(p, bad)
    except ApiException as error:
        assert error.status == 422 and "tolerations[0].value" in str(error.body), error.body
    else:
        raise AssertionError("an invalid FineTuneJob was accepted")
    time.sleep(2)
    assert not pods(p, name)
    assert not p.kube.core.list_namespaced_persistent_volume_claim(p.namespace).items


def suspend_resume(p: Provider, name: str = "suspend") -> dict[str, Any]:
    apply_job(p, tiny_job(name, p.trainer_image))
    wait_checkpoint(p, name, 4)
    p.kube.custom.patch_namespaced_custom_object(
        GROUP, VERSION, p.namespace, PLURAL, name, {"spec": {"suspend": True}}
    )
    s = wait_phase(p, name, "Suspended", timeout=90)
    wait_for(lambda: not pods(p, name), 60, what=f"{name} pods gone")
    assert s.get("restartsTotal", 0) == 0, summary(s)
    p.kube.custom.patch_namespaced_custom_object(
        GROUP, VERSION, p.namespace, PLURAL, name, {"spec": {"suspend": False}}
    )
    s = assert_succeeded(p, name, 24)
    assert s.get("restartsTotal", 0) == 0 and s["attempt"] == 2, summary(s)
    return s


# ------------------------------------------------------------------ refused at create time (issue 12)

#: What the user sees must appear this fast after `kubectl apply` (issue 12: "within 10 s").
SHOWN_WITHIN_SECONDS = 10.0


def _shown(p: Provider, name: str, reason: str) -> dict[str, Any]:
    """Within SHOWN_WITHIN_SECONDS: status.reason, the REASON column and a Warning Event all say `reason`."""
    s = wait_status(p, name, lambda s: s.get("reason") == reason, SHOWN_WITHIN_SECONDS, f"{name} {reason}")
    assert printer_columns(p, name).get("REASON") == reason, printer_columns(p, name)
    warnings = [e for e in events(p, name) if e.reason == reason]
    assert warnings and all(e.type == "Warning" for e in warnings), [(e.type, e.reason) for e in warnings]
    return s


def refused_missing_priority_class(p: Provider, name: str = "nopc") -> dict[str, Any]:
    """A PriorityClass that does not exist (yet): Pending with the apiserver's words, and the job starts
    once the class is created (rechecked every 15 s)."""
    priority_class = f"fto-test-later-{p.namespace}"[:63].rstrip("-")
    apply_job(p, tiny_job(name, p.trainer_image, scheduling={"priorityClassName": priority_class}))
    s = _shown(p, name, "PriorityClassNotFound")
    assert s["phase"] == "Pending" and priority_class in s["message"], summary(s)
    assert not pods(p, name) and s.get("attempt", 0) == 0, summary(s)
    body = {
        "apiVersion": "scheduling.k8s.io/v1",
        "kind": "PriorityClass",
        "metadata": {"name": priority_class},
        "value": -100,
        "preemptionPolicy": "Never",
    }
    p.kube.scheduling.create_priority_class(body)
    try:
        s = wait_status(p, name, lambda s: s.get("attempt") == 1, 40, f"{name} created once the class exists")
        assert [q.spec.priority_class_name for q in pods(p, name)] == [priority_class]
    finally:
        p.kube.scheduling.delete_priority_class(priority_class)
    return s


def refused_by_quota(p: Provider, name: str = "quota") -> dict[str, Any]:
    """A ResourceQuota the pod does not fit: Pending QuotaExceeded; raising the quota starts the job."""
    quota = {
        "apiVersion": "v1",
        "kind": "ResourceQuota",
        "metadata": {"name": "fto-test-cpu"},
        "spec": {"hard": {"requests.cpu": "100m"}},
    }
    p.kube.core.create_namespaced_resource_quota(p.namespace, quota)
    wait_for(  # the quota is enforced once its controller has computed its status
        lambda: p.kube.core.read_namespaced_resource_quota("fto-test-cpu", p.namespace).status.hard or {},
        30,
        what="resource quota status",
    )
    apply_job(p, tiny_job(name, p.trainer_image))  # asks for cpu 1
    s = _shown(p, name, "QuotaExceeded")
    assert s["phase"] == "Pending" and "exceeded quota" in s["message"], summary(s)
    assert not pods(p, name)
    p.kube.core.patch_namespaced_resource_quota(
        "fto-test-cpu", p.namespace, {"spec": {"hard": {"requests.cpu": "2"}}}
    )
    return wait_status(p, name, lambda s: s.get("attempt") == 1, 40, f"{name} created once it fits")


def refused_config_map_too_big(p: Provider, name: str = "bigcm") -> dict[str, Any]:
    """Inline examples that make the trainer's ConfigMap exceed 1 MiB: Failed CreateRefused, no pod."""
    job = tiny_job(name, p.trainer_image)
    job["spec"]["dataset"] = {"examples": [{"text": "x" * 1_060_000}]}  # the job fits etcd, its ConfigMap not
    apply_job(p, job)
    s = _shown(p, name, "CreateRefused")
    assert s["phase"] == "Failed" and s.get("completionTime"), summary(s)
    assert f"ConfigMap {name}-trainer-config" in s["message"] and "1048576" in s["message"], summary(s)
    time.sleep(2)  # and it stays that way: no retry loop, no pod
    assert status(p, name)["phase"] == "Failed" and not pods(p, name)
    return s


# ------------------------------------------------------------------------- dataset from a volume (issue 12)


def dataset_from_volume(p: Provider, reference: str | None, name: str = "datavol") -> dict[str, Any]:
    """spec.dataset.volume: the tiny dataset copied onto a claim, read by the trainer at /data (read-only);
    the adapter equals the undisturbed run's (same data, same seed)."""
    claim = f"{name}-data"
    p.kube.core.create_namespaced_persistent_volume_claim(
        p.namespace,
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": claim},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "64Mi"}}},
        },
    )
    copy_data = (
        "import os, shutil; os.makedirs('/out/corpus', exist_ok=True); "
        f"shutil.copy('{TINY_DIR}/data.jsonl', '/out/corpus/train.jsonl')"
    )
    filler = f"{name}-fill"
    p.kube.create_pod(
        p.namespace,
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": filler},
            "spec": {
                "restartPolicy": "Never",
                "containers": [
                    {
                        "name": "fill",
                        "image": p.trainer_image,
                        "imagePullPolicy": "Never",
                        "command": ["python", "-c", copy_data],
                        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
                        "volumeMounts": [{"name": "data", "mountPath": "/out"}],
                    }
                ],
                "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": claim}}],
            },
        },
    )
    p.kube.wait_pod(p.namespace, filler, lambda q: q.status.phase in ("Succeeded", "Failed"), 90)
    assert p.kube.pod(p.namespace, filler).status.phase == "Succeeded", p.kube.logs(p.namespace, filler)
    p.kube.core.delete_namespaced_pod(filler, p.namespace, grace_period_seconds=0)
    p.kube.wait_gone(p.namespace, filler, 60)  # the claim is ReadWriteOnce: one pod at a time is simplest
    volume = {"claimName": claim, "subPath": "corpus"}
    apply_job(p, tiny_job(name, p.trainer_image, dataset={"path": "/data/train.jsonl", "volume": volume}))
    s = assert_succeeded(p, name, 24)
    trainer = p.kube.pod(p.namespace, s["podName"]).spec
    (mount,) = [m for m in trainer.containers[0].volume_mounts if m.name == "dataset"]
    assert (mount.mount_path, mount.read_only, mount.sub_path) == ("/data", True, "corpus"), mount
    (vol,) = [v for v in trainer.volumes if v.name == "dataset"]
    assert vol.persistent_volume_claim.claim_name == claim and vol.persistent_volume_claim.read_only
    if reference is not None:
        assert final_adapter_sha256(p, name) == reference, "same data from a volume, different adapter"
    return s


def delete_job_cleans_up(p: Provider, name: str) -> None:
    """Deleting the job deletes its pods and (deleteWithJob) its volume."""
    p.kube.custom.delete_namespaced_custom_object(GROUP, VERSION, p.namespace, PLURAL, name)
    wait_for(lambda: not pods(p, name), 60, what=f"{name} pods deleted")
    claim = f"{name}-checkpoints"
    read_claim = partial(p.kube.core.read_namespaced_persistent_volume_claim, claim, p.namespace)
    wait_for(lambda: _absent(read_claim), 60, what=f"{name} volume deleted")


def _absent(read: Callable[[], object]) -> bool:
    """True when `read` answers 404 (the object is gone); other API errors are raised."""
    try:
        read()
    except ApiException as error:
        if error.status == 404:
            return True
        raise
    return False


def _delete_and_wait_gone(p: Provider, name: str) -> None:
    p.kube.custom.delete_namespaced_custom_object(GROUP, VERSION, p.namespace, PLURAL, name)
    wait_for(lambda: _absent(lambda: get_job(p, name)), 60, what=f"{name} deleted")


def recreated_job_trains_anew(p: Provider, name: str = "recreate") -> dict[str, Any]:
    """Delete a finished job whose volume is kept, change its training, apply it under the same name: it
    trains its own run in its own directory instead of showing Succeeded at once with the old adapter."""
    kept = {"checkpoint": {"deleteWithJob": False}}
    apply_job(p, tiny_job(name, p.trainer_image, steps=8, step_sleep=0.0, **kept))
    first = assert_succeeded(p, name, 8)
    first_uid = get_job(p, name)["metadata"]["uid"]
    first_adapter = final_adapter_sha256(p, name)
    assert first.get("startedFrom") == "fresh", summary(first)
    _delete_and_wait_gone(p, name)
    # the same name, more steps and another learning rate; the kept claim still holds the old run
    changed = tiny_job(name, p.trainer_image, steps=12, step_sleep=0.0, **kept)
    changed["spec"]["training"]["learning_rate"] = 2e-3
    apply_job(p, changed)
    second_uid = get_job(p, name)["metadata"]["uid"]
    s = assert_succeeded(p, name, 12)  # trained to 12: the old final (step 8) was not taken for this run
    assert s["runDirectory"] == f"runs/{second_uid}" and second_uid != first_uid, summary(s)
    assert s.get("startedFrom") == "fresh", s
    assert s["lastCheckpoint"]["path"].startswith(f"/checkpoints/runs/{second_uid}/"), s["lastCheckpoint"]
    assert final_adapter_sha256(p, name) != first_adapter
    # the old run is still there, untouched, for a later job's spec.checkpoint.resumeFrom
    old = p.read_volume_file(
        p.namespace, f"{name}-checkpoints", f"runs/{first_uid}/final/adapter_model.safetensors"
    )
    assert hashlib.sha256(old).hexdigest() == first_adapter
    _delete_and_wait_gone(p, name)
    p.kube.core.delete_namespaced_persistent_volume_claim(f"{name}-checkpoints", p.namespace)
    return s


HOLD_FINALIZER = "test.finetune.dev/hold"


def quick_recreate_with_delete_with_job(p: Provider, name: str = "quickrecreate") -> dict[str, Any]:
    """deleteWithJob: true; delete the job and apply it again at once. The new job meets the old claim still
    Terminating: it waits, saying so, creates no pod, and goes on once the claim is gone. (A test finalizer
    holds the old claim Terminating, so the wait does not depend on how fast garbage collection is.)"""
    claim = f"{name}-checkpoints"
    apply_job(p, tiny_job(name, p.trainer_image, steps=4, step_sleep=0.0))
    assert_succeeded(p, name, 4)
    old_claim_uid = p.kube.core.read_namespaced_persistent_volume_claim(claim, p.namespace).metadata.uid
    p.kube.core.patch_namespaced_persistent_volume_claim(
        claim,
        p.namespace,
        {"metadata": {"finalizers": [HOLD_FINALIZER]}},  # merged into the list
    )
    try:
        _delete_and_wait_gone(p, name)
        wait_for(
            lambda: (
                p.kube.core.read_namespaced_persistent_volume_claim(
                    claim, p.namespace
                ).metadata.deletion_timestamp
            ),
            60,
            what=f"old claim {claim} Terminating",
        )
        apply_job(p, tiny_job(name, p.trainer_image, steps=4, step_sleep=0.0))
        waiting = f"{name} WaitingForClaim"
        s = wait_status(p, name, lambda s: s.get("reason") == "WaitingForClaim", 30, waiting)
        assert s["phase"] == "Pending" and s["message"] == (
            f"waiting for the previous job's claim {claim} to be deleted (it is terminating)"
        ), summary(s)
        assert not pods(p, name)  # a pod on a Terminating claim would stay Pending forever
        assert "WaitingForClaim" in [e.reason for e in events(p, name)]
    finally:  # the old claim goes (also on failure: a held claim would block the namespace's deletion)
        _release_hold(p, claim, old_claim_uid)
    # the job goes on with a new claim
    s = assert_succeeded(p, name, 4)
    assert s["attempt"] == 1, summary(s)
    new_claim = p.kube.core.read_namespaced_persistent_volume_claim(claim, p.namespace)
    assert new_claim.metadata.uid != old_claim_uid
    return s


def _release_hold(p: Provider, claim: str, claim_uid: str) -> None:
    """Remove HOLD_FINALIZER from the claim `claim_uid` if it is still there (a JSON patch: finalizers merge
    in a strategic one)."""
    try:
        found = p.kube.core.read_namespaced_persistent_volume_claim(claim, p.namespace)
    except ApiException as error:
        if error.status == 404:
            return
        raise
    finalizers = list(found.metadata.finalizers or [])
    if found.metadata.uid != claim_uid or HOLD_FINALIZER not in finalizers:
        return
    index = finalizers.index(HOLD_FINALIZER)
    p.kube.core.patch_namespaced_persistent_volume_claim(
        claim,
        p.namespace,
        [
            {"op": "test", "path": f"/metadata/finalizers/{index}", "value": HOLD_FINALIZER},
            {"op": "remove", "path": f"/metadata/finalizers/{index}"},
        ],
    )
