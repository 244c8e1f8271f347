"""Without Kueue installed (this file runs before the session's Kueue is started: pytest runs files in name
order), a job labelled kueue.x-k8s.io/queue-name waits Queued with a clear reason and no pod, and the
operator does not fail (the Kueue API's absence is told apart from a missing Workload)."""

from __future__ import annotations

import pytest

from tests.harness.kueue import _crds_installed
from tests.integration.operator.conftest import LocalProvider
from tests.scenarios import operator_scenarios as sc

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(180)]


def test_labelled_job_without_kueue_waits_with_a_reason(provider: LocalProvider) -> None:
    p = provider
    if _crds_installed(p.kube):
        pytest.skip("Kueue is installed in this cluster (run this file on its own)")
    job = sc.tiny_job("orphan", p.trainer_image, steps=4)
    job["metadata"]["labels"] = {"kueue.x-k8s.io/queue-name": "team-a"}
    sc.apply_job(p, job)
    s = sc.wait_phase(p, "orphan", "Queued", timeout=60)
    assert s["reason"] == "KueueNotInstalled", sc.summary(s)
    assert not sc.pods(p, "orphan")
    assert "KueueNotInstalled" in [e.reason for e in sc.events(p, "orphan")]
