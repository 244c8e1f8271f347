"""builders.py: the manifests the operator creates, checked field by field."""

from __future__ import annotations

import json
from typing import Any

from finetune_api.models import EffectiveTraining, FineTuneJob
from finetune_api.trainer_config import TrainerConfig
from finetune_operator import builders as b
from finetune_operator.decisions import ANNOTATION_LAST_CHECKPOINT, LABEL_ATTEMPT, LABEL_JOB, POD_FINALIZER

UID = "1234-uid"


def job(**spec: Any) -> FineTuneJob:
    doc: dict[str, Any] = {
        "model": {"name_or_path": "/models/tiny"},
        "dataset": {"path": "/data/train.jsonl"},
        "training": {"max_steps": 30, "save_steps": 5, "per_device_train_batch_size": 4},
        "resources": {"gpus": 1, "cpu": "2", "memory": "2Gi"},
    }
    doc.update(spec)
    return FineTuneJob.model_validate(
        {
            "apiVersion": "finetune.dev/v1alpha1",
            "kind": "FineTuneJob",
            "metadata": {"name": "demo", "namespace": "ml"},
            "spec": doc,
        }
    )


def container(pod: dict[str, Any]) -> dict[str, Any]:
    return pod["spec"]["containers"][0]


def env(pod: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container(pod)["env"]}


def test_pvc_from_spec_kept_by_default() -> None:
    pvc = b.build_pvc(
        job(checkpoint={"volumeSize": "3Gi", "storageClassName": "fast", "accessMode": "ReadWriteOncePod"}),
        UID,
    )
    assert pvc is not None
    assert pvc["metadata"]["name"] == "demo-checkpoints"
    assert "ownerReferences" not in pvc["metadata"]  # kept when the job is deleted
    assert pvc["spec"] == {
        "accessModes": ["ReadWriteOncePod"],
        "resources": {"requests": {"storage": "3Gi"}},
        "storageClassName": "fast",
    }
    assert pvc["metadata"]["annotations"][b.ANNOTATION_VOLUME_JOB_UID] == UID


def test_pvc_deleted_with_job_when_asked() -> None:
    pvc = b.build_pvc(job(checkpoint={"deleteWithJob": True}), UID)
    assert pvc is not None and pvc["metadata"]["ownerReferences"][0]["uid"] == UID
    assert "storageClassName" not in pvc["spec"]  # the cluster's default class


def test_empty_storage_class_means_no_class_not_the_default() -> None:
    pvc = b.build_pvc(job(checkpoint={"storageClassName": ""}), UID)
    assert pvc is not None and pvc["spec"]["storageClassName"] == ""


def test_existing_claim_is_used_as_is() -> None:
    j = job(checkpoint={"existingClaimName": "shared-ckpts", "deleteWithJob": True})
    assert b.build_pvc(j, UID) is None
    pod = b.build_pod(j, UID, 1)
    assert pod["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] == "shared-ckpts"


def test_role_allows_only_own_status() -> None:
    role = b.build_role(job(), UID)
    assert role["rules"] == [
        {
            "apiGroups": ["finetune.dev"],
            "resources": ["finetunejobs/status"],
            "resourceNames": ["demo"],
            "verbs": ["get", "patch"],
        }
    ]
    binding = b.build_role_binding(job(), UID)
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "demo-trainer", "namespace": "ml"}]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    for obj in (role, binding, b.build_service_account(job(), UID)):
        assert obj["metadata"]["ownerReferences"][0]["uid"] == UID


def test_config_map_renders_trainer_config_with_job_ref_and_effective() -> None:
    cm = b.build_config_map(
        job(), UID, EffectiveTraining(per_device_train_batch_size=2, gradient_accumulation_steps=2)
    )
    config = TrainerConfig.model_validate(json.loads(cm["data"]["config.json"]))
    assert config.job is not None and (config.job.namespace, config.job.name) == ("ml", "demo")
    assert config.metrics_port == b.TRAINER_METRICS_PORT
    assert (
        config.training.per_device_train_batch_size == 2 and config.training.gradient_accumulation_steps == 2
    )
    assert config.save_deadline_seconds == 115


def test_pod_identity_labels_owner_finalizer() -> None:
    pod = b.build_pod(job(), UID, 3, last_checkpoint_time="2026-01-01T00:00:00Z", last_checkpoint_step=20)
    meta = pod["metadata"]
    assert meta["name"] == "demo-3" and meta["namespace"] == "ml"
    assert meta["labels"][LABEL_JOB] == "demo" and meta["labels"][LABEL_ATTEMPT] == "3"
    assert meta["labels"]["app.kubernetes.io/managed-by"] == "finetune-operator"
    assert meta["ownerReferences"][0] == {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "name": "demo",
        "uid": UID,
        "controller": True,
        "blockOwnerDeletion": True,
    }
    assert meta["finalizers"] == [POD_FINALIZER]
    assert meta["annotations"][ANNOTATION_LAST_CHECKPOINT] == "2026-01-01T00:00:00Z"


