"""Pure manifest builders: a FineTuneJob in, Kubernetes objects (dicts) out; the trainer's ConfigMap and pod
take the effective job (finetune_api.effective: the OOM adaptations already applied).

Nothing here talks to the API; executor.py creates what these return. Every object carries the same labels,
and an owner reference to its FineTuneJob (except a kept checkpoint volume), so deleting the job deletes them.
Over 400 lines on purpose: every object of an attempt, and the trainer pod's parts (resources, env,
tolerations, affinity, args) next to the pod they make; apart they would be read together anyway.
"""

from __future__ import annotations

import json
import math
from typing import Any

from finetune_api.contract import (
    CACHE_MOUNT,
    CHECKPOINT_MOUNT,
    DATASET_MOUNT,
    RUNS_DIR,
    S3_ACCESS_KEY_ID_ENV,
    S3_SECRET_ACCESS_KEY_ENV,
    TERMINATION_MESSAGE_PATH,
)
from finetune_api.effective import EffectiveJob
from finetune_api.models import API_VERSION, GROUP, KIND, PLURAL, FineTuneJob
from finetune_api.quantity import parse_quantity
from finetune_api.trainer_config import trainer_config_from_job

from finetune_operator.names import (
    ANNOTATION_LAST_CHECKPOINT,
    ANNOTATION_LAST_CHECKPOINT_STEP,
    LABEL_ATTEMPT,
    LABEL_JOB,
    POD_FINALIZER,
    TRAINER_CONTAINER,
    pod_name,
)

MANAGED_BY = "finetune-operator"
#: On the checkpoint PVC: the uid of the FineTuneJob that created it (informational: each run has its own
#: directory runs/<uid> on the claim, so nothing depends on who created it).
ANNOTATION_VOLUME_JOB_UID = "finetune.dev/created-for-uid"
CONFIG_MOUNT = "/etc/finetune"
CONFIG_FILE = "config.json"
TMP_MOUNT = "/tmp"
#: The Hugging Face cache (hub downloads, datasets' processed files), by spec.cache.location. By default on
#: the checkpoint volume: it grows with the model, so on the size-limited scratch /tmp it would get the pod
#: evicted; there it also survives attempts, so a restarted pod does not download the model again.
HF_HOME_DIR = f"{CHECKPOINT_MOUNT}/.cache/hf"
HF_HOME_BY_LOCATION = {
    "checkpointVolume": HF_HOME_DIR,
    "sharedClaim": CACHE_MOUNT,  # the claim's root is HF_HOME: `HF_HOME=<mount> hf download` fills it
    "none": f"{TMP_MOUNT}/hf",
}
TRAINER_METRICS_PORT = 9400
#: How long a trainer pod stays bound to a node that stopped answering (the default is 300 s): after this
#: the taint manager evicts it and the operator can replace it once the node is confirmed lost.
DEFAULT_UNREACHABLE_TOLERATION_SECONDS = 30
TRAINER_UID = 1000

#: Cloud-neutral spot/preemptible node labels and taints (GKE, AKS, EKS managed node groups, Karpenter).
SPOT_NODE_LABELS: tuple[tuple[str, str], ...] = (
    ("cloud.google.com/gke-spot", "true"),
    ("cloud.google.com/gke-preemptible", "true"),
    ("kubernetes.azure.com/scalesetpriority", "spot"),
    ("eks.amazonaws.com/capacityType", "SPOT"),
    ("karpenter.sh/capacity-type", "spot"),
)
SPOT_TAINTS: tuple[tuple[str, str | None], ...] = (
    ("cloud.google.com/gke-spot", "true"),
    ("cloud.google.com/gke-preemptible", "true"),
    ("kubernetes.azure.com/scalesetpriority", "spot"),
    ("karpenter.sh/capacity-type", "spot"),
)


# ---------------------------------------------------------------------------------------------- names


def pvc_name(job: FineTuneJob) -> str:
    return job.spec.checkpoint.existing_claim_name or f"{job.metadata.name}-checkpoints"


def service_account_name(job: FineTuneJob) -> str:
    return f"{job.metadata.name}-trainer"


def config_map_name(job: FineTuneJob) -> str:
    return f"{job.metadata.name}-trainer-config"


def labels(job: FineTuneJob, component: str = "trainer") -> dict[str, str]:
    return {
        LABEL_JOB: job.metadata.name,
        "app.kubernetes.io/name": "finetune-trainer",
        "app.kubernetes.io/instance": job.metadata.name,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/managed-by": MANAGED_BY,
        "app.kubernetes.io/part-of": "finetune-operator",
    }


