"""The operator's scenarios (tests/scenarios/operator_scenarios.py) on a kind cluster built from
kind-config.yaml, with the operator installed from the chart: drain a worker, NoExecute taint, priority
preemption, a pod deleted, a node gone (its container paused), host OOM, CUDA OOM, application errors, the
operator pod killed. Each disrupted job must resume from a committed checkpoint and reproduce the
undisturbed run's final adapter bit for bit.

Skipped, with the reason, where Docker or kind is missing (see conftest.py). The same scenario functions
run against the local real cluster in CI: tests/integration/operator (operator as a process) and
tests/integration/chart (operator in-cluster from the chart, through this suite's InClusterProvider).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.e2e.chart_operator import InClusterProvider
from tests.e2e.kind import KindCluster
from tests.harness import disruptions
from tests.scenarios import operator_scenarios as sc

pytestmark = [pytest.mark.kind, pytest.mark.slow, pytest.mark.timeout(900)]
REFERENCE: dict[str, str] = {}


def test_happy_path(kind_provider: InClusterProvider) -> None:
    REFERENCE["adapter"] = sc.happy_path(kind_provider)


SCENARIOS: dict[str, Callable[[Any, str | None], Any]] = {
    "drain": sc.preempt_by_drain,
    "noexecute-taint": sc.preempt_by_taint,
    "priority-preemption": sc.preempt_by_priority,
    "pod-deleted": sc.preempt_by_user_delete,
    "node-gone": sc.node_gone,
}


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_disruption_resumes_from_a_committed_checkpoint(
    kind_provider: InClusterProvider, scenario: str
) -> None:
    SCENARIOS[scenario](kind_provider, REFERENCE.get("adapter"))


def test_host_oom(kind_provider: InClusterProvider) -> None:
    sc.host_oom(kind_provider)


def test_cuda_oom(kind_provider: InClusterProvider) -> None:
    sc.cuda_oom(kind_provider)


def test_application_error_budget(kind_provider: InClusterProvider) -> None:
    sc.app_error_budget(kind_provider)


def test_operator_pod_killed(kind_provider: InClusterProvider) -> None:
    # 96 steps: with 48 the job finished while the chart's operator pod was coming back (see the scenario)
    sc.operator_restarts(kind_provider, steps=96)


def test_invalid_spec(kind_provider: InClusterProvider) -> None:
    sc.invalid_spec(kind_provider)


@pytest.mark.parametrize(
    "scenario", [sc.refused_missing_priority_class, sc.refused_by_quota, sc.refused_config_map_too_big]
)
def test_refused_create_is_shown_on_the_job(
    kind_provider: InClusterProvider, scenario: Callable[[Any], Any]
) -> None:
    scenario(kind_provider)


def test_dataset_from_a_read_only_volume(kind_provider: InClusterProvider) -> None:
    sc.dataset_from_volume(kind_provider, REFERENCE.get("adapter"))


def test_spot_job_on_the_spot_worker_survives_its_drain(
    kind_provider: InClusterProvider, kind_cluster: KindCluster
) -> None:
    """kind-only: `spot: true` tolerates the spot worker's taint and prefers it; draining that worker
    (a spot rebalance/reclaim) → resume from the committed checkpoint on the same worker once it is back."""
    p, name = kind_provider, "spot"
    spot = kind_cluster.node_by_pool(p.kube, "spot")
    sc.apply_job(p, sc.tiny_job(name, p.trainer_image, scheduling={"spot": True}))
    before = sc.wait_checkpoint(p, name, 8)
    pod: Any = p.kube.pod(p.namespace, before["podName"])
    assert pod.spec.node_name == spot
    with disruptions.drained(p.kube, spot, p.namespace):
        sc.wait_status(p, name, lambda s: (s.get("restarts") or {}).get("preemption", 0) >= 1, 180)
    s = sc.assert_succeeded(p, name, 24)
    assert s["restarts"]["preemption"] == 1 and s["restarts"]["error"] == 0, sc.summary(s)
    assert "resum" in p.kube.logs(p.namespace, f"{name}-2").lower()
    if REFERENCE.get("adapter"):
        assert sc.final_adapter_sha256(p, name) == REFERENCE["adapter"]
