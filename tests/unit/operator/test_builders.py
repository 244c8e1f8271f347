"""builders.py: the manifests the operator creates, checked field by field."""

from __future__ import annotations

import json
from typing import Any

from finetune_api.effective import EffectiveJob, effective_job
from finetune_api.models import EffectiveTraining, FineTuneJob
from finetune_api.trainer_config import TrainerConfig
from finetune_operator import builders as b
from finetune_operator.names import ANNOTATION_LAST_CHECKPOINT, LABEL_ATTEMPT, LABEL_JOB, POD_FINALIZER

UID = "1234-uid"


def job(**spec: Any) -> EffectiveJob:
    """The job as the builders get it: resolved, here with no OOM adaptations."""
    doc: dict[str, Any] = {
        "model": {"name_or_path": "/models/tiny"},
        "dataset": {"path": "/data/train.jsonl"},
        "training": {"max_steps": 30, "save_steps": 5, "per_device_train_batch_size": 4},
        "resources": {"gpus": 1, "cpu": "2", "memory": "2Gi"},
    }
    doc.update(spec)
    parsed = FineTuneJob.model_validate(
        {
            "apiVersion": "finetune.dev/v1alpha1",
            "kind": "FineTuneJob",
            "metadata": {"name": "demo", "namespace": "ml"},
            "spec": doc,
        }
    )
    return effective_job(parsed, None)


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


def test_ephemeral_volume_is_made_with_each_pod_and_no_claim_is_created() -> None:
    store = {"bucket": "ckpt", "credentials": {"secretName": "s3-keys"}}
    j = job(
        checkpoint={
            "ephemeralVolume": True,
            "volumeSize": "20Gi",
            "storageClassName": "pd-balanced",
            "objectStore": store,
        }
    )
    assert b.build_pvc(j, UID) is None and not b.has_job_claim(j)
    (volume,) = [v for v in b.build_pod(j, UID, 2)["spec"]["volumes"] if v["name"] == "checkpoints"]
    assert volume == {
        "name": "checkpoints",
        "ephemeral": {
            "volumeClaimTemplate": {
                "spec": {
                    "accessModes": ["ReadWriteOnce"],
                    "resources": {"requests": {"storage": "20Gi"}},
                    "storageClassName": "pd-balanced",
                }
            }
        },
    }
    assert b.has_job_claim(job())


def test_role_allows_only_own_status_and_posting_events() -> None:
    role = b.build_role(job(), UID)
    assert role["rules"] == [
        {
            "apiGroups": ["finetune.dev"],
            "resources": ["finetunejobs/status"],
            "resourceNames": ["demo"],
            "verbs": ["get", "patch"],
        },
        {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},  # "loss is NaN at step N"
    ]
    binding = b.build_role_binding(job(), UID)
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "demo-trainer", "namespace": "ml"}]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    for obj in (role, binding, b.build_service_account(job(), UID)):
        assert obj["metadata"]["ownerReferences"][0]["uid"] == UID


