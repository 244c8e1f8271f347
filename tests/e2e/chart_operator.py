"""The operator as users run it: installed from charts/finetune-operator with real helm, in the cluster.

`ChartOperator` installs/uninstalls a release and restarts, stops and starts its pod through the Kubernetes
API (the way an operator pod is killed or rescheduled in real life). `InClusterProvider` is the scenarios'
`Provider` (tests/scenarios/operator_scenarios.py) for such an operator; it takes the two things that differ
between clusters — how to read a file on a job's volume and how to make a node vanish — as arguments:

- on the local cluster (tests/integration/chart): host-path volumes on this machine, the kubelet SIGKILLed;
- on kind (tests/e2e): `docker exec` into the node container, `docker pause`/`unpause` of the node.

So the kind suite's provider is this same code, exercised on every CI run against the local cluster.
"""

from __future__ import annotations

import os
import re
import subprocess
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.harness.kube import Kube, delete_jobs, helm_path, wait_for  # noqa: F401  (delete_jobs: re-exported)

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART = REPO_ROOT / "charts" / "finetune-operator"
GROUP, VERSION, PLURAL = "finetune.dev", "v1alpha1", "finetunejobs"
# Nothing is benign: under the chart's ClusterRole the operator must never see a 403.
BENIGN_FORBIDDEN: tuple[str, ...] = ()


helm_binary = helm_path


def create_namespace(kube: Kube, prefix: str) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:5]}"
    kube.core.create_namespace(
        client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels={"finetune-operator.test": "true"}))
    )
    wait_for(
        lambda: kube.core.read_namespaced_service_account("default", name), 30, what=f"{name}/default SA"
    )
    return name


def delete_namespace(kube: Kube, name: str) -> None:
    try:
        kube.core.delete_namespace(name, propagation_policy="Background")
    except ApiException as e:
        if e.status != 404:
            raise


