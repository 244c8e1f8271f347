"""The FineTuneJob API: the one model from which the CRD, the operator and the trainer config all come.

Naming rule: sections that mirror a Hugging Face object (`model`, `dataset`, `lora`, `training`) use the
snake_case names users already know from `TrainingArguments`/`LoraConfig` (`save_steps`, `lora_alpha`);
sections that mirror Kubernetes (`checkpoint`, `resources`, `scheduling`, `restartPolicy`, `env`) use
Kubernetes' camelCase (`nodeSelector`, `storageClassName`).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.alias_generators import to_camel

from finetune_api.contract import DATASET_MOUNT
from finetune_api.quantity import QUANTITY_PATTERN, parse_quantity
from finetune_api.rules import CelRule, RuleModel, immutable

GROUP = "finetune.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "FineTuneJob"
PLURAL = "finetunejobs"
SHORT_NAME = "ftj"
# Pods are named <job>-<attempt> and job names become label values (≤ 63): leave room for the attempt.
MAX_JOB_NAME_LENGTH = 52

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
RESOURCE_NAME = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
)
ENV_NAME = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"


class HFModel(RuleModel):
    """A section with Hugging Face names: unknown keys are errors (a typo must not be silently ignored)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, validate_default=True)


class KubeModel(RuleModel):
    """A section with Kubernetes camelCase names."""

    model_config = ConfigDict(
        extra="forbid", populate_by_name=True, alias_generator=to_camel, validate_default=True
    )


def _quantity_field(description: str, default: str | None = None) -> Any:
    return Field(default, description=description, pattern=QUANTITY_PATTERN)


# ---------------------------------------------------------------------------------------------- model


class ModelSpec(HFModel):
    cel_transition_rules = (immutable("spec.model"),)

    name_or_path: str = Field(
        min_length=1,
        description="Hugging Face hub id (e.g. 'gpt2') or an absolute path inside the trainer pod.",
    )
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit) to pin.")
    trust_remote_code: bool = Field(False, description="Run model code from the hub (off unless trusted).")
    torch_dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="dtype to load the base model in."
    )
    merge_adapter: bool = Field(
        False, description="Also write the base model merged with the adapter to <output>/final/merged."
    )


# -------------------------------------------------------------------------------------------- dataset


def _relative_without_dotdot(path: str | None) -> bool:
    return path is None or (not path.startswith("/") and ".." not in path.split("/"))


class DatasetVolume(KubeModel):
    """A PersistentVolumeClaim holding the data, mounted read-only at /data in the trainer pod."""

    cel_rules = (
        CelRule(
            cel="!has(self.subPath) || (!self.subPath.startsWith('/') "
            "&& !self.subPath.matches('(^|/)[.][.](/|$)'))",
            message="subPath must be a relative path inside the volume (no leading '/', no '..')",
            field="subPath",
            check=lambda v: _relative_without_dotdot(v.sub_path),
        ),
    )
    claim_name: str = Field(
        pattern=DNS_SUBDOMAIN,
        description="PersistentVolumeClaim in the job's namespace (ReadOnlyMany or ReadWriteMany lets the "
        "trainer run on any node); mounted read-only, never written or deleted.",
    )
    sub_path: str | None = Field(
        None, min_length=1, description="Mount only this directory of the volume at /data."
    )


def _under_dataset_mount(path: str | None) -> bool:
    return path is not None and (path == DATASET_MOUNT or path.startswith(DATASET_MOUNT + "/"))


