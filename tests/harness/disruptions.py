"""What clouds do to pods and nodes, done to the local cluster the same way.

Each helper uses the same mechanism as the real thing, so the pod ends with the condition a real cluster
shows (condition type DisruptionTarget unless noted):

=====================  ==============================================  ===============================
helper                 mechanism                                       the pod shows
=====================  ==============================================  ===============================
drain(node)            cordon + the Eviction API (kubectl drain,       reason EvictionByEvictionAPI
                       node upgrades, spot "rebalance" handlers)
taint_noexecute(node)  a NoExecute taint (node termination handlers,   reason DeletionByTaintManager
                       GKE/AKS spot reclaim)
preempt(pod)           a higher-priority pod that only fits if the     reason PreemptionByScheduler
                       victim goes (the scheduler preempts)
vanish_node()          kubelet SIGKILLed and every pod process killed  node Ready=Unknown, taint
                       (the spot VM is gone)                           node.kubernetes.io/unreachable;
                                                                       after the toleration (15 s here,
                                                                       300 s on clouds):
                                                                       DeletionByTaintManager
oom_pod()              a container over its memory limit               OOMKilled, exit 137 (no
                                                                       DisruptionTarget)
=====================  ==============================================  ===============================

Node-wide disruptions (taint, vanish, cordon) hit every pod on the node, in every namespace.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException
from kubernetes.utils import parse_quantity

from .cluster import TESTBOX_IMAGE, Cluster
from .kube import Kube, wait_for

SPOT_TAINT_KEY = "fto.test/spot-reclaim"
OUT_OF_SERVICE_KEY = "node.kubernetes.io/out-of-service"
#: No live test holds a taint longer than pytest's timeout (900 s, pyproject.toml): one older than this
#: was left by a killed run, and would evict the next run's pods.
STALE_TAINT_SECONDS = 960
PREEMPTOR_PRIORITY_CLASS = "fto-test-preemptor"
HOLD_FINALIZER = "finetune-operator.test/hold"


# --- manifests ------------------------------------------------------------------------------------
def testbox_pod(
    name: str,
    *args: str,
    cpu: str | None = "50m",
    memory_limit: str | None = None,
    grace: int = 5,
    run_as: int | None = None,
    volumes: list[dict[str, Any]] | None = None,
    volume_mounts: list[dict[str, Any]] | None = None,
    restart_policy: str = "Never",
    service_account: str | None = None,
    labels: dict[str, str] | None = None,
    hold: bool = False,
) -> dict[str, Any]:
    """A pod running the one-file testbox image (`sleep`, `hog MIB`, `write PATH TEXT`, `incluster`).

    `hold`: a finalizer keeps the pod object after it ended and was deleted, so a test can read its
    last status (conditions, exit code) at leisure; `release(kube, ns, name)` (or the `namespace`
    fixture) drops it.
    """
    resources: dict[str, Any] = {"requests": {}, "limits": {}}
    if cpu:
        resources["requests"]["cpu"] = cpu
    if memory_limit:
        resources["requests"]["memory"] = resources["limits"]["memory"] = memory_limit
    container: dict[str, Any] = {
        "name": "main",
        "image": TESTBOX_IMAGE,
        "imagePullPolicy": "Never",
        "args": list(args or ("sleep",)),
        "resources": resources,
    }
    if volume_mounts:
        container["volumeMounts"] = volume_mounts
    spec: dict[str, Any] = {
        "containers": [container],
        "restartPolicy": restart_policy,
        "terminationGracePeriodSeconds": grace,
        "enableServiceLinks": False,
    }
    if run_as is not None:
        spec["securityContext"] = {"runAsUser": run_as, "runAsGroup": run_as, "fsGroup": run_as}
    if volumes:
        spec["volumes"] = volumes
    if service_account:
        spec["serviceAccountName"] = service_account
    metadata: dict[str, Any] = {"name": name, "labels": labels or {}}
    if hold:
        metadata["finalizers"] = [HOLD_FINALIZER]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}


def release(kube: Kube, namespace: str, name: str) -> None:
    """Drop the `hold` finalizer so a deleted pod goes away."""
    try:
        kube.core.patch_namespaced_pod(name, namespace, {"metadata": {"finalizers": None}})
    except ApiException as e:
        if e.status != 404:
            raise


def oom_pod(name: str, limit: str = "32Mi", hog_mib: int = 128) -> dict[str, Any]:
    """A pod that allocates `hog_mib` MiB under a `limit` memory limit: the kernel OOM-kills it (137)."""
    return testbox_pod(name, "hog", str(hog_mib), memory_limit=limit)


# --- drain (Eviction API) -------------------------------------------------------------------------
def cordon(kube: Kube, node: str, unschedulable: bool = True) -> None:
    kube.core.patch_node(node, {"spec": {"unschedulable": unschedulable}})


def uncordon(kube: Kube, node: str) -> None:
    cordon(kube, node, False)


def pods_on_node(kube: Kube, node: str, namespace: str | None = None) -> list[client.V1Pod]:
    sel = f"spec.nodeName={node},status.phase!=Succeeded,status.phase!=Failed"
    pods = (
        kube.core.list_namespaced_pod(namespace, field_selector=sel)
        if namespace
        else kube.core.list_pod_for_all_namespaces(field_selector=sel)
    )
    return list(pods.items)


def evict(kube: Kube, namespace: str, name: str, timeout: float = 60) -> None:
    """One eviction through the Eviction API, retried while a PodDisruptionBudget says 429."""
    body = client.V1Eviction(metadata=client.V1ObjectMeta(name=name, namespace=namespace))

    def attempt() -> bool:
        try:
            kube.core.create_namespaced_pod_eviction(name, namespace, body)
        except ApiException as e:
            if e.status == 429:
                return False
            raise
        return True

    wait_for(attempt, timeout, interval=1, what=f"evict {namespace}/{name}")


def drain(kube: Kube, node: str, namespace: str | None = None, timeout: float = 60) -> list[str]:
    """Cordon `node` and evict its pods (only those of `namespace` when given), like `kubectl drain`.

    Leaves the node cordoned: call `uncordon` (we have one node) or use `drained(...)`.
    Returns "namespace/name" of the evicted pods.
    """
    cordon(kube, node)
    evicted = []
    for pod in pods_on_node(kube, node, namespace):
        owners = pod.metadata.owner_references or []
        if any(o.kind == "DaemonSet" for o in owners) or "kubernetes.io/config.mirror" in (
            pod.metadata.annotations or {}
        ):
            continue
        evict(kube, pod.metadata.namespace, pod.metadata.name, timeout)
        evicted.append(f"{pod.metadata.namespace}/{pod.metadata.name}")
    return evicted


@contextlib.contextmanager
def drained(kube: Kube, node: str, namespace: str | None = None) -> Iterator[list[str]]:
    try:
        yield drain(kube, node, namespace)
    finally:
        uncordon(kube, node)


# --- NoExecute taint (taint-eviction controller) --------------------------------------------------
def taint_noexecute(kube: Kube, node: str, key: str = SPOT_TAINT_KEY, value: str = "true") -> None:
    """Add a NoExecute taint: pods that do not tolerate it are deleted by the taint-eviction controller."""
    taints = [t for t in (kube.node(node).spec.taints or []) if t.key != key]
    # stamped as kubectl does, so that a taint a killed run left can be told by its age
    added = datetime.now(UTC).replace(microsecond=0)
    taints.append(client.V1Taint(key=key, value=value, effect="NoExecute", time_added=added))
    kube.core.patch_node(
        node, {"spec": {"taints": [kube.api_client.sanitize_for_serialization(t) for t in taints]}}
    )


def untaint(kube: Kube, node: str, key: str = SPOT_TAINT_KEY) -> None:
    taints = [t for t in (kube.node(node).spec.taints or []) if t.key != key]
    kube.core.patch_node(
        node, {"spec": {"taints": [kube.api_client.sanitize_for_serialization(t) for t in taints]}}
    )


def stale_test_taints(taints: list[client.V1Taint], now: datetime, older_than: float) -> list[str]:
    """The keys of the harness's NoExecute taints added more than `older_than` seconds before `now`."""
    return [
        t.key
        for t in taints
        if t.key in (SPOT_TAINT_KEY, OUT_OF_SERVICE_KEY)
        and t.effect == "NoExecute"
        and t.time_added is not None
        and (now - t.time_added).total_seconds() > older_than
    ]


