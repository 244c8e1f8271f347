"""The chart on the local real cluster (hack/cluster.sh), installed with real helm.

- install / upgrade / uninstall: the operator becomes Ready, an upgrade never runs two operators at once
  (Recreate), uninstall removes everything but the CRD (and so the FineTuneJobs);
- the operator running in-cluster from the chart's image (hack/cluster.sh images), under the chart's
  ClusterRole, drives a tiny job to Succeeded through a drain, resuming from a committed checkpoint,
  without a single 403;
- RBAC denials with `kubectl auth can-i --as=system:serviceaccount:<ns>:<sa>`: a job's trainer account can
  patch its own job's status and nothing else (not another job's status, not Secrets); the operator's
  account cannot read Secrets either.

Every release here watches only its own test namespace (operator.watchNamespaces), so these tests can share
the cluster with other suites (and their operators) running at the same time.
"""

from __future__ import annotations

import copy
import json
import os
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.chart_operator import (
    ChartOperator,
    InClusterProvider,
    create_namespace,
    delete_jobs,
    delete_namespace,
)
from tests.harness import disruptions
from tests.harness.cluster import OPERATOR_IMAGE, Cluster
from tests.harness.kube import wait_for
from tests.scenarios import operator_scenarios as sc

from .helm import CHART, REPO_ROOT, run

pytestmark = pytest.mark.cluster

GROUP, VERSION, PLURAL = "finetune.dev", "v1alpha1", "finetunejobs"
CRD_NAME = "finetunejobs.finetune.dev"
TINY_JOB = REPO_ROOT / "examples" / "tiny-job.yaml"
BENIGN_FORBIDDEN = (
    "Not enough permissions to watch for resources",
    "Not enough permissions to list namespaces",
)


def image_parts(ref: str) -> tuple[str, str]:
    repo, _, tag = ref.rpartition(":")
    return repo, tag


@dataclass
class Release:
    name: str
    namespace: str  # where the operator runs
    watch: str  # the namespace whose jobs it handles
    kube: Any
    helm: str
    env: dict[str, str]

    @property
    def deployment(self) -> str:
        return f"{self.name}-finetune-operator" if "finetune-operator" not in self.name else self.name

    def helm_run(self, *args: str, check: bool = True, timeout: float = 300) -> Any:
        return run(
            self.helm, *args, "--namespace", self.namespace, check=check, env=self.env, timeout=timeout
        )

    def operator_pods(self) -> list[Any]:  # V1Pod; the client's stubs make every field Optional
        sel = f"app.kubernetes.io/instance={self.name},app.kubernetes.io/component=operator"
        return list(self.kube.core.list_namespaced_pod(self.namespace, label_selector=sel).items)


def install_args(release: str, watch: str, *extra: str) -> list[str]:
    repo, tag = image_parts(OPERATOR_IMAGE)
    return [
        release,
        str(CHART),
        "--set",
        f"image.repository={repo},image.tag={tag},image.pullPolicy=Never",
        "--set",
        f"operator.watchNamespaces={{{watch}}}",
        "--wait",
        "--timeout",
        "3m",
        *extra,
    ]


def operator_image_missing(rel: Release) -> str | None:
    for pod in rel.operator_pods():
        for s in pod.status.container_statuses or []:
            waiting = s.state.waiting if s.state else None
            if waiting and waiting.reason in ("ErrImageNeverPull", "ImagePullBackOff", "ErrImagePull"):
                return f"{OPERATOR_IMAGE} is not on the node ({waiting.reason}): run `hack/cluster.sh images`"
    return None


@pytest.fixture(scope="module")
def helm_env(cluster: Cluster) -> dict[str, str]:
    return {"KUBECONFIG": str(cluster.kubeconfig)}