class DatasetSpec(HFModel):
    cel_transition_rules = (immutable("spec.dataset"),)
    cel_rules = (
        CelRule(
            cel="[has(self.name), has(self.path), has(self.examples)].filter(x, x).size() == 1",
            message="set exactly one of name (hub), path (file or directory) or examples (inline)",
            field="",
            check=lambda d: sum(x is not None for x in (d.name, d.path, d.examples)) == 1,
        ),
        CelRule(
            cel="!has(self.volume) || (has(self.path) "
            f"&& (self.path == '{DATASET_MOUNT}' || self.path.startsWith('{DATASET_MOUNT}/')))",
            message=f"volume is mounted at {DATASET_MOUNT}: set path to {DATASET_MOUNT} "
            "or a file or directory under it",
            field="path",
            check=lambda d: d.volume is None or _under_dataset_mount(d.path),
        ),
        CelRule(
            cel="!has(self.eval_split) || !has(self.eval_fraction)",
            message="set eval_split or eval_fraction, not both",
            field="eval_fraction",
            check=lambda d: d.eval_split is None or d.eval_fraction is None,
        ),
    )
    name: str | None = Field(None, min_length=1, description="Hub dataset name, e.g. 'tatsu-lab/alpaca'.")
    config_name: str | None = Field(None, description="Hub dataset configuration.")
    path: str | None = Field(
        None, min_length=1, description="A .json/.jsonl/.csv/.parquet file or a dataset directory in the pod."
    )
    examples: list[dict[str, Any]] | None = Field(
        None, min_length=1, description="Inline examples (small jobs, tests, demos)."
    )
    volume: DatasetVolume | None = Field(
        None, description="Mount this claim read-only at /data; path then names the data under /data."
    )
    split: str = Field("train", min_length=1, description="Split to train on.")
    format: Literal["text", "messages"] = Field(
        "text", description="'text': one text column; 'messages': chat messages."
    )
    text_field: str = Field("text", min_length=1, description="Column with the text (format 'text').")
    messages_field: str = Field("messages", min_length=1, description="Column with chat messages.")
    eval_split: str | None = Field(None, min_length=1, description="Split to evaluate on.")
    eval_fraction: float | None = Field(
        None, gt=0, lt=1, description="Hold out this fraction of the training split for evaluation."
    )

    @property
    def has_eval(self) -> bool:
        return self.eval_split is not None or self.eval_fraction is not None


# ----------------------------------------------------------------------------------------------- lora


class LoraSpec(HFModel):
    cel_transition_rules = (immutable("spec.lora"),)

    r: int = Field(8, ge=1, le=1024, description="LoRA rank.")
    lora_alpha: float = Field(16, gt=0, description="LoRA scaling numerator.")
    lora_dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] | None = Field(
        None, min_length=1, description="Module names to adapt; default: peft's choice for the architecture."
    )
    bias: Literal["none", "all", "lora_only"] = "none"
    task_type: Literal["CAUSAL_LM"] = "CAUSAL_LM"


# ------------------------------------------------------------------------------------------- training


class TrainingSpec(HFModel):
    """A subset of TrainingArguments / trl.SFTConfig, with their names and the seed's defaults."""

    cel_transition_rules = (immutable("spec.training"),)

    cel_rules = (
        CelRule(
            cel="self.max_steps > 0 || self.num_train_epochs > 0.0",
            message="set max_steps > 0 or num_train_epochs > 0",
            field="num_train_epochs",
            check=lambda t: t.max_steps > 0 or t.num_train_epochs > 0,
        ),
        CelRule(
            cel="self.save_strategy != 'steps' || self.max_steps <= 0 || self.save_steps <= self.max_steps",
            message="save_steps must not exceed max_steps (no checkpoint would ever be written)",
            field="save_steps",
            check=lambda t: t.save_strategy != "steps" or t.max_steps <= 0 or t.save_steps <= t.max_steps,
        ),
        CelRule(
            cel="!(self.bf16 && self.fp16)",
            message="bf16 and fp16 are mutually exclusive",
            field="fp16",
            check=lambda t: not (t.bf16 and t.fp16),
        ),
        CelRule(
            cel="!self.load_best_model_at_end || self.eval_strategy == self.save_strategy",
            message="load_best_model_at_end needs eval_strategy equal to save_strategy",
            field="eval_strategy",
            check=lambda t: not t.load_best_model_at_end or t.eval_strategy == t.save_strategy,
        ),
        CelRule(
            cel="self.eval_strategy != 'steps' || !self.load_best_model_at_end || !has(self.eval_steps) "
            "|| self.save_steps % self.eval_steps == 0",
            message="with load_best_model_at_end, save_steps must be a multiple of eval_steps",
            field="save_steps",
            check=lambda t: (
                t.eval_strategy != "steps"
                or not t.load_best_model_at_end
                or t.eval_steps is None
                or t.save_steps % t.eval_steps == 0
            ),
        ),
        CelRule(
            cel="self.warmup_steps <= 0 || self.max_steps <= 0 || self.warmup_steps < self.max_steps",
            message="warmup_steps must be smaller than max_steps",
            field="warmup_steps",
            check=lambda t: t.warmup_steps <= 0 or t.max_steps <= 0 or t.warmup_steps < t.max_steps,
        ),
    )
    num_train_epochs: float = Field(2.0, ge=0, description="Epochs (ignored when max_steps > 0).")
    max_steps: int = Field(-1, ge=-1, description="Total optimizer steps; -1 = use num_train_epochs.")
    per_device_train_batch_size: int = Field(2, ge=1, le=65536)
    per_device_eval_batch_size: int = Field(2, ge=1, le=65536)
    gradient_accumulation_steps: int = Field(1, ge=1, le=65536)
    learning_rate: float = Field(5e-4, gt=0, le=1)
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(0, ge=0)
    lr_scheduler_type: Literal[
        "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup"
    ] = "linear"
    max_grad_norm: float = Field(1.0, gt=0)
    max_length: int = Field(128, ge=8, le=1048576, description="Tokens per example (trl's max_length).")
    packing: bool = False
    bf16: bool = False
    fp16: bool = False
    gradient_checkpointing: bool = False
    seed: int = Field(42, ge=0)
    data_seed: int | None = Field(None, ge=0)
    logging_steps: int = Field(1, ge=1)
    save_strategy: Literal["steps", "epoch"] = Field(
        "steps", description="When to checkpoint ('no' is not offered: checkpoints are how jobs survive)."
    )
    save_steps: int = Field(2, ge=1, description="Checkpoint every N optimizer steps (save_strategy=steps).")
    save_total_limit: int | None = Field(
        2, ge=1, description="Committed checkpoints to keep; older ones are deleted after a newer commits."
    )
    eval_strategy: Literal["no", "steps", "epoch"] = "no"
    eval_steps: int | None = Field(None, ge=1)
    load_best_model_at_end: bool = False
    metric_for_best_model: str | None = None
    greater_is_better: bool | None = None
    dataloader_num_workers: int = Field(0, ge=0, le=64)