def clear_stale_test_taints(kube: Kube, older_than: float = STALE_TAINT_SECONDS) -> list[str]:
    """Untaint every node of what a killed test run left (its teardown never ran); `node: key` removed."""
    removed = []
    for node in kube.core.list_node().items:
        for key in stale_test_taints(node.spec.taints or [], datetime.now(UTC), older_than):
            untaint(kube, node.metadata.name, key)
            removed.append(f"{node.metadata.name}: {key}")
    return removed


@contextlib.contextmanager
def tainted(kube: Kube, node: str, key: str = SPOT_TAINT_KEY) -> Iterator[None]:
    try:
        taint_noexecute(kube, node, key)
        yield
    finally:
        untaint(kube, node, key)


# --- preemption (scheduler) -----------------------------------------------------------------------
def _cpu_request_milli(pod: client.V1Pod) -> int:
    total = 0
    for c in pod.spec.containers:
        req = (c.resources.requests or {}) if c.resources else {}
        total += int(parse_quantity(req.get("cpu", "0")) * 1000)
    return total


def ensure_priority_class(kube: Kube, name: str = PREEMPTOR_PRIORITY_CLASS, value: int = 1_000_000) -> None:
    body = client.V1PriorityClass(
        metadata=client.V1ObjectMeta(name=name),
        value=value,
        preemption_policy="PreemptLowerPriority",
        description="finetune-operator tests: preempts ordinary pods",
    )
    try:
        kube.scheduling.create_priority_class(body)
    except ApiException as e:
        if e.status != 409:
            raise


