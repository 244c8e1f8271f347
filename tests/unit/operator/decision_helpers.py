"""Inputs for the decision-core tests (test_views, test_endings, test_policy, test_status_patches,
test_refusals, test_decisions): a spec, a status, a Pod as the API returns it, a World, readers of a Step."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from finetune_api.models import FineTuneJobSpec, FineTuneJobStatus
from finetune_operator.actions import Step, World
from finetune_operator.endings import End, Outcome, classify_end
from finetune_operator.names import LABEL_ATTEMPT, LABEL_JOB, POD_FINALIZER, format_time
from finetune_operator.refusals import Refusal, refusal_from_response
from finetune_operator.views import ClaimView, NodeView, pod_view

NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
T = format_time


def spec(**overrides: Any) -> FineTuneJobSpec:
    doc: dict[str, Any] = {
        "model": {"name_or_path": "/models/tiny"},
        "dataset": {"path": "/data/train.jsonl"},
        "training": {"max_steps": 40, "save_steps": 5, "per_device_train_batch_size": 8},
        "resources": {"gpus": 0, "cpu": "1", "memory": "1Gi"},
    }
    for key, value in overrides.items():
        doc[key] = {**doc.get(key, {}), **value} if isinstance(value, dict) else value
    return FineTuneJobSpec.model_validate(doc)


def status(**fields: Any) -> FineTuneJobStatus:
    return FineTuneJobStatus.model_validate(fields)


def pod(
    name: str = "job-1",
    *,
    phase: str = "Running",
    node: str | None = "node-a",
    exit_code: int | None = None,
    reason: str | None = None,
    message: dict[str, Any] | str | None = None,
    disruption: str | None = None,
    deleted: bool = False,
    waiting: str | None = None,
    waiting_message: str | None = None,
    started_ago: float | None = None,
    running: bool = False,
    unschedulable_for: float | None = None,
    finalizer: bool = True,
    annotations: dict[str, str] | None = None,
    owner: str = "uid-1",
) -> dict[str, Any]:
    state: dict[str, Any] = {}
    if exit_code is not None:
        term: dict[str, Any] = {"exitCode": exit_code, "finishedAt": "2026-01-01T11:59:59Z"}
        if reason:
            term["reason"] = reason
        if message is not None:
            term["message"] = json.dumps(message) if isinstance(message, dict) else message
        state["terminated"] = term
        phase = "Succeeded" if exit_code == 0 else "Failed"
    elif waiting:
        state["waiting"] = {"reason": waiting, "message": waiting_message or f"{waiting} detail"}
    elif running:
        state["running"] = {"startedAt": "2026-01-01T11:00:00Z"}
    conditions = []
    if disruption:
        conditions.append({"type": "DisruptionTarget", "status": "True", "reason": disruption})
    if unschedulable_for is not None:
        conditions.append(
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": "0/1 nodes are available: insufficient nvidia.com/gpu",
                "lastTransitionTime": T(NOW - timedelta(seconds=unschedulable_for)),
            }
        )
    meta: dict[str, Any] = {
        "name": name,
        "uid": f"pod-{name}",
        "labels": {LABEL_JOB: "job", LABEL_ATTEMPT: name.rsplit("-", 1)[-1]},
        "finalizers": [POD_FINALIZER] if finalizer else [],
        "ownerReferences": [{"uid": owner}],
        "annotations": annotations or {},
    }
    if deleted:
        meta["deletionTimestamp"] = T(NOW - timedelta(seconds=1))
        meta["deletionGracePeriodSeconds"] = 30
    body: dict[str, Any] = {
        "metadata": meta,
        "spec": {"nodeName": node} if node else {},
        "status": {
            "phase": phase,
            "conditions": conditions,
            "containerStatuses": [{"name": "trainer", "state": state}] if state else [],
        },
    }
    if started_ago is not None:
        body["status"]["startTime"] = T(NOW - timedelta(seconds=started_ago))
    return body


def classify(p: dict[str, Any] | None, node: NodeView | None = None, **kw: Any) -> Outcome | None:
    return classify_end(pod_view(p) if p is not None else None, node, NOW, **kw)


READY = NodeView("node-a")


def outcome(end: End, **kw: Any) -> Outcome:
    return Outcome(end, kw.pop("reason", end), kw.pop("message", end), **kw)


def world(
    st: FineTuneJobStatus | None = None,
    pods: list[dict[str, Any]] | None = None,
    sp: FineTuneJobSpec | None = None,
    nodes: dict[str, NodeView] | None = None,
    now: datetime = NOW,
    claim: ClaimView | None = None,
    shared_volume: bool = False,
) -> World:
    return World(
        name="job",
        uid="uid-1",
        generation=1,
        spec=sp or spec(),
        status=st or status(observedGeneration=1),
        pods=tuple(pod_view(p) for p in pods or []),
        nodes=nodes if nodes is not None else {"node-a": READY},
        now=now,
        claim=claim,
        node_lost_seconds=60,
        shared_volume=shared_volume,
    )


def kinds(step: Step) -> list[str]:
    return [type(a).__name__ for a in step.actions]


def only(step: Step, cls: type) -> Any:
    found = [a for a in step.actions if isinstance(a, cls)]
    assert len(found) == 1, step.actions
    return found[0]


def running_status(**kw: Any) -> FineTuneJobStatus:
    base: dict[str, Any] = {
        "observedGeneration": 1,
        "phase": "Running",
        "attempt": 1,
        "podName": "job-1",
        "step": 12,
        "lastCheckpointStep": 10,
    }
    base.update(kw)
    return status(**base)


def admission_failure(reason: str = "UnexpectedAdmissionError") -> dict[str, Any]:
    p = pod(phase="Failed", node="gpu-7")
    p["status"]["reason"] = reason
    p["status"]["message"] = "Allocate failed due to no healthy devices present; cannot allocate unhealthy"
    return p


TRANSIENT_PULL = (
    'failed to pull and unpack image "ghcr.io/acme/trainer:1.2": failed to copy: httpReadSeeker: '
    "failed open: unexpected status code https://ghcr.io/v2/acme/trainer/blobs/sha256:4f2e: "
    "429 Too Many Requests"
)

UNREADY_90S = NodeView("node-a", ready="Unknown", ready_since=NOW - timedelta(seconds=90))

NODE_TABLE = {
    "unready past the timeout": UNREADY_90S,
    "unready, out-of-service taint": NodeView(
        "node-a", ready="Unknown", ready_since=NOW - timedelta(seconds=90), out_of_service=True
    ),
    "out-of-service taint at once": NodeView(
        "node-a", ready="False", ready_since=NOW - timedelta(seconds=5), out_of_service=True
    ),
    "Node object deleted": NodeView("node-a", exists=False, ready="Unknown"),
    "unready, within the timeout": NodeView(
        "node-a", ready="Unknown", ready_since=NOW - timedelta(seconds=30)
    ),
    "ready": READY,
}

VOLUME_FULL_MESSAGE = {
    "reason": "VolumeFull",
    "message": "checkpoint volume full: checkpoint-6 could not be written: 61440 bytes free on "
    "/checkpoints/run, the checkpoint needs about 80805 bytes; make the volume bigger or lower "
    "training.save_total_limit",
    "free_bytes": 61440,
    "needed_bytes": 80805,
    "checkpoint": "checkpoint-4",
    "checkpoint_step": 4,
}


def refusal(code: int, message: str, kind: str = "Pod", reason: str = "Forbidden") -> Refusal:
    body = json.dumps({"kind": "Status", "status": "Failure", "reason": reason, "message": message})
    return refusal_from_response(kind, "job-1", code, body)
