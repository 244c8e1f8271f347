"""The trainer's StatusReporter against the real apiserver: a NaN loss and a patch the apiserver refuses as
invalid must not freeze the job's status (issue 10, item 7).

The reporter runs with a real patcher and event poster (admin kubeconfig instead of in-cluster credentials;
the per-job Role's rules are checked by tests/unit/operator/test_builders.py and
tests/integration/chart/test_rbac.py).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from finetune_api.models import GROUP, PLURAL, VERSION
from finetune_api.trainer_config import JobRef
from finetune_trainer.reporting import StatusReporter, kubernetes_event_poster, kubernetes_patcher
from kubernetes.client.rest import ApiException

from tests.harness import Kube, wait_for

ROOT = Path(__file__).resolve().parents[3]
CRD = ROOT / "crds" / "finetune.dev_finetunejobs.yaml"
MINIMAL_JOB = ROOT / "tests" / "manifests" / "minimal-job.yaml"

pytestmark = pytest.mark.cluster


def _status(kube: Kube, job: JobRef) -> dict[str, Any]:
    obj = kube.custom.get_namespaced_custom_object(GROUP, VERSION, job.namespace, PLURAL, job.name)
    return dict(obj.get("status") or {})


def _wait_status(kube: Kube, job: JobRef, check: Any, what: str) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    def probe() -> bool:
        seen.clear()
        seen.update(_status(kube, job))
        return bool(check(seen))

    wait_for(probe, 20, what=what)
    return seen


def test_nan_loss_and_an_invalid_patch_never_freeze_the_status(kube: Kube, crd: None, namespace: str) -> None:
    manifest = yaml.safe_load(MINIMAL_JOB.read_text())
    manifest["metadata"]["name"] = "nan-loss"
    manifest["spec"]["suspend"] = True  # an operator running in the cluster must not start a trainer for it
    kube.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, manifest)
    job = JobRef(namespace=namespace, name="nan-loss")
    patch = kubernetes_patcher(job, api_client=kube.api_client)

    # Why this matters: a NaN sent as-is is not JSON the apiserver accepts.
    with pytest.raises(ApiException) as refused:
        patch({"loss": math.nan})
    assert refused.value.status == 400

    reporter = StatusReporter(
        patch, min_interval=0.05, post_event=kubernetes_event_poster(job, api_client=kube.api_client)
    )
    try:
        reporter.update({"step": 1, "totalSteps": 10, "loss": 2.5})
        _wait_status(kube, job, lambda s: s.get("step") == 1 and s.get("loss") == 2.5, "step 1")

        reporter.update({"step": 2, "loss": math.nan})
        reporter.event("Warning", "LossNotFinite", "loss is NaN at step 2")
        status = _wait_status(kube, job, lambda s: s.get("step") == 2, "step 2 despite the NaN loss")
        assert "loss" not in status  # null in a merge patch: the stale 2.5 is not shown as the current loss

        reporter.update({"step": 3, "loss": math.inf, "lastCheckpointStep": 3})
        _wait_status(kube, job, lambda s: s.get("step") == 3 and s.get("lastCheckpointStep") == 3, "step 3")

        # A body the schema refuses (422) is dropped: it must not ride along with every later patch.
        reporter.update({"lastCheckpointStep": "four"})
        deadline = time.monotonic() + 10
        while reporter.rejected == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert reporter.rejected == 1
        reporter.update({"step": 5, "loss": 1.25})
        status = _wait_status(kube, job, lambda s: s.get("step") == 5, "step 5 after a rejected patch")
        assert status["loss"] == 1.25 and status["lastCheckpointStep"] == 3
    finally:
        reporter.close(timeout=5)
    assert reporter.rejected == 1 and reporter.failed == 0

    events = kube.core.list_namespaced_event(namespace, field_selector="involvedObject.name=nan-loss").items
    nan_events = [e for e in events if e.reason == "LossNotFinite"]
    seen = [(e.reason, e.message) for e in events]
    assert [e.message for e in nan_events] == ["loss is NaN at step 2"], seen
    assert nan_events[0].type == "Warning" and nan_events[0].involved_object.kind == "FineTuneJob"