class Preemptor:
    """The higher-priority pod made by `preempt`; `release()` deletes it so the victim's replacement fits."""

    def __init__(self, kube: Kube, namespace: str, name: str):
        self.kube, self.namespace, self.name = kube, namespace, name

    def release(self, wait: bool = True) -> None:
        try:
            self.kube.core.delete_namespaced_pod(self.name, self.namespace, grace_period_seconds=0)
        except ApiException as e:
            if e.status != 404:
                raise
        if wait:
            self.kube.wait_gone(self.namespace, self.name)


def preempt(kube: Kube, namespace: str, victim: str) -> Preemptor:
    """Make the scheduler preempt pod `victim`: a higher-priority pod whose CPU request fits on the
    victim's node only once the victim is gone. The victim must request some CPU (real trainers do).
    Among pods of equal priority the scheduler spares older pods first, so the victim should be the
    newest pod on the node that requests CPU (true in a test that just started it).
    """
    pod = kube.pod(namespace, victim)
    node = pod.spec.node_name
    victim_cpu = _cpu_request_milli(pod)
    if not node or victim_cpu <= 0:
        raise ValueError(f"{namespace}/{victim} must be scheduled and request CPU to be preempted")
    # Pods still terminating free their CPU any moment: wait for them, or the preemptor could fit
    # without preempting anything.
    wait_for(
        lambda: not [p for p in pods_on_node(kube, node) if p.metadata.deletion_timestamp],
        120,
        what=f"terminating pods on {node} gone",
    )
    allocatable = int(parse_quantity(kube.node(node).status.allocatable["cpu"]) * 1000)
    used = sum(_cpu_request_milli(p) for p in pods_on_node(kube, node))
    need = allocatable - used + victim_cpu
    ensure_priority_class(kube)
    name = f"preemptor-{uuid.uuid4().hex[:6]}"
    manifest = testbox_pod(name, "sleep", cpu=f"{need}m", grace=0)
    manifest["spec"]["priorityClassName"] = PREEMPTOR_PRIORITY_CLASS
    manifest["spec"]["nodeSelector"] = {"kubernetes.io/hostname": node}
    kube.create_pod(namespace, manifest)
    return Preemptor(kube, namespace, name)


# --- a node that vanishes (spot VM reclaimed) -----------------------------------------------------
def vanish_node(cluster: Cluster, kube: Kube, wait_unknown: bool = True, timeout: float = 60) -> float:
    """SIGKILL the kubelet and every pod process, as when the VM disappears. The Node object stays
    (until a cloud's node controller would delete it). With `wait_unknown`, returns how many seconds it
    took the control plane to mark the node Ready=Unknown.
    """
    t0 = time.monotonic()
    cluster.stop_node(kill_pods=True)
    if wait_unknown:
        wait_for(
            lambda: kube.node_ready(cluster.node_name) == "Unknown",
            timeout,
            what=f"node {cluster.node_name} Ready=Unknown",
        )
    return time.monotonic() - t0


def restore_node(cluster: Cluster, kube: Kube, timeout: float = 90) -> None:
    """Bring the kubelet back (a new VM with the same name) and wait until the node is Ready."""
    cluster.start_node()
    wait_for(
        lambda: kube.node_ready(cluster.node_name) == "True", timeout, what=f"node {cluster.node_name} Ready"
    )
    # The node controller lifts the unreachable/not-ready taints shortly after Ready.
    wait_for(
        lambda: (
            not [
                t
                for t in (kube.node(cluster.node_name).spec.taints or [])
                if t.key.startswith("node.kubernetes.io/")
            ]
        ),
        timeout,
        what="node taints lifted",
    )


def disruption_target(pod: client.V1Pod) -> client.V1PodCondition | None:
    """The pod's DisruptionTarget condition when it is True (set before the pod is deleted)."""
    return next(
        (c for c in (pod.status.conditions or []) if c.type == "DisruptionTarget" and c.status == "True"),
        None,
    )