@pytest.fixture(scope="module")
def chart_operator(helm: str, kube: Any, cluster: Cluster) -> Iterator[ChartOperator]:
    """The chart installed in its own namespace, watching one job namespace (`.watch[0]`)."""
    op_ns = create_namespace(kube, "t-chart-op")
    jobs_ns = create_namespace(kube, "t-chart-jobs")
    op = ChartOperator(
        kube,
        helm,
        cluster.kubeconfig,
        op_ns,
        OPERATOR_IMAGE,
        watch=[jobs_ns],
        # ready as soon as kopf answers (restarts in the tests wait for it)
        values=["--set", "probes.readiness.initialDelaySeconds=1,probes.readiness.periodSeconds=2"],
    )
    try:
        op.install()
        yield op
    finally:
        if os.environ.get("FTO_KEEP_RELEASE") != "1":
            try:
                delete_jobs(kube, jobs_ns)
            finally:
                op.uninstall()
                delete_namespace(kube, jobs_ns)
                delete_namespace(kube, op_ns)


@pytest.fixture(scope="module")
def provider(
    chart_operator: ChartOperator, kube: Any, cluster: Cluster, tiny_image: str
) -> InClusterProvider:
    def read_volume_file(namespace: str, claim: str, path: str) -> bytes:
        pvc = kube.core.read_namespaced_persistent_volume_claim(claim, namespace)
        pv = kube.core.read_persistent_volume(pvc.spec.volume_name)
        return (Path(pv.spec.host_path.path) / path).read_bytes()  # the local cluster's host-path volumes

    return InClusterProvider(
        kube,
        chart_operator.watch[0],
        cluster.node_name,
        tiny_image,
        chart_operator,
        read_volume_file,
        vanish_node=lambda: disruptions.vanish_node(cluster, kube),
        restore_node=lambda: disruptions.restore_node(cluster, kube),
    )


def tiny_job(name: str, max_steps: int = 60, save_steps: int = 10) -> dict[str, Any]:
    job = yaml.safe_load(TINY_JOB.read_text())
    job = copy.deepcopy(job)
    job["metadata"] = {"name": name}
    job["spec"]["training"].update(max_steps=max_steps, save_steps=save_steps)
    return job


def get_job(kube: Any, ns: str, name: str) -> dict[str, Any]:
    return dict(kube.custom.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name))


def list_jobs(kube: Any, ns: str) -> list[dict[str, Any]]:
    return list(kube.custom.list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL)["items"])


def can_i(kube: Any, ns: str, sa: str, *args: str) -> bool:
    # `-n ns` first: a `-n` in `args` (the namespace asked about) must win, as the last one does in kubectl.
    r = kube.kubectl("auth", "can-i", "-n", ns, *args, f"--as=system:serviceaccount:{ns}:{sa}", check=False)
    answer = r.stdout.strip()
    assert answer in ("yes", "no"), (args, r.stdout, r.stderr)
    return answer == "yes"


# ------------------------------------------------------------------------------------------ install