# ------------------------------------------------------------------------------ Kubernetes-side sections


class CheckpointSpec(KubeModel):
    volume_size: str = _quantity_field("Size of the checkpoint PersistentVolumeClaim.", "10Gi")
    storage_class_name: str | None = Field(
        None, description="StorageClass of the checkpoint volume; default: the cluster's default class."
    )
    access_mode: Literal["ReadWriteOnce", "ReadWriteMany", "ReadWriteOncePod"] = "ReadWriteOnce"
    existing_claim_name: str | None = Field(
        None, pattern=DNS_SUBDOMAIN, description="Use this PVC instead of creating one (never deleted)."
    )
    delete_with_job: bool = Field(
        False, description="Delete the checkpoint volume when the FineTuneJob is deleted (default: keep it)."
    )
    termination_grace_period_seconds: int = Field(
        120,
        ge=10,
        le=86400,
        description="Time the trainer gets after SIGTERM to write its emergency checkpoint.",
    )
    on_no_intact_checkpoint: Literal["fail", "restart"] = Field(
        "fail",
        description="When committed checkpoints exist but none is intact (checksum mismatch, unreadable): "
        "fail (exit 65, nothing deleted, each checkpoint and its problem in the message) or restart "
        "(move the damaged ones to damaged/ on the volume and train from scratch).",
    )


class GpuResources(KubeModel):
    cel_rules = (
        CelRule(
            cel="!has(self.maxMemory) || !has(self.memory) "
            "|| quantity(self.maxMemory).compareTo(quantity(self.memory)) >= 0",
            message="maxMemory must be at least memory",
            field="maxMemory",
            check=lambda r: (
                r.max_memory is None
                or r.memory is None
                or parse_quantity(r.max_memory) >= parse_quantity(r.memory)
            ),
        ),
    )
    gpus: int = Field(1, ge=0, le=64, description="GPUs per trainer pod.")
    gpu_resource_name: str = Field(
        "nvidia.com/gpu", pattern=RESOURCE_NAME, description="Extended resource that provides GPUs."
    )
    cpu: str | None = _quantity_field("CPU request and limit, e.g. '8'.")
    memory: str | None = _quantity_field("Memory request and limit, e.g. '32Gi'.")
    max_memory: str | None = _quantity_field(
        "Cap for memory raised after host OOM kills (default: memory x 2 x oomMemoryFactor)."
    )
    scratch_size: str = _quantity_field(
        "Size limit of the trainer's scratch /tmp (emptyDir; the Hugging Face cache is on the checkpoint "
        "volume). Writing more gets the pod evicted.",
        "8Gi",
    )


class Toleration(KubeModel):
    key: str | None = None
    operator: Literal["Exists", "Equal"] = "Equal"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = None


