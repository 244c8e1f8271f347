"""pytest fixtures for the local cluster: `cluster` (session), `kube` (session), `namespace` (per test).

FTO_CLUSTER controls the `cluster` fixture:
  auto (default)  reuse a running cluster; else build (cached) and start one, and stop it at the end
                  of the session unless FTO_KEEP_CLUSTER=1
  existing        reuse a running cluster; fail if none
  off             skip every test that needs the cluster
"""

from __future__ import annotations

import os
import re
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from . import disruptions
from .cluster import Cluster, ClusterUnavailable, have_prerequisites
from .kube import Kube, wait_for


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "cluster: needs the local real Kubernetes cluster (hack/cluster.sh)")


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    mode = os.environ.get("FTO_CLUSTER", "auto")
    if mode == "off":
        pytest.skip("FTO_CLUSTER=off")
    c = Cluster()
    if not c.is_up():
        if mode == "existing":
            pytest.fail(f"FTO_CLUSTER=existing but no cluster is up ({c.kubeconfig})")
        why = have_prerequisites()
        if why:
            pytest.fail(f"cannot start the local cluster: {why}")
        try:
            c.up()
        except ClusterUnavailable as e:
            pytest.fail(str(e))
    yield c
    if c.started_here and os.environ.get("FTO_KEEP_CLUSTER") != "1":
        c.down()


@pytest.fixture(scope="session")
def kube(cluster: Cluster) -> Kube:
    kube = Kube(cluster.kubeconfig)
    for removed in disruptions.clear_stale_test_taints(kube):
        print(f"removed a taint a killed test run left: {removed}", file=sys.stderr)
    return kube


CRD_DIR = Path(__file__).resolve().parents[2] / "crds"


@pytest.fixture(scope="session")
def crd(kube: Kube) -> None:
    """The FineTuneJob CRD from crds/, established. Server-side apply: no last-applied annotation to outgrow,
    and it takes over fields an earlier client-side apply or a helm install owned."""
    kube.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD_DIR))
    wait_for(
        lambda: any(
            c.type == "Established" and c.status == "True"
            for c in kube.apiext.read_custom_resource_definition(
                "finetunejobs.finetune.dev"
            ).status.conditions
            or []
        ),
        60,
        what="CRD established",
    )


@pytest.fixture
def namespace(kube: Kube, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace for one test (its default ServiceAccount exists), deleted afterwards."""
    slug = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"t-{slug}-{uuid.uuid4().hex[:5]}"
    kube.core.create_namespace(
        client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels={"finetune-operator.test": "true"}))
    )
    # Pods are refused until the ServiceAccount controller has made the namespace's `default` SA.
    wait_for(
        lambda: kube.core.read_namespaced_service_account("default", name),
        30,
        what=f"serviceaccount {name}/default",
    )
    yield name
    # Tests hold finished pods with a finalizer (to read their final status): let them go.
    for pod in kube.core.list_namespaced_pod(name).items:
        if pod.metadata.finalizers:
            try:
                kube.core.patch_namespaced_pod(pod.metadata.name, name, {"metadata": {"finalizers": None}})
            except ApiException as e:
                if e.status != 404:
                    raise
    try:
        kube.core.delete_namespace(name, grace_period_seconds=0, propagation_policy="Background")
    except ApiException as e:
        if e.status != 404:
            raise