def test_pod_command_resume_and_adapted_batch() -> None:
    first = b.build_pod(job(), UID, 1, resume=False)
    c = container(first)
    assert c["command"] == ["finetune-trainer"]
    assert c["args"][:6] == [
        "--config",
        "/etc/finetune/config.json",
        "--output-dir",
        "/checkpoints/run",
        "--resume",
        "never",
    ]
    later = b.build_pod(
        job(),
        UID,
        2,
        resume=True,
        effective=EffectiveTraining(
            per_device_train_batch_size=2, gradient_accumulation_steps=2, memory="3Gi"
        ),
    )
    args = container(later)["args"]
    assert args[args.index("--resume") + 1] == "auto"
    assert args[args.index("--per-device-train-batch-size") + 1] == "2"
    assert args[args.index("--gradient-accumulation-steps") + 1] == "2"
    assert container(later)["resources"]["limits"]["memory"] == "3Gi"


def test_pod_resources_and_grace() -> None:
    pod = b.build_pod(
        job(
            resources={"gpus": 2, "gpuResourceName": "amd.com/gpu", "cpu": "4", "memory": "8Gi"},
            checkpoint={"terminationGracePeriodSeconds": 240},
        ),
        UID,
        1,
    )
    res = container(pod)["resources"]
    assert res["limits"] == {"amd.com/gpu": "2", "cpu": "4", "memory": "8Gi"}
    assert res["requests"] == res["limits"]
    assert pod["spec"]["terminationGracePeriodSeconds"] == 240
    assert pod["spec"]["restartPolicy"] == "Never"
    assert env(pod)["OMP_NUM_THREADS"] == "4"
    no_gpu = b.build_pod(job(resources={"gpus": 0}), UID, 1)
    assert container(no_gpu)["resources"] == {}


def test_pod_security_context_non_root_read_only() -> None:
    pod = b.build_pod(job(), UID, 1)
    sc = container(pod)["securityContext"]
    assert sc["runAsNonRoot"] and sc["runAsUser"] == 1000 and sc["runAsGroup"] == 1000
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]} and sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["spec"]["securityContext"]["fsGroup"] == 1000
    mounts = {m["mountPath"]: m["name"] for m in container(pod)["volumeMounts"]}
    assert mounts == {"/checkpoints": "checkpoints", "/etc/finetune": "config", "/tmp": "tmp"}
    assert env(pod)["HF_HOME"].startswith("/tmp/")
    assert container(pod)["terminationMessagePolicy"] == "FallbackToLogsOnError"


def test_pod_tolerates_lost_node_only_briefly() -> None:
    pod = b.build_pod(job(), UID, 1, unreachable_toleration_seconds=15)
    tol = {t["key"]: t for t in pod["spec"]["tolerations"]}
    for key in ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"):
        assert tol[key] == {"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 15}


def test_pod_spot_scheduling_and_priority() -> None:
    pod = b.build_pod(
        job(
            scheduling={
                "spot": True,
                "nodeSelector": {"pool": "gpu"},
                "priorityClassName": "preemptible",
                "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
            }
        ),
        UID,
        1,
    )
    spec = pod["spec"]
    assert spec["nodeSelector"] == {"pool": "gpu"} and spec["priorityClassName"] == "preemptible"
    keys = [t["key"] for t in spec["tolerations"]]
    assert (
        "gpu" in keys
        and "cloud.google.com/gke-spot" in keys
        and "kubernetes.azure.com/scalesetpriority" in keys
    )
    preferred = spec["affinity"]["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert {p["preference"]["matchExpressions"][0]["key"] for p in preferred} >= {
        "karpenter.sh/capacity-type",
        "cloud.google.com/gke-spot",
    }
    plain = b.build_pod(job(), UID, 1)["spec"]
    assert "affinity" not in plain and "nodeSelector" not in plain and "priorityClassName" not in plain


def test_pod_env_hf_token_and_user_overrides() -> None:
    pod = b.build_pod(
        job(
            hfTokenSecret={"name": "hf", "key": "token"},
            env=[
                {"name": "OMP_NUM_THREADS", "value": "1"},
                {"name": "FTO_TEST_FAIL_AT_STEP", "value": "5"},
                {"name": "WANDB_API_KEY", "secretKeyRef": {"name": "wandb", "key": "k"}},
            ],
        ),
        UID,
        1,
    )
    e = env(pod)
    assert e["HF_TOKEN"] == {"secretKeyRef": {"name": "hf", "key": "token"}}
    assert e["OMP_NUM_THREADS"] == "1" and e["FTO_TEST_FAIL_AT_STEP"] == "5"
    assert e["WANDB_API_KEY"] == {"secretKeyRef": {"name": "wandb", "key": "k"}}
    names = [x["name"] for x in container(pod)["env"]]
    assert len(names) == len(set(names))
