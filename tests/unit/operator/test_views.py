"""views.py: Node and PVC JSON read into the views the decisions take (Pods: through test_endings)."""

from __future__ import annotations

from finetune_operator.views import ClaimView, claim_view, node_view, volume_shared


def test_node_view_reads_ready_and_taints() -> None:
    node = {
        "status": {
            "conditions": [
                {"type": "Ready", "status": "Unknown", "lastTransitionTime": "2026-01-01T11:00:00Z"}
            ]
        },
        "spec": {"taints": [{"key": "node.kubernetes.io/out-of-service", "effect": "NoExecute"}]},
    }
    view = node_view("n", node)
    assert view.ready == "Unknown" and view.out_of_service and view.ready_since is not None
    assert not node_view("n", None).exists


def test_claim_view_reads_deletion_and_job_owners() -> None:
    pvc = {
        "metadata": {
            "name": "job-checkpoints",
            "deletionTimestamp": "2026-01-01T00:00:00Z",
            "ownerReferences": [
                {"kind": "FineTuneJob", "uid": "uid-0"},
                {"kind": "ConfigMap", "uid": "other"},
            ],
        }
    }
    view = claim_view("job-checkpoints", pvc)
    assert view.exists and view.deleting and view.job_owner_uids == ("uid-0",)
    assert claim_view("job-checkpoints", None) == ClaimView(name="job-checkpoints")


def test_volume_shared_by_access_mode() -> None:
    assert volume_shared(["ReadWriteMany"]) and volume_shared(["ReadWriteOnce", "ReadWriteMany"])
    assert not volume_shared(["ReadWriteOnce"]) and not volume_shared(["ReadWriteOncePod"])