class SchedulingSpec(KubeModel):
    spot: bool = Field(
        False,
        description="Shorthand: tolerate the common spot/preemptible taints and prefer spot nodes "
        "(cloud-neutral labels; add your own in nodeSelector).",
    )
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[Toleration] = Field(default_factory=list)
    affinity: dict[str, Any] | None = Field(None, description="A Kubernetes Affinity, passed through.")
    priority_class_name: str | None = Field(None, pattern=DNS_SUBDOMAIN)


class RestartPolicy(KubeModel):
    cel_rules = (
        CelRule(
            cel="self.maxBackoffSeconds >= self.backoffSeconds",
            message="maxBackoffSeconds must be at least backoffSeconds",
            field="maxBackoffSeconds",
            check=lambda p: p.max_backoff_seconds >= p.backoff_seconds,
        ),
    )
    max_preemptions: int = Field(
        1000, ge=0, description="Restarts after preemption/eviction/node loss (no work lost beyond a save)."
    )
    max_oom_restarts: int = Field(
        4, ge=0, description="Restarts after out-of-memory (host OOM kill or CUDA OOM), each adapting."
    )
    max_failures: int = Field(3, ge=0, description="Restarts after application errors, with backoff.")
    backoff_seconds: int = Field(10, ge=0, le=3600, description="First delay after an error; doubles.")
    max_backoff_seconds: int = Field(300, ge=0, le=86400)
    oom_memory_factor: float = Field(1.5, gt=1, le=4, description="Memory x this after a host OOM kill.")
    pending_timeout_seconds: int = Field(
        0, ge=0, description="Fail a pod that stays unschedulable this long (0 = wait forever)."
    )
    max_infrastructure_restarts: int = Field(
        10,
        ge=0,
        description="Restarts after the container could not start (StartError: the node's runtime or GPU "
        "hook failed) or the image could not be pulled in time, each on a new pod with backoff, preferring "
        "another node.",
    )
    image_pull_timeout_seconds: int = Field(
        600,
        ge=0,
        description="How long a pod may keep retrying its image pull (ErrImagePull, ImagePullBackOff) before "
        "it is replaced on another node (0 = wait forever). An unknown image or denied access fails at once.",
    )


class SecretKeyRef(KubeModel):
    name: str = Field(pattern=DNS_SUBDOMAIN)
    key: str = Field(min_length=1)


class EnvVar(KubeModel):
    name: str = Field(pattern=ENV_NAME)
    value: str | None = None
    secret_key_ref: SecretKeyRef | None = None


class FineTuneJobSpec(KubeModel):
    model: ModelSpec
    dataset: DatasetSpec
    lora: LoraSpec = Field(default_factory=LoraSpec)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    checkpoint: CheckpointSpec = Field(default_factory=CheckpointSpec)
    resources: GpuResources = Field(default_factory=GpuResources)
    scheduling: SchedulingSpec = Field(default_factory=SchedulingSpec)
    restart_policy: RestartPolicy = Field(default_factory=RestartPolicy)
    image: str = Field("ghcr.io/finetune-operator/trainer:0.1.0", min_length=1)
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    env: list[EnvVar] = Field(default_factory=list)
    hf_token_secret: SecretKeyRef | None = Field(
        None, description="Secret key holding a Hugging Face token; exposed to the trainer as HF_TOKEN."
    )
    suspend: bool = Field(False, description="Stop gracefully (emergency checkpoint); resume later.")

    cel_rules = (
        CelRule(
            cel="!self.training.load_best_model_at_end || has(self.dataset.eval_split) "
            "|| has(self.dataset.eval_fraction)",
            message="training.load_best_model_at_end needs dataset.eval_split or dataset.eval_fraction",
            field="training.load_best_model_at_end",
            check=lambda s: not s.training.load_best_model_at_end or s.dataset.has_eval,
        ),
        CelRule(
            cel="self.training.eval_strategy == 'no' || has(self.dataset.eval_split) "
            "|| has(self.dataset.eval_fraction)",
            message="training.eval_strategy needs dataset.eval_split or dataset.eval_fraction",
            field="training.eval_strategy",
            check=lambda s: s.training.eval_strategy == "no" or s.dataset.has_eval,
        ),
    )


# ---------------------------------------------------------------------------------------------- status

Phase = Literal["Pending", "Running", "Restarting", "Succeeded", "Failed", "Suspended"]
RestartCause = Literal["preemption", "hostOOM", "cudaOOM", "error", "infrastructure"]
RESTART_CAUSES: tuple[RestartCause, ...] = ("preemption", "hostOOM", "cudaOOM", "error", "infrastructure")