def test_config_map_renders_trainer_config_with_job_ref_and_effective() -> None:
    cm = b.build_config_map(
        effective_job(job(), EffectiveTraining(per_device_train_batch_size=2, gradient_accumulation_steps=2)),
        UID,
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


def test_pod_command_own_run_directory_and_adapted_batch() -> None:
    first = b.build_pod(job(), UID, 1)
    c = container(first)
    assert c["command"] == ["finetune-trainer"]
    # Every attempt resumes its own run directory, keyed by the job's uid: an empty one starts fresh.
    assert c["args"][:8] == [
        "--config",
        "/etc/finetune/config.json",
        "--output-dir",
        f"/checkpoints/runs/{UID}",
        "--run-id",
        UID,
        "--resume",
        "auto",
    ]
    assert "--resume-from" not in c["args"]
    adapted = effective_job(
        job(),
        EffectiveTraining(per_device_train_batch_size=2, gradient_accumulation_steps=2, memory="3Gi"),
    )
    later = b.build_pod(
        adapted,
        UID,
        2,
        run_directory="run",  # a job started before run directories keeps its legacy one
    )
    args = container(later)["args"]
    assert args[args.index("--output-dir") + 1] == "/checkpoints/run"
    assert args[args.index("--resume") + 1] == "auto"
    # The adapted batch reaches the trainer in its config only (one route), never as flags as well.
    assert not {"--per-device-train-batch-size", "--gradient-accumulation-steps"} & set(args)
    training = TrainerConfig.model_validate(json.loads(b.render_trainer_config(adapted))).training
    assert training.per_device_train_batch_size == 2
    assert training.gradient_accumulation_steps == 2
    assert container(later)["resources"]["limits"]["memory"] == "3Gi"


def test_pod_passes_its_attempt_number_to_the_trainer_fence() -> None:
    for attempt in (1, 7):
        args = container(b.build_pod(job(), UID, attempt))["args"]
        assert args[args.index("--attempt") + 1] == str(attempt)
    assert "--attempt" not in b.trainer_args(job(), UID)  # a manual rendering: the fence is off


def test_pod_resume_from_is_passed_under_the_claim_mount() -> None:
    pod = b.build_pod(job(checkpoint={"resumeFrom": "runs/old-uid/checkpoint-40"}), UID, 1)
    args = container(pod)["args"]
    assert args[args.index("--resume-from") + 1] == "/checkpoints/runs/old-uid/checkpoint-40"
    assert args[args.index("--output-dir") + 1] == f"/checkpoints/runs/{UID}"


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
    assert env(pod)["HOME"] == "/tmp"
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


def test_scratch_is_size_limited_and_the_hub_cache_lives_on_the_checkpoint_volume() -> None:
    """A full /tmp must not evict the trainer (or its node's other pods): scratch has a limit, and the
    Hugging Face cache, which grows with the model, is on the checkpoint volume (kept across attempts)."""
    pod = b.build_pod(job(), UID, 1)
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["tmp"]["emptyDir"] == {"sizeLimit": "8Gi"}
    assert env(pod)["HF_HOME"] == "/checkpoints/.cache/hf"
    mounts = {m["name"]: m["mountPath"] for m in container(pod)["volumeMounts"]}
    assert env(pod)["HF_HOME"].startswith(mounts["checkpoints"] + "/")
    assert not env(pod)["HF_HOME"].startswith(mounts["tmp"])
    bigger = b.build_pod(job(resources={"gpus": 1, "scratchSize": "50Gi"}), UID, 1)
    assert {v["name"]: v for v in bigger["spec"]["volumes"]}["tmp"]["emptyDir"] == {"sizeLimit": "50Gi"}
    # the user's env still wins
    own = b.build_pod(job(env=[{"name": "HF_HOME", "value": "/models/cache"}]), UID, 1)
    assert env(own)["HF_HOME"] == "/models/cache"


def test_several_gpus_run_one_rank_per_gpu() -> None:
    four = container(b.build_pod(job(resources={"gpus": 4, "cpu": "16", "memory": "64Gi"}), UID, 1))
    assert four["command"] == ["finetune-trainer"]
    args = four["args"]
    assert args[args.index("--nproc-per-node") + 1] == "4"
    assert args.count("--nproc-per-node") == 1
    for gpus in (0, 1):
        one = container(b.build_pod(job(resources={"gpus": gpus}), UID, 1))
        assert "--nproc-per-node" not in one["args"]


def test_next_pod_prefers_another_node_than_the_failed_one() -> None:
    user_affinity = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": [{"key": "gpu", "operator": "Exists"}]}]
            }
        }
    }
    pod = b.build_pod(
        job(scheduling={"spot": True, "affinity": user_affinity}), UID, 3, avoid_node="gpu-7.ec2.internal"
    )
    node = pod["spec"]["affinity"]["nodeAffinity"]
    assert (
        node["requiredDuringSchedulingIgnoredDuringExecution"]
        == user_affinity["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    )
    preferred = node["preferredDuringSchedulingIgnoredDuringExecution"]
    avoid = [p for p in preferred if "matchFields" in p["preference"]]
    assert avoid == [
        {
            "weight": 100,
            "preference": {
                "matchFields": [
                    {"key": "metadata.name", "operator": "NotIn", "values": ["gpu-7.ec2.internal"]}
                ]
            },
        }
    ]
    assert len(preferred) == len(b.SPOT_NODE_LABELS) + 1
    plain = b.build_pod(job(), UID, 3, avoid_node="gpu-7")
    assert plain["spec"]["affinity"]["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0][
        "preference"
    ]["matchFields"][0]["values"] == ["gpu-7"]
    assert "affinity" not in b.build_pod(job(), UID, 3)["spec"]


def test_users_memory_raise_wins_over_an_older_oom_adaptation() -> None:
    adapted = EffectiveTraining(memory="3Gi")
    raised = b.build_pod(effective_job(job(resources={"gpus": 1, "memory": "6Gi"}), adapted), UID, 3)
    assert container(raised)["resources"]["limits"]["memory"] == "6Gi"
    lower = b.build_pod(effective_job(job(resources={"gpus": 1, "memory": "2Gi"}), adapted), UID, 3)
    assert container(lower)["resources"]["limits"]["memory"] == "3Gi"


def test_dataset_volume_is_mounted_read_only_at_data() -> None:
    pod = b.build_pod(
        job(dataset={"path": "/data/chat.jsonl", "volume": {"claimName": "support-data", "subPath": "v2"}}),
        UID,
        1,
    )
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["dataset"] == {
        "name": "dataset",
        "persistentVolumeClaim": {"claimName": "support-data", "readOnly": True},
    }
    mounts = {m["name"]: m for m in container(pod)["volumeMounts"]}
    assert mounts["dataset"] == {"name": "dataset", "mountPath": "/data", "readOnly": True, "subPath": "v2"}
    # the trainer reads the path as written: it is the path inside the pod
    config = json.loads(
        b.render_trainer_config(job(dataset={"path": "/data/x", "volume": {"claimName": "d"}}))
    )
    assert config["dataset"] == {**config["dataset"], "path": "/data/x"} and "volume" not in config["dataset"]


def test_no_dataset_volume_no_extra_mount() -> None:
    pod = b.build_pod(job(), UID, 1)
    assert "dataset" not in {v["name"] for v in pod["spec"]["volumes"]}
    assert "/data" not in {m["mountPath"] for m in container(pod)["volumeMounts"]}


def test_shared_cache_claim_is_mounted_read_write_at_cache_and_is_hf_home() -> None:
    pod = b.build_pod(job(cache={"location": "sharedClaim", "claimName": "hf-cache"}), UID, 1)
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["cache"] == {"name": "cache", "persistentVolumeClaim": {"claimName": "hf-cache"}}
    mounts = {m["name"]: m for m in container(pod)["volumeMounts"]}
    assert mounts["cache"] == {"name": "cache", "mountPath": "/cache"}  # written: downloads land there
    assert env(pod)["HF_HOME"] == "/cache"
    assert mounts["checkpoints"]["mountPath"] == "/checkpoints"  # checkpoints stay on the job's own volume
    # never created by the operator: the PVC the job makes is the checkpoint volume only
    assert b.build_pvc(job(cache={"location": "sharedClaim", "claimName": "hf-cache"}), UID)["metadata"][
        "name"
    ] == ("demo-checkpoints")


def test_no_cache_puts_hf_home_on_the_size_limited_scratch() -> None:
    pod = b.build_pod(job(cache={"location": "none"}, resources={"gpus": 1, "scratchSize": "30Gi"}), UID, 1)
    assert env(pod)["HF_HOME"] == "/tmp/hf"
    assert {v["name"]: v for v in pod["spec"]["volumes"]}["tmp"]["emptyDir"] == {"sizeLimit": "30Gi"}
    assert "cache" not in {v["name"] for v in pod["spec"]["volumes"]}


def test_default_cache_is_on_the_checkpoint_volume_without_an_extra_mount() -> None:
    pod = b.build_pod(job(cache={"location": "checkpointVolume"}), UID, 1)
    assert env(pod)["HF_HOME"] == "/checkpoints/.cache/hf"
    assert "cache" not in {v["name"] for v in pod["spec"]["volumes"]}
    assert b.build_pod(job(), UID, 1) == pod  # the default


def test_object_store_key_pair_reaches_the_trainer_from_the_secret() -> None:
    store = {"bucket": "ckpts", "credentials": {"secretName": "s3-keys", "accessKeyIdKey": "id"}}
    pod = b.build_pod(job(checkpoint={"objectStore": store}), UID, 1)
    assert env(pod)["FTO_S3_ACCESS_KEY_ID"] == {"secretKeyRef": {"name": "s3-keys", "key": "id"}}
    assert env(pod)["FTO_S3_SECRET_ACCESS_KEY"] == {
        "secretKeyRef": {"name": "s3-keys", "key": "secretAccessKey"}
    }
    assert "FTO_S3_ACCESS_KEY_ID" not in env(b.build_pod(job(), UID, 1))
