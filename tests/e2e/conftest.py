"""kind e2e fixtures. Everything here is skipped, with the reason, where Docker or kind is missing. The
scenarios and the in-cluster provider they run with are the same code the local-cluster suites run
(tests/integration/chart/test_chart_cluster.py).

    make e2e                                     # here: hack/kind.sh builds, starts, loads, then pytest
    .venv/bin/pytest tests/e2e -m kind -v        # stock Docker + kind; FTO_KIND_KEEP=1 keeps the cluster
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.chart_operator import (
    ChartOperator,
    InClusterProvider,
    create_namespace,
    delete_jobs,
    delete_namespace,
    helm_binary,
)
from tests.e2e.kind import (
    IMAGES_LOADED,
    OPERATOR_IMAGE,
    TINY_IMAGE,
    TRAINER_IMAGE,
    KindCluster,
    why_not_available,
)
from tests.harness.kube import Kube

# The kind nodes carry the control-plane taint; the operator runs there, away from the workers the
# scenarios disrupt (draining/tainting the trainer's node must not take the operator with it).
OPERATOR_ON_CONTROL_PLANE = [
    "--set-json",
    'nodeSelector={"node-role.kubernetes.io/control-plane":""}',
    "--set-json",
    'tolerations=[{"key":"node-role.kubernetes.io/control-plane","operator":"Exists","effect":"NoSchedule"}]',
]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    why = why_not_available()
    if why is None:
        return
    skip = pytest.mark.skip(reason=f"kind e2e needs Docker + kind: {why}")
    for item in items:
        if "kind" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def kind_cluster() -> Iterator[KindCluster]:
    cluster = KindCluster()
    cluster.create()
    if not IMAGES_LOADED:
        KindCluster.build_images()
        cluster.load_images(OPERATOR_IMAGE, TRAINER_IMAGE, TINY_IMAGE)
    yield cluster
    if cluster.created_here and os.environ.get("FTO_KIND_KEEP") != "1":
        cluster.delete()


@pytest.fixture(scope="session")
def kind_kube(kind_cluster: KindCluster) -> Kube:
    return Kube(kind_cluster.kubeconfig)


@pytest.fixture(scope="session")
def kind_operator(kind_cluster: KindCluster, kind_kube: Any) -> Iterator[ChartOperator]:
    """The chart, installed with helm like a user would (cluster-wide), the operator on the control plane."""
    helm = helm_binary()
    assert helm, "helm not found (hack/cluster.sh build, or install helm 3)"
    op_ns = create_namespace(kind_kube, "finetune-system")
    op = ChartOperator(
        kind_kube,
        helm,
        kind_cluster.kubeconfig,
        op_ns,
        OPERATOR_IMAGE,
        # the scenarios' expectations for a vanished node (the local suite passes the same to its operator)
        values=[
            *OPERATOR_ON_CONTROL_PLANE,
            "--set",
            "operator.nodeLostSeconds=20,operator.unreachableTolerationSeconds=10",
        ],
        pull_policy="IfNotPresent",
    )
    op.install()
    yield op
    op.uninstall()
    delete_namespace(kind_kube, op_ns)


@pytest.fixture
def kind_provider(
    kind_cluster: KindCluster, kind_kube: Any, kind_operator: ChartOperator
) -> Iterator[InClusterProvider]:
    ns = create_namespace(kind_kube, "e2e")
    # Scenario jobs have no spot toleration: they run on the on-demand worker, which is what they disturb.
    node = kind_cluster.node_by_pool(kind_kube, "on-demand")
    provider = InClusterProvider(
        kind_kube,
        ns,
        node,
        TINY_IMAGE,
        kind_operator,
        read_volume_file=lambda namespace, claim, path: kind_cluster.read_volume_file(
            kind_kube, namespace, claim, path
        ),
        vanish_node=lambda: kind_cluster.pause_node(kind_kube, node),
        restore_node=lambda: kind_cluster.unpause_node(kind_kube, node),
    )
    yield provider
    try:
        delete_jobs(kind_kube, ns)
    finally:
        delete_namespace(kind_kube, ns)