def owner_reference(job: FineTuneJob, uid: str) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": job.metadata.name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _meta(job: FineTuneJob, uid: str, name: str, component: str, owned: bool = True) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "namespace": job.metadata.namespace,
        "labels": labels(job, component),
    }
    if owned:
        meta["ownerReferences"] = [owner_reference(job, uid)]
    return meta


# ---------------------------------------------------------------------------------------------- objects


def has_job_claim(job: FineTuneJob) -> bool:
    """Whether the job's checkpoints live on a claim of its own that outlives its pods (not with
    checkpoint.ephemeralVolume: each pod gets a fresh volume)."""
    return not job.spec.checkpoint.ephemeral_volume


def _checkpoint_claim_spec(job: FineTuneJob) -> dict[str, Any]:
    ckpt = job.spec.checkpoint
    spec: dict[str, Any] = {
        "accessModes": [ckpt.access_mode],
        "resources": {"requests": {"storage": ckpt.volume_size}},
    }
    if ckpt.storage_class_name is not None:  # "" = no class, as in any PVC; unset = the default class
        spec["storageClassName"] = ckpt.storage_class_name
    return spec


def build_pvc(job: FineTuneJob, uid: str) -> dict[str, Any] | None:
    """The checkpoint volume; None when the spec names an existing claim (used as is, never deleted) or asks
    for an ephemeral volume (made by Kubernetes with each pod)."""
    ckpt = job.spec.checkpoint
    if ckpt.existing_claim_name or ckpt.ephemeral_volume:
        return None
    meta = _meta(job, uid, pvc_name(job), "checkpoints", owned=ckpt.delete_with_job)
    meta["annotations"] = {ANNOTATION_VOLUME_JOB_UID: uid}
    spec = _checkpoint_claim_spec(job)
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": meta, "spec": spec}


def _checkpoint_volume(job: FineTuneJob) -> dict[str, Any]:
    if job.spec.checkpoint.ephemeral_volume:  # the PVC <pod>-checkpoints, owned by the pod, goes with it
        template = {"spec": _checkpoint_claim_spec(job)}
        return {"name": "checkpoints", "ephemeral": {"volumeClaimTemplate": template}}
    return {"name": "checkpoints", "persistentVolumeClaim": {"claimName": pvc_name(job)}}


def build_service_account(job: FineTuneJob, uid: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": _meta(job, uid, service_account_name(job), "trainer"),
        "automountServiceAccountToken": True,
    }


def build_role(job: FineTuneJob, uid: str) -> dict[str, Any]:
    """The trainer may read and patch its own job's status, and post Events (e.g. "loss is NaN at step N");
    nothing else. (RBAC cannot limit `create` by name: events in this namespace.)"""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": _meta(job, uid, service_account_name(job), "trainer"),
        "rules": [
            {
                "apiGroups": [GROUP],
                "resources": [f"{PLURAL}/status"],
                "resourceNames": [job.metadata.name],
                "verbs": ["get", "patch"],
            },
            {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
        ],
    }


def build_role_binding(job: FineTuneJob, uid: str) -> dict[str, Any]:
    name = service_account_name(job)
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": _meta(job, uid, name, "trainer"),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": job.metadata.namespace}],
    }


def render_trainer_config(job: EffectiveJob) -> str:
    config = trainer_config_from_job(job, metrics_port=TRAINER_METRICS_PORT, report_to_job=True)
    return json.dumps(
        config.model_dump(mode="json", by_alias=True, exclude_none=True), indent=1, sort_keys=True
    )


def build_config_map(job: EffectiveJob, uid: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(job, uid, config_map_name(job), "trainer"),
        "data": {CONFIG_FILE: render_trainer_config(job)},
    }


def _resources(job: EffectiveJob) -> dict[str, Any]:
    res = job.spec.resources
    limits: dict[str, str] = {}
    requests: dict[str, str] = {}
    if res.gpus > 0:
        limits[res.gpu_resource_name] = str(res.gpus)
        requests[res.gpu_resource_name] = str(res.gpus)
    memory = res.memory
    if res.cpu:
        limits["cpu"] = requests["cpu"] = res.cpu
    if memory:
        limits["memory"] = requests["memory"] = memory
    out: dict[str, Any] = {}
    if limits:
        out["limits"] = limits
    if requests:
        out["requests"] = requests
    return out


def trainer_resources(job: EffectiveJob) -> dict[str, Any]:
    """The trainer container's requests/limits for the next attempt (what Kueue accounts, issue 15)."""
    return _resources(job)


def _threads(job: FineTuneJob) -> str | None:
    """OMP/MKL threads from the CPU limit: torch otherwise starts one thread per *host* core."""
    if not job.spec.resources.cpu:
        return None
    return str(max(1, math.floor(parse_quantity(job.spec.resources.cpu))))