class StatusModel(BaseModel):
    model_config = ConfigDict(populate_by_name=True, alias_generator=to_camel, extra="ignore")


class CheckpointInfo(StatusModel):
    step: int
    path: str | None = None
    time: str | None = Field(None, description="RFC 3339 time the checkpoint was committed.")
    save_seconds: float | None = None
    bytes: int | None = None


class Condition(StatusModel):
    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str | None = None
    message: str | None = None
    last_transition_time: str | None = None


class RestartCounts(StatusModel):
    preemption: int = 0
    host_oom: int = Field(0, alias="hostOOM")
    cuda_oom: int = Field(0, alias="cudaOOM")
    error: int = 0
    infrastructure: int = 0

    @property
    def total(self) -> int:
        return self.preemption + self.host_oom + self.cuda_oom + self.error + self.infrastructure


class RestartStreak(StatusModel):
    """Consecutive pod ends for the same reason with no training progress in between."""

    reason: str
    count: int = Field(description="Ends in a row; reset when the trainer reports a new step.")


class EffectiveTraining(StatusModel):
    """What the operator changed after OOMs; applied to the next attempt on top of the spec."""

    per_device_train_batch_size: int | None = None
    gradient_accumulation_steps: int | None = None
    memory: str | None = None


class PendingDecision(StatusModel):
    """A decision the operator has recorded (counters already charged) but not finished carrying out.

    Written in the same status patch that charges the budget, so an operator restart resumes it instead
    of deciding (and counting) twice.
    """

    action: Literal["restart", "stop"] = Field(
        description="restart: create the next attempt once the ended pod is gone; stop: suspend."
    )
    cause: RestartCause | None = None
    reason: str
    message: str | None = None
    pod_name: str = Field(description="The attempt's pod that ended.")
    not_before: str | None = Field(None, description="RFC 3339: create the next pod no earlier (backoff).")
    avoid_node: str | None = Field(
        None, description="The node the ended pod failed on; the next pod prefers other nodes."
    )


class FineTuneJobStatus(StatusModel):
    phase: Phase | None = None
    attempt: int = 0
    pod_name: str | None = None
    restarts: RestartCounts = Field(default_factory=RestartCounts)
    restarts_total: int = 0
    step: int | None = None
    total_steps: int | None = None
    epoch: float | None = None
    loss: float | None = None
    progress: str | None = Field(None, description="'step/total' for kubectl get.")
    steps_per_second: float | None = Field(
        None, description="Optimizer steps per second over the last 2 minutes (saves included)."
    )
    tokens_per_second: float | None = Field(None, description="Input tokens per second, where counted.")
    estimated_remaining_seconds: int | None = Field(
        None, description="Estimated seconds until the last step at the current rate (while training)."
    )
    remaining: str | None = Field(None, description="estimatedRemainingSeconds for people, e.g. '1h05m'.")
    last_checkpoint: CheckpointInfo | None = None
    last_checkpoint_step: int | None = None
    checkpoints: int | None = Field(None, description="Committed checkpoints currently retained.")
    lost_steps: int = 0
    streak: RestartStreak | None = Field(
        None, description="Pod ends in a row for one reason without training progress (a restart storm)."
    )
    effective: EffectiveTraining = Field(default_factory=EffectiveTraining)
    pending: PendingDecision | None = Field(
        None, description="Recorded decision still being carried out (the operator's restart-safe state)."
    )
    last_end_step: int | None = Field(
        None, description="Last reported step when the previous attempt ended (recovery = a newer report)."
    )
    last_pod_end_time: str | None = None
    next_attempt_time: str | None = None
    start_time: str | None = None
    completion_time: str | None = None
    conditions: list[Condition] = Field(default_factory=list)
    observed_generation: int | None = None
    reason: str | None = None
    message: str | None = None


# --------------------------------------------------------------------------------------------- object


class ObjectMeta(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str = Field(min_length=1, max_length=MAX_JOB_NAME_LENGTH, pattern=DNS_LABEL)
    namespace: str | None = None


class FineTuneJob(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    api_version: Literal["finetune.dev/v1alpha1"] = Field("finetune.dev/v1alpha1", alias="apiVersion")
    kind: Literal["FineTuneJob"] = "FineTuneJob"
    metadata: ObjectMeta
    spec: FineTuneJobSpec
    status: FineTuneJobStatus | None = None

    @field_validator("status", mode="before")
    @classmethod
    def _status_is_optional(cls, value: Any) -> Any:
        return value or None