def test_install_upgrade_uninstall(helm: str, kube: Any, helm_env: dict[str, str]) -> None:
    op_ns = create_namespace(kube, "t-chart-life")
    rel = Release(f"life-{uuid.uuid4().hex[:5]}", op_ns, op_ns, kube, helm, helm_env)
    try:
        r = rel.helm_run("install", *install_args(rel.name, op_ns), check=False)
        assert r.returncode == 0, operator_image_missing(rel) or r.stderr
        assert "rollout status" in r.stdout  # NOTES.txt
        # Helm installs crds/ only when the CRD is absent and never deletes it.
        kube.apiext.read_custom_resource_definition(CRD_NAME)
        (pod,) = rel.operator_pods()
        assert pod.status.phase == "Running"
        uid = kube.kubectl("exec", "-n", op_ns, pod.metadata.name, "--", "id", "-u").stdout.strip()
        assert uid == "1000"
        wr = kube.kubectl("exec", "-n", op_ns, pod.metadata.name, "--", "touch", "/opt/x", check=False)
        assert wr.returncode != 0 and "Read-only file system" in wr.stderr
        dep = kube.apps.read_namespaced_deployment(rel.deployment, op_ns)
        assert dep.status.ready_replicas == 1

        # A FineTuneJob that must survive the uninstall (suspended: nothing to run).
        job = tiny_job("survivor")
        job["spec"]["suspend"] = True
        kube.custom.create_namespaced_custom_object(GROUP, VERSION, op_ns, PLURAL, job)

        # Upgrade: Recreate means the old operator is gone before the new one exists.
        # A pod counts while it may run operator code: Pending, or with a running container. (The old pod's
        # object may linger a moment after its container exited: that one cannot act any more.)
        seen: list[list[str]] = []
        stop = threading.Event()

        def active(p: Any) -> bool:
            statuses = p.status.container_statuses or []
            return p.status.phase == "Pending" or any(c.state and c.state.running for c in statuses)

        def watch_pods() -> None:
            while not stop.is_set():
                seen.append([f"{p.metadata.name}:{p.status.phase}" for p in rel.operator_pods() if active(p)])
                time.sleep(0.1)

        watcher = threading.Thread(target=watch_pods, daemon=True)
        watcher.start()
        try:
            rel.helm_run("upgrade", *install_args(rel.name, op_ns, "--set", "operator.logLevel=debug"))
        finally:
            stop.set()
            watcher.join()
        overlaps = [sample for sample in seen if len(sample) > 1]
        assert not overlaps, f"two operator pods could run at once during the upgrade: {overlaps[:5]}"
        assert len({name for sample in seen for name in sample}) >= 2  # the watcher saw both pods
        (new_pod,) = rel.operator_pods()
        assert new_pod.metadata.name != pod.metadata.name
        assert "--log-level=debug" in new_pod.spec.containers[0].args
        history = json.loads(rel.helm_run("history", rel.name, "-o", "json").stdout)
        assert [h["revision"] for h in history] == [1, 2]

        # Uninstall: everything of the release goes, the CRD and the job stay.
        rel.helm_run("uninstall", rel.name, "--wait")
        sel = f"app.kubernetes.io/instance={rel.name}"
        assert not kube.apps.list_namespaced_deployment(op_ns, label_selector=sel).items
        assert not kube.core.list_namespaced_service_account(op_ns, label_selector=sel).items
        assert not kube.core.list_namespaced_service(op_ns, label_selector=sel).items
        assert not kube.rbac.list_cluster_role(label_selector=sel).items
        assert not kube.rbac.list_cluster_role_binding(label_selector=sel).items
        kube.apiext.read_custom_resource_definition(CRD_NAME)
        assert get_job(kube, op_ns, "survivor")["spec"]["suspend"] is True
    finally:
        rel.helm_run("uninstall", rel.name, check=False)
        # the operator is gone: drop its finalizer so the namespace can go
        for job in kube.custom.list_namespaced_custom_object(GROUP, VERSION, op_ns, PLURAL)["items"]:
            kube.custom.patch_namespaced_custom_object(
                GROUP, VERSION, op_ns, PLURAL, job["metadata"]["name"], {"metadata": {"finalizers": None}}
            )
        delete_namespace(kube, op_ns)


def test_operator_account_permissions(chart_operator: ChartOperator, kube: Any) -> None:
    sa, ns, jobs = chart_operator.deployment, chart_operator.namespace, chart_operator.watch[0]
    can = lambda *a: can_i(kube, ns, sa, *a)  # noqa: E731
    assert can("create", "pods", "-n", jobs)
    assert can("patch", "finetunejobs.finetune.dev", "--subresource=status", "-n", jobs)
    assert not can("get", "secrets", "-n", jobs)
    assert not can("list", "secrets", "--all-namespaces")
    assert not can("delete", "persistentvolumeclaims", "-n", jobs)
    assert not can("create", "clusterroles")
    assert not can("escalate", "roles", "-n", jobs)
    assert not can("delete", "nodes")


# ----------------------------------------------------- the in-cluster operator, through the shared scenarios