@dataclass
class ChartOperator:
    """One helm release of the chart: the operator Deployment in `namespace`, watching `watch` namespaces."""

    kube: Any  # tests.harness.kube.Kube (Any: the client's stubs make every field Optional)
    helm: str
    kubeconfig: Path
    namespace: str
    image: str  # repository:tag of the operator image on the node(s)
    release: str = field(default_factory=lambda: f"fto-{uuid.uuid4().hex[:5]}")
    watch: list[str] = field(default_factory=list)
    values: list[str] = field(default_factory=list)  # extra `--set`/`-f` arguments
    pull_policy: str = "Never"

    @property
    def deployment(self) -> str:
        return self.release if "finetune-operator" in self.release else f"{self.release}-finetune-operator"

    @property
    def selector(self) -> str:
        return f"app.kubernetes.io/instance={self.release},app.kubernetes.io/component=operator"

    # --- helm ------------------------------------------------------------------------------------
    def helm_run(
        self, *args: str, check: bool = True, timeout: float = 360
    ) -> subprocess.CompletedProcess[str]:
        r = subprocess.run(
            [self.helm, *args, "--namespace", self.namespace],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env={**os.environ, "KUBECONFIG": str(self.kubeconfig)},
        )
        if check and r.returncode != 0:
            raise AssertionError(
                f"helm {' '.join(args)}: {r.returncode}\n{r.stdout}\n{r.stderr}\n{self.why_not_ready()}"
            )
        return r

    def install_args(self, *extra: str) -> list[str]:
        repo, _, tag = self.image.rpartition(":")
        args = [
            self.release,
            str(CHART),
            "--set",
            f"image.repository={repo},image.tag={tag},image.pullPolicy={self.pull_policy}",
            "--wait",
            "--timeout",
            "4m",
        ]
        if self.watch:
            args += ["--set", "operator.watchNamespaces={" + ",".join(self.watch) + "}"]
        return [*args, *self.values, *extra]

    def install(self, *extra: str) -> subprocess.CompletedProcess[str]:
        return self.helm_run("install", *self.install_args(*extra))

    def upgrade(self, *extra: str) -> subprocess.CompletedProcess[str]:
        return self.helm_run("upgrade", *self.install_args(*extra))

    def uninstall(self) -> None:
        self.helm_run("uninstall", self.release, "--wait", check=False)

    # --- the pod -----------------------------------------------------------------------------------
    def pods(self) -> list[Any]:
        return list(self.kube.core.list_namespaced_pod(self.namespace, label_selector=self.selector).items)

    def ready_pod(self) -> Any:
        def ready() -> Any:
            for pod in self.pods():
                if pod.metadata.deletion_timestamp:
                    continue
                conditions = {c.type: c.status for c in pod.status.conditions or []}
                if conditions.get("Ready") == "True":
                    return pod
            return None

        return wait_for(ready, 180, interval=0.5, what=f"operator pod of {self.release} Ready")

    def why_not_ready(self) -> str:
        lines = []
        try:
            for pod in self.pods():
                for s in pod.status.container_statuses or []:
                    waiting = s.state.waiting if s.state else None
                    if waiting:
                        hint = " (run hack/cluster.sh images)" if "Pull" in (waiting.reason or "") else ""
                        lines.append(f"{pod.metadata.name}: {waiting.reason}: {waiting.message}{hint}")
        except ApiException as e:  # pragma: no cover - diagnostics only
            lines.append(str(e))
        return "\n".join(lines)

    def restart(self, kill: bool = True) -> None:
        """Delete the operator pod (grace 0 = killed); the Deployment makes a new one."""
        old = {p.metadata.name for p in self.pods()}
        for name in old:
            self.kube.core.delete_namespaced_pod(
                name, self.namespace, grace_period_seconds=0 if kill else None
            )
        for name in old:
            self.kube.wait_gone(self.namespace, name, timeout=120)
        self.ready_pod()

    def stop(self) -> None:
        """Scale to zero and kill the pod: no operator runs until start()."""
        self.kube.apps.patch_namespaced_deployment_scale(
            self.deployment, self.namespace, {"spec": {"replicas": 0}}
        )
        for pod in self.pods():
            try:
                self.kube.core.delete_namespaced_pod(
                    pod.metadata.name, self.namespace, grace_period_seconds=0
                )
            except ApiException as e:
                if e.status != 404:
                    raise
        wait_for(lambda: not self.pods(), 120, what="operator pods gone")

    def start(self) -> None:
        self.kube.apps.patch_namespaced_deployment_scale(
            self.deployment, self.namespace, {"spec": {"replicas": 1}}
        )
        self.ready_pod()

    # --- what it says --------------------------------------------------------------------------------
    def logs(self) -> str:
        out = []
        for pod in self.pods():
            try:
                out.append(self.kube.core.read_namespaced_pod_log(pod.metadata.name, self.namespace))
            except ApiException as e:
                if e.status not in (400, 404):
                    raise
        return "\n".join(out)

    def forbidden_lines(self) -> list[str]:
        """Log lines that report a 403 from the apiserver (kopf: `status=403`/`'code': 403`; the client:
        `(403)`/`Forbidden`)."""
        denied = re.compile(r"Forbidden|forbidden|status=403|'code': 403|\(403\)|\b403 Forbidden")
        return [
            line
            for line in self.logs().splitlines()
            if denied.search(line) and not any(b in line for b in BENIGN_FORBIDDEN)
        ]

    def metrics(self, port: int = 8080) -> str:
        """/metrics read from inside the pod (works without kube-proxy or port-forward)."""
        pod = self.ready_pod()
        code = f"import urllib.request;print(urllib.request.urlopen('http://127.0.0.1:{port}/metrics').read().decode())"
        r = self.kube.kubectl("exec", "-n", self.namespace, pod.metadata.name, "--", "python3", "-c", code)
        return str(r.stdout)


class InClusterProvider:
    """The scenarios' Provider for an operator installed from the chart."""

    def __init__(
        self,
        kube: Kube,
        namespace: str,
        node_name: str,
        trainer_image: str,
        operator: ChartOperator,
        read_volume_file: Callable[[str, str, str], bytes],
        vanish_node: Callable[[], object],
        restore_node: Callable[[], object],
    ):
        self.kube, self.namespace, self.node_name, self.trainer_image = (
            kube,
            namespace,
            node_name,
            trainer_image,
        )
        self.operator = operator
        self._read, self._vanish, self._restore = read_volume_file, vanish_node, restore_node

    def read_volume_file(self, namespace: str, claim: str, path: str) -> bytes:
        return self._read(namespace, claim, path)

    def restart_operator(self, kill: bool = True) -> None:
        self.operator.restart(kill=kill)

    def stop_operator(self) -> None:
        self.operator.stop()

    def start_operator(self) -> None:
        self.operator.start()

    def vanish_node(self) -> None:
        self._vanish()

    def restore_node(self) -> None:
        self._restore()
