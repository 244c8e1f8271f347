"""The Kueue harness itself: the pinned Kueue admits Workloads against a ClusterQueue's quota on the local
cluster, and leaves nothing behind. (The FineTuneJob side lives in test_kueue_operator.py.)"""

from __future__ import annotations

from typing import Any

import pytest

from tests.harness.kube import Kube, wait_for
from tests.harness.kueue import GROUP, VERSION, Kueue, _condition_true

pytestmark = pytest.mark.cluster


def _workload(name: str, queue: str, cpu: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Workload",
        "metadata": {"name": name},
        "spec": {
            "queueName": queue,
            "podSets": [
                {
                    "name": "trainer",
                    "count": 1,
                    "template": {
                        "spec": {
                            "restartPolicy": "Never",
                            "containers": [
                                {"name": "trainer", "image": "x", "resources": {"requests": {"cpu": cpu}}}
                            ],
                        }
                    },
                }
            ],
        },
    }


def _get(kube: Kube, namespace: str, name: str) -> dict[str, Any]:
    return dict(kube.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "workloads", name))


def test_quota_admits_one_workload_then_the_next(kube: Kube, kueue: Kueue, namespace: str) -> None:
    queue = kueue.queue(namespace, {"cpu": "1"})
    for name in ("first", "second"):
        kube.custom.create_namespaced_custom_object(
            GROUP, VERSION, namespace, "workloads", _workload(name, queue, "1")
        )
    wait_for(lambda: _condition_true(_get(kube, namespace, "first"), "Admitted"), 30, what="first admitted")
    second = _get(kube, namespace, "second")
    assert not _condition_true(second, "QuotaReserved"), second.get("status")
    # Freeing the quota (the owner deletes its Workload) admits the waiting one.
    kube.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, "workloads", "first")
    wait_for(lambda: _condition_true(_get(kube, namespace, "second"), "Admitted"), 30, what="second admitted")