def test_in_cluster_operator_resumes_through_a_drain(provider: InClusterProvider) -> None:
    """The operator from the chart's image, under the chart's RBAC: drain → resume from a committed
    checkpoint → Succeeded (tests/scenarios: the same function the kind suite and the local suite run)."""
    s = sc.preempt_by_drain(provider, None, name="chart-drain")
    assert s["restarts"]["preemption"] == 1 and s["attempt"] == 2
    assert not provider.operator.forbidden_lines(), provider.operator.forbidden_lines()
    metrics = provider.operator.metrics()
    assert 'finetune_restarts_total{cause="preemption"' in metrics, metrics[-3000:]


def test_in_cluster_operator_pod_killed_mid_job(provider: InClusterProvider, kube: Any) -> None:
    """The operator pod killed mid-job (the Deployment replaces it), then scaled away while the trainer's
    pod ends, then back: no duplicate trainer pod, the preemption counted once.

    The shared `operator_restarts` scenario trains for ~15 s, shorter than an in-cluster operator takes to
    come back (pod start + kopf start-up + readiness), so this runs the same steps on a longer job."""
    p, name = provider, "chart-opkill"
    sc.apply_job(p, sc.tiny_job(name, p.trainer_image, steps=48, save_steps=4, step_sleep=0.4))
    sc.wait_checkpoint(p, name, 4, timeout=240)
    p.restart_operator(kill=True)
    s = sc.wait_checkpoint(p, name, 12, timeout=240)
    p.stop_operator()
    kube.core.delete_namespaced_pod(s["podName"], p.namespace)
    time.sleep(6)  # the trainer saves and exits; its pod object stays (the operator's finalizer)
    p.start_operator()
    s = sc.assert_succeeded(p, name, 48)
    assert s["restarts"]["preemption"] == 1 and s["restartsTotal"] == 1 and s["attempt"] == 2, sc.summary(s)
    assert {pod.metadata.name for pod in sc.pods(p, name)} == {f"{name}-2"}
    created = [e for e in sc.events(p, name) if e.reason == "AttemptCreated"]
    assert len(created) == 2, [e.message for e in created]
    assert not provider.operator.forbidden_lines(), provider.operator.forbidden_lines()


def test_trainer_account_is_confined_to_its_own_job(provider: InClusterProvider, kube: Any) -> None:
    ns, name = provider.namespace, "chart-rbac"
    sc.apply_job(provider, sc.tiny_job(name, provider.trainer_image))

    def trainer_account() -> str:
        sel = f"finetune.dev/job={name}"
        accounts = kube.core.list_namespaced_service_account(ns, label_selector=sel).items
        return str(accounts[0].metadata.name) if accounts else ""

    # the operator makes the per-job account (and its Role) with the first attempt
    sa: str = wait_for(trainer_account, 120, what=f"{name}: the per-job trainer ServiceAccount")
    wait_for(
        lambda: kube.rbac.list_namespaced_role_binding(ns, label_selector=f"finetune.dev/job={name}").items,
        60,
        what=f"{name}: the per-job RoleBinding",
    )
    can = lambda *a: can_i(kube, ns, sa, *a)  # noqa: E731
    assert can("patch", f"finetunejobs.finetune.dev/{name}", "--subresource=status"), (
        "its own status: allowed"
    )
    assert can("get", f"finetunejobs.finetune.dev/{name}", "--subresource=status")
    assert not can("patch", "finetunejobs.finetune.dev/another-job", "--subresource=status")
    assert not can("get", "finetunejobs.finetune.dev/another-job", "--subresource=status")
    assert not can("patch", f"finetunejobs.finetune.dev/{name}")  # the spec is not the trainer's
    assert not can("get", "secrets")
    assert not can("list", "secrets")
    assert not can("get", "secrets", "-n", "kube-system")
    assert not can("create", "pods")
    assert not can("list", "finetunejobs.finetune.dev")