def _env(job: FineTuneJob, attempt: int) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        {"name": "HOME", "value": TMP_MOUNT},
        {"name": "HF_HOME", "value": HF_HOME_BY_LOCATION[job.spec.cache.location]},
        {"name": "XDG_CACHE_HOME", "value": f"{TMP_MOUNT}/cache"},
        {"name": "TRITON_CACHE_DIR", "value": f"{TMP_MOUNT}/triton"},
        {"name": "MPLCONFIGDIR", "value": f"{TMP_MOUNT}/matplotlib"},
        {"name": "FTO_ATTEMPT", "value": str(attempt)},
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
    ]
    threads = _threads(job)
    if threads:
        env += [{"name": "OMP_NUM_THREADS", "value": threads}, {"name": "MKL_NUM_THREADS", "value": threads}]
    if job.spec.hf_token_secret is not None:
        ref = job.spec.hf_token_secret
        env.append({"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}})
    store = job.spec.checkpoint.object_store
    if store is not None:  # the trainer reads the key pair from these (finetune_trainer.remote)
        creds = store.credentials
        for name, key in (
            (S3_ACCESS_KEY_ID_ENV, creds.access_key_id_key),
            (S3_SECRET_ACCESS_KEY_ENV, creds.secret_access_key_key),
        ):
            env.append({"name": name, "valueFrom": {"secretKeyRef": {"name": creds.secret_name, "key": key}}})
    # The user's variables come last and win over ours (a list with duplicates: the last one counts).
    by_name = {item["name"]: item for item in env}
    for var in job.spec.env:
        item: dict[str, Any] = {"name": var.name}
        if var.secret_key_ref is not None:
            item["valueFrom"] = {
                "secretKeyRef": {"name": var.secret_key_ref.name, "key": var.secret_key_ref.key}
            }
        else:
            item["value"] = var.value or ""
        by_name[var.name] = item
    return list(by_name.values())


def _tolerations(job: FineTuneJob, unreachable_seconds: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for tol in job.spec.scheduling.tolerations:
        out.append(tol.model_dump(by_alias=True, exclude_none=True))
    if job.spec.scheduling.spot:
        for key, value in SPOT_TAINTS:
            out.append({"key": key, "operator": "Equal", "value": value, "effect": "NoSchedule"})
    keys = {t.get("key") for t in out}
    for key in ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"):
        if key not in keys:
            out.append(
                {
                    "key": key,
                    "operator": "Exists",
                    "effect": "NoExecute",
                    "tolerationSeconds": unreachable_seconds,
                }
            )
    return out


def _affinity(job: FineTuneJob, avoid_node: str | None = None) -> dict[str, Any] | None:
    affinity = json.loads(json.dumps(job.spec.scheduling.affinity)) if job.spec.scheduling.affinity else None
    if not job.spec.scheduling.spot and not avoid_node:
        return affinity
    affinity = affinity or {}
    node = affinity.setdefault("nodeAffinity", {})
    preferred = node.setdefault("preferredDuringSchedulingIgnoredDuringExecution", [])
    if job.spec.scheduling.spot:
        for key, value in SPOT_NODE_LABELS:
            preferred.append(
                {
                    "weight": 50,
                    "preference": {"matchExpressions": [{"key": key, "operator": "In", "values": [value]}]},
                }
            )
    if avoid_node:
        # Preferred, not required: the failed node stays usable when it is the only one that fits.
        # matchFields on metadata.name: the hostname label need not equal the node's name.
        preferred.append(
            {
                "weight": 100,
                "preference": {
                    "matchFields": [{"key": "metadata.name", "operator": "NotIn", "values": [avoid_node]}]
                },
            }
        )
    return affinity


def trainer_args(
    job: FineTuneJob, uid: str, run_directory: str | None = None, attempt: int | None = None
) -> list[str]:
    """Every attempt resumes its own run directory (`--resume auto`: an empty one starts fresh); another
    run's checkpoints are used only when the spec names them (`checkpoint.resumeFrom` → `--resume-from`).
    `attempt` turns on the trainer's attempt fence (`--attempt N`). The training settings (OOM-adapted batch
    included) travel in the config only."""
    args = [
        "--config",
        f"{CONFIG_MOUNT}/{CONFIG_FILE}",
        "--output-dir",
        f"{CHECKPOINT_MOUNT}/{run_directory or f'{RUNS_DIR}/{uid}'}",
        "--run-id",
        uid,
        "--resume",
        "auto",
    ]
    if job.spec.checkpoint.resume_from:
        args += ["--resume-from", f"{CHECKPOINT_MOUNT}/{job.spec.checkpoint.resume_from}"]
    if attempt is not None:
        # Fences an older attempt still running on a shared volume (a partitioned node): docs/trainer.md.
        args += ["--attempt", str(attempt)]
    if job.spec.resources.gpus > 1:
        # One DDP rank per GPU; the trainer stays PID 1 and forwards SIGTERM to every rank.
        args += ["--nproc-per-node", str(job.spec.resources.gpus)]
    return args


def build_pod(
    job: EffectiveJob,
    uid: str,
    attempt: int,
    *,
    run_directory: str | None = None,
    last_checkpoint_time: str | None = None,
    last_checkpoint_step: int | None = None,
    unreachable_toleration_seconds: int = DEFAULT_UNREACHABLE_TOLERATION_SECONDS,
    cause: str | None = None,
    avoid_node: str | None = None,
) -> dict[str, Any]:
    """The trainer pod `<job>-<attempt>`. `finetune-trainer` is PID 1 (exec form) so it gets SIGTERM.

    `avoid_node`: the node the previous attempt failed on (start failure, admission, eviction): preferred not.
    `run_directory`: claim-relative (decisions.run_directory); default runs/<uid>.
    """
    spec = job.spec
    meta = _meta(job, uid, pod_name(job.metadata.name, attempt), "trainer")
    meta["labels"][LABEL_ATTEMPT] = str(attempt)
    meta["finalizers"] = [POD_FINALIZER]
    annotations = {"finetune.dev/attempt-cause": cause or "initial"}
    if last_checkpoint_time:
        annotations[ANNOTATION_LAST_CHECKPOINT] = last_checkpoint_time
    if last_checkpoint_step is not None:
        annotations[ANNOTATION_LAST_CHECKPOINT_STEP] = str(last_checkpoint_step)
    meta["annotations"] = annotations
    container: dict[str, Any] = {
        "name": TRAINER_CONTAINER,
        "image": spec.image,
        "imagePullPolicy": spec.image_pull_policy,
        "command": ["finetune-trainer"],
        "args": trainer_args(job, uid, run_directory, attempt),
        "env": _env(job, attempt),
        "resources": _resources(job),
        "ports": [{"name": "metrics", "containerPort": TRAINER_METRICS_PORT, "protocol": "TCP"}],
        "volumeMounts": [
            {"name": "checkpoints", "mountPath": CHECKPOINT_MOUNT},
            {"name": "config", "mountPath": CONFIG_MOUNT, "readOnly": True},
            {"name": "tmp", "mountPath": TMP_MOUNT},
        ],
        "terminationMessagePath": TERMINATION_MESSAGE_PATH,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": TRAINER_UID,
            "runAsGroup": TRAINER_UID,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": spec.checkpoint.termination_grace_period_seconds,
        "serviceAccountName": service_account_name(job),
        "automountServiceAccountToken": True,
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": TRAINER_UID,
            "runAsGroup": TRAINER_UID,
            "fsGroup": TRAINER_UID,
            "fsGroupChangePolicy": "OnRootMismatch",
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": [
            _checkpoint_volume(job),
            {"name": "config", "configMap": {"name": config_map_name(job)}},
            # Scratch only (HOME, small tool caches): a limit keeps a runaway writer from filling the node's
            # disk, which would get this and other pods evicted.
            {"name": "tmp", "emptyDir": {"sizeLimit": spec.resources.scratch_size}},
        ],
        "tolerations": _tolerations(job, unreachable_toleration_seconds),
    }
    dataset_volume = spec.dataset.volume
    if dataset_volume is not None:
        # read-only twice: the claim (the kubelet mounts it ro) and the mount (even a RWX claim stays intact)
        pod_spec["volumes"].append(
            {
                "name": "dataset",
                "persistentVolumeClaim": {"claimName": dataset_volume.claim_name, "readOnly": True},
            }
        )
        mount: dict[str, Any] = {"name": "dataset", "mountPath": DATASET_MOUNT, "readOnly": True}
        if dataset_volume.sub_path:
            mount["subPath"] = dataset_volume.sub_path
        container["volumeMounts"].append(mount)
    if spec.cache.location == "sharedClaim":
        assert spec.cache.claim_name is not None  # the model's rule
        # Read-write: every job that names the claim adds to one cache (huggingface_hub locks each download).
        pod_spec["volumes"].append(
            {"name": "cache", "persistentVolumeClaim": {"claimName": spec.cache.claim_name}}
        )
        container["volumeMounts"].append({"name": "cache", "mountPath": CACHE_MOUNT})
    if spec.scheduling.node_selector:
        pod_spec["nodeSelector"] = dict(spec.scheduling.node_selector)
    affinity = _affinity(job, avoid_node)
    if affinity:
        pod_spec["affinity"] = affinity
    if spec.scheduling.priority_class_name:
        pod_spec["priorityClassName"] = spec.scheduling.priority_class_name
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": pod_spec}
