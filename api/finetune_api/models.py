"""The FineTuneJob API: the one model from which the CRD, the operator and the trainer config all come.

Naming rule: sections that mirror a Hugging Face object (`model`, `dataset`, `lora`, `training`) use the
snake_case names users already know from `TrainingArguments`/`LoraConfig` (`save_steps`, `lora_alpha`);
sections that mirror Kubernetes (`checkpoint`, `resources`, `scheduling`, `restartPolicy`, `env`) use
Kubernetes' camelCase (`nodeSelector`, `storageClassName`).

Over 400 lines on purpose: every spec section with its rules (CEL and their Python twins) side by side, as
the CRD shows them; the status, which has another reason to change (its writers), is in status.py.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

from finetune_api.contract import CACHE_MOUNT, DATASET_MOUNT
from finetune_api.kubenames import (
    DNS1123_SUBDOMAIN_MAX_LENGTH,
    LABEL_VALUE_MAX_LENGTH,
    QUALIFIED_NAME_WITH_PREFIX_MAX_LENGTH,
    is_dns1123_subdomain,
    is_extended_resource_name,
    is_label_value,
    is_qualified_name,
)
from finetune_api.quantity import QUANTITY_CEL, QUANTITY_MESSAGE, is_quantity, parse_quantity
from finetune_api.rules import CelRule, FieldRule, RuleModel, immutable
from finetune_api.status import (  # noqa: F401  (re-exported: the status is part of the object)
    RESTART_CAUSES,
    CheckpointInfo,
    Condition,
    EffectiveTraining,
    EmergencySave,
    FineTuneJobStatus,
    OperatorStatus,
    PendingDecision,
    Phase,
    RestartCause,
    RestartCounts,
    RestartStreak,
    StatusModel,
    TrainerStatus,
)

GROUP = "finetune.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "FineTuneJob"
PLURAL = "finetunejobs"
SHORT_NAME = "ftj"
# Pods are named <job>-<attempt> and job names become label values (≤ 63): leave room for the attempt.
MAX_JOB_NAME_LENGTH = 52
_ENV_NAME = re.compile(r"[-._a-zA-Z][-._a-zA-Z0-9]*")
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
# Below this no trainer starts (Python and torch alone need more); a bare number is bytes: "32" = 32 bytes.
MIN_MEMORY = "128Mi"
# Bounds that keep the apiserver's estimated cost of the CEL rules within its budget (it refuses the CRD
# otherwise); far above what a trainer pod needs.
MAX_SCHEDULING_ENTRIES = 64
MAX_ENV_ENTRIES = 256
MAX_ENV_NAME_LENGTH = 256


# ------------------------------------------------------------------------------- value types and rules


def _whole_number(value: Any) -> Any:
    """1e4 in YAML is the float 10000.0; in an integer field the apiserver stores it as 10000, as we do."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# An integer field: no strings ("1000"), no booleans, no fractions; a whole float (1e4) is that integer.
Int = Annotated[int, BeforeValidator(_whole_number)]

DnsSubdomain = Annotated[
    str,
    Field(max_length=DNS1123_SUBDOMAIN_MAX_LENGTH),  # maxLength also bounds the CEL rule's estimated cost
    FieldRule(
        cel="!format.dns1123Subdomain().validate(self).hasValue()",
        message="must be a DNS subdomain: lower-case letters, digits, '-' and '.', starting and ending with "
        "a letter or digit, at most 253 characters",
        check=is_dns1123_subdomain,
    ),
]
QualifiedName = Annotated[
    str,
    Field(max_length=QUALIFIED_NAME_WITH_PREFIX_MAX_LENGTH),
    FieldRule(
        cel="!format.qualifiedName().validate(self).hasValue()",
        message="must be a label key: an optional DNS-subdomain prefix and '/', then at most 63 letters, "
        "digits, '-', '_' or '.', starting and ending with a letter or digit (e.g. example.com/gpu-type)",
        check=is_qualified_name,
    ),
]
LabelValue = Annotated[
    str,
    Field(max_length=LABEL_VALUE_MAX_LENGTH),
    FieldRule(
        cel="!format.labelValue().validate(self).hasValue()",
        message="must be a label value: empty, or at most 63 letters, digits, '-', '_' or '.', starting and "
        "ending with a letter or digit",
        check=is_label_value,
    ),
]
StorageClassName = Annotated[
    str,
    Field(max_length=DNS1123_SUBDOMAIN_MAX_LENGTH),
    FieldRule(
        cel="self == '' || !format.dns1123Subdomain().validate(self).hasValue()",
        message="must be empty (no class) or a DNS subdomain: lower-case letters, digits, '-' and '.'",
        check=lambda v: v == "" or is_dns1123_subdomain(v),
    ),
]
Quantity = Annotated[str, FieldRule(cel=QUANTITY_CEL, message=QUANTITY_MESSAGE, check=is_quantity)]
Memory = Annotated[
    Quantity,
    FieldRule(
        # Guarded: a value that is not a quantity gets the quantity message above, not this one as well.
        cel=f"!({QUANTITY_CEL}) || quantity(self).compareTo(quantity('{MIN_MEMORY}')) >= 0",
        message=f"must be at least {MIN_MEMORY} (a bare number means bytes: write 32Gi, not 32)",
        check=lambda v: not is_quantity(v) or parse_quantity(v) >= parse_quantity(MIN_MEMORY),
    ),
]
EnvName = Annotated[
    str,
    Field(max_length=MAX_ENV_NAME_LENGTH),
    FieldRule(
        cel="self.matches('^[-._a-zA-Z][-._a-zA-Z0-9]*$')",
        message="must be letters, digits, '_', '-' or '.', and must not start with a digit",
        check=lambda v: bool(_ENV_NAME.fullmatch(v)),
    ),
]


def _accepts_none(annotation: Any) -> bool:
    return annotation is None or type(None) in get_args(annotation)


class SpecSection(RuleModel):
    """A spec section, validated the way the apiserver validates the CRD generated from it.

    strict: no coercion ("1000" is not an integer, "true" not a boolean), as the apiserver's schema types.
    A null for a field that cannot be null is dropped, as the apiserver prunes it before defaulting: it gets
    its default, or is reported missing when required (`training: null` is the default training section).
    """

    @model_validator(mode="before")
    @classmethod
    def _drop_nulls(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        not_nullable = set()
        for name, field in cls.model_fields.items():
            # The apiserver also replaces a null by the field's default when it has one.
            if not _accepts_none(field.annotation) or field.default is not None:
                not_nullable |= {name, field.alias or name}
        return {k: v for k, v in data.items() if not (v is None and k in not_nullable)}


class HFModel(SpecSection):
    """A section with Hugging Face names: unknown keys are errors (a typo must not be silently ignored)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, validate_default=True, strict=True)


class KubeModel(SpecSection):
    """A section with Kubernetes camelCase names (only those: parse_job refuses snake_case names here)."""

    model_config = ConfigDict(
        extra="forbid", populate_by_name=True, alias_generator=to_camel, validate_default=True, strict=True
    )


# ---------------------------------------------------------------------------------------------- model


class ModelSpec(HFModel):
    """The base model to adapt."""

    cel_transition_rules = (immutable("spec.model"),)

    name_or_path: str = Field(
        min_length=1,
        description="Hugging Face hub id (e.g. 'gpt2'), an absolute path inside the trainer pod, or "
        "s3://BUCKET/PREFIX (a saved model directory with config.json, read with checkpoint.objectStore's "
        "endpoint and credentials, cached in the Hugging Face cache).",
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
    claim_name: DnsSubdomain = Field(
        description="PersistentVolumeClaim in the job's namespace (ReadOnlyMany or ReadWriteMany lets the "
        "trainer run on any node); mounted read-only, never written or deleted.",
    )
    sub_path: str | None = Field(
        None, min_length=1, description="Mount only this directory of the volume at /data."
    )


def _under_dataset_mount(path: str | None) -> bool:
    return path is not None and (path == DATASET_MOUNT or path.startswith(DATASET_MOUNT + "/"))


class DatasetSpec(HFModel):
    """The training data: exactly one of a hub dataset (name), a file or directory (path), or examples."""

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
        None,
        min_length=1,
        description="A .json/.jsonl/.csv/.parquet file or a dataset directory in the pod, or in the object "
        "store: s3://BUCKET/KEY (one file) or s3://BUCKET/PREFIX/ (a directory), read with "
        "checkpoint.objectStore's endpoint and credentials, cached in the Hugging Face cache.",
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
    """The LoRA adapter (peft's LoraConfig names)."""

    cel_transition_rules = (immutable("spec.lora"),)

    r: Int = Field(8, ge=1, le=1024, description="LoRA rank.")
    lora_alpha: float = Field(16, gt=0, description="LoRA scaling numerator.")
    lora_dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA layers' input.")
    target_modules: list[str] | None = Field(
        None, min_length=1, description="Module names to adapt; default: peft's choice for the architecture."
    )
    bias: Literal["none", "all", "lora_only"] = Field("none", description="Which biases to train.")
    task_type: Literal["CAUSAL_LM"] = Field("CAUSAL_LM", description="peft task type (causal LM only).")


# ------------------------------------------------------------------------------------------- training


class TrainingSpec(HFModel):
    """A subset of TrainingArguments / trl.SFTConfig, with their names and the seed's defaults."""

    cel_transition_rules = (immutable("spec.training"),)

    # No rule ties save_steps to max_steps: with save_strategy 'steps', transformers also saves at the final
    # step (DefaultFlowCallback), and a SIGTERM always commits a checkpoint.
    cel_rules = (
        CelRule(
            cel="self.max_steps > 0 || self.num_train_epochs > 0.0",
            message="set max_steps > 0 or num_train_epochs > 0",
            field="num_train_epochs",
            check=lambda t: t.max_steps > 0 or t.num_train_epochs > 0,
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
    max_steps: Int = Field(-1, ge=-1, description="Total optimizer steps; -1 = use num_train_epochs.")
    per_device_train_batch_size: Int = Field(
        2, ge=1, le=65536, description="Examples per device per forward pass (lowered after a CUDA OOM)."
    )
    per_device_eval_batch_size: Int = Field(
        2, ge=1, le=65536, description="Examples per device in evaluation."
    )
    gradient_accumulation_steps: Int = Field(
        1, ge=1, le=65536, description="Forward passes per optimizer step (raised with a lowered batch)."
    )
    learning_rate: float = Field(5e-4, gt=0, le=1, description="Peak learning rate (AdamW).")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    warmup_steps: Int = Field(0, ge=0, description="Steps of linear warmup from 0 to learning_rate.")
    lr_scheduler_type: Literal[
        "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup"
    ] = Field("linear", description="Learning-rate schedule after warmup.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm.")
    max_length: Int = Field(128, ge=8, le=1048576, description="Tokens per example (trl's max_length).")
    packing: bool = Field(False, description="Pack several short examples into one sequence (trl).")
    bf16: bool = Field(False, description="bfloat16 mixed precision (needs a GPU that supports it).")
    fp16: bool = Field(False, description="float16 mixed precision.")
    gradient_checkpointing: bool = Field(
        False, description="Recompute activations in the backward pass: less memory, more compute."
    )
    seed: Int = Field(42, ge=0, description="Random seed (model init, shuffling).")
    data_seed: Int | None = Field(None, ge=0, description="Seed for data sampling; default: seed.")
    logging_steps: Int = Field(1, ge=1, description="Log (and report progress to the job) every N steps.")
    save_strategy: Literal["steps", "epoch"] = Field(
        "steps", description="When to checkpoint ('no' is not offered: checkpoints are how jobs survive)."
    )
    save_steps: Int = Field(
        2,
        ge=1,
        description="Checkpoint every N optimizer steps (save_strategy=steps); the last step is saved too.",
    )
    save_total_limit: Int | None = Field(
        2, ge=1, description="Committed checkpoints to keep; older ones are deleted after a newer commits."
    )
    eval_strategy: Literal["no", "steps", "epoch"] = Field(
        "no", description="When to evaluate (needs dataset.eval_split or dataset.eval_fraction)."
    )
    eval_steps: Int | None = Field(None, ge=1, description="Evaluate every N steps; default: logging_steps.")
    load_best_model_at_end: bool = Field(
        False, description="Finish with the best checkpoint by metric_for_best_model instead of the last."
    )
    metric_for_best_model: str | None = Field(
        None, description="Metric for load_best_model_at_end; default: eval loss."
    )
    greater_is_better: bool | None = Field(
        None, description="Whether a larger metric_for_best_model is better; default: from the metric name."
    )
    dataloader_num_workers: Int = Field(
        0, ge=0, le=64, description="Data-loading worker processes (0 = in the training process)."
    )


# ------------------------------------------------------------------------------ Kubernetes-side sections


def _is_bucket_name(value: str) -> bool:
    return bool(re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", value)) and ".." not in value


def _is_store_prefix(value: str) -> bool:
    return not value.startswith("/") and not value.endswith("/") and ".." not in value.split("/")


class ObjectStoreCredentials(KubeModel):
    """The Secret (in the job's namespace) holding the store's access key pair."""

    secret_name: DnsSubdomain = Field(description="Name of the Secret.")
    access_key_id_key: str = Field("accessKeyId", min_length=1, description="Key of the access key id.")
    secret_access_key_key: str = Field(
        "secretAccessKey", min_length=1, description="Key of the secret access key."
    )


class ObjectStoreSpec(KubeModel):
    """An S3-compatible bucket that holds the durable copy of every committed checkpoint (issue 14)."""

    cel_rules = (
        CelRule(
            cel="!has(self.endpoint) || self.endpoint.matches('^https?://[^/?#]+$')",
            message="endpoint must be an http:// or https:// URL of the server only (scheme, host and "
            "optional port; no path), e.g. https://s3.eu-west-1.amazonaws.com or http://10.0.0.5:7070",
            field="endpoint",
            check=lambda s: s.endpoint is None or bool(re.fullmatch(r"https?://[^/?#]+", s.endpoint)),
        ),
    )

    bucket: Annotated[
        str,
        FieldRule(
            cel="self.matches('^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$') && !self.contains('..')",
            message="must be an S3 bucket name: 3-63 lower-case letters, digits, '.' and '-', starting and "
            "ending with a letter or digit",
            check=_is_bucket_name,
        ),
    ] = Field(description="Bucket (must exist; the trainer creates none).")
    prefix: Annotated[
        str,
        FieldRule(
            cel="!self.startsWith('/') && !self.endsWith('/') && !self.split('/').exists(p, p == '..')",
            message="must be a key prefix without a leading or trailing '/' and without '..' segments, "
            "e.g. teams/nlp/finetunes",
            check=_is_store_prefix,
        ),
    ] = Field(
        "",
        max_length=512,
        description="Key prefix; each run's checkpoints go under <prefix>/runs/<job uid>/checkpoint-N/.",
    )
    endpoint: str | None = Field(
        None, max_length=2048, description="S3 API endpoint URL; unset: AWS S3 of the region."
    )
    region: str = Field("us-east-1", min_length=1, max_length=64, description="Region of the bucket.")
    path_style: bool = Field(
        False,
        description="Path-style addressing (http://host/bucket/key), as most S3-compatible servers need; "
        "false: virtual-hosted style (http://bucket.host/key), AWS's default.",
    )
    credentials: ObjectStoreCredentials = Field(description="Access key pair, from a Secret.")


class CheckpointSpec(KubeModel):
    """The checkpoint volume and the time the trainer gets to save on SIGTERM."""

    cel_rules = (
        CelRule(
            cel="!has(self.resumeFrom) || (!self.resumeFrom.startsWith('/') "
            "&& !self.resumeFrom.matches('(^|/)[.][.](/|$)'))",
            message="resumeFrom must be a path relative to the checkpoint claim's root (no leading '/', no "
            "'..'), e.g. runs/<uid> or runs/<uid>/checkpoint-40 (an earlier job's status.runDirectory)",
            field="resumeFrom",
            check=lambda c: _relative_without_dotdot(c.resume_from),
        ),
        CelRule(
            cel="!has(self.ephemeralVolume) || !self.ephemeralVolume || has(self.objectStore)",
            message="ephemeralVolume needs objectStore: an ephemeral volume goes with its pod, so the "
            "checkpoints must live in the object store",
            field="ephemeralVolume",
            check=lambda c: not c.ephemeral_volume or c.object_store is not None,
        ),
        CelRule(
            cel="!has(self.ephemeralVolume) || !self.ephemeralVolume || "
            "(!has(self.existingClaimName) && !has(self.resumeFrom))",
            message="ephemeralVolume cannot be used with existingClaimName or resumeFrom (both name a claim "
            "that outlives the pod)",
            field="ephemeralVolume",
            check=lambda c: (
                not c.ephemeral_volume or (c.existing_claim_name is None and c.resume_from is None)
            ),
        ),
    )

    volume_size: Quantity = Field(
        "10Gi",
        description="Size of the checkpoint PersistentVolumeClaim.",
    )
    storage_class_name: StorageClassName | None = Field(
        None,
        description="StorageClass of the checkpoint volume; unset: the cluster's default class; "
        "'' (empty): no class, as in a PersistentVolumeClaim (binds only to a PV without a class).",
    )
    access_mode: Literal["ReadWriteOnce", "ReadWriteMany", "ReadWriteOncePod"] = Field(
        "ReadWriteOnce", description="Access mode of the checkpoint volume."
    )
    existing_claim_name: DnsSubdomain | None = Field(
        None, description="Use this PVC instead of creating one (never deleted)."
    )
    ephemeral_volume: bool = Field(
        False,
        description="With objectStore: the checkpoint volume is a generic ephemeral volume made with each "
        "trainer pod and deleted with it (volumeSize, storageClassName, accessModes as for the claim), so a "
        "replacement pod is not pinned to the zone of a disk and may land wherever capacity is; every "
        "attempt resumes from the store's newest committed checkpoint. Put the Hugging Face cache on a "
        "sharedClaim (or read the model from s3://), or each attempt downloads the model again.",
    )
    delete_with_job: bool = Field(
        False, description="Delete the checkpoint volume when the FineTuneJob is deleted (default: keep it)."
    )
    termination_grace_period_seconds: Int = Field(
        120,
        ge=10,
        le=86400,
        description="Time the trainer gets after SIGTERM to write its emergency checkpoint.",
    )
    resume_from: str | None = Field(
        None,
        min_length=1,
        max_length=1024,
        description="Continue from an earlier run on this claim: its run directory (runs/<uid>, an earlier "
        "job's status.runDirectory: its newest intact committed checkpoint) or one committed checkpoint "
        "(runs/<uid>/checkpoint-40). Read only; used while this job's own run has no committed checkpoint. "
        "A different training spec is allowed only with the same model and LoRA shape.",
    )
    on_no_intact_checkpoint: Literal["fail", "restart"] = Field(
        "fail",
        description="When committed checkpoints exist but none is intact (checksum mismatch, unreadable): "
        "fail (exit 65, nothing deleted, each checkpoint and its problem in the message) or restart "
        "(move the damaged ones to damaged/ on the volume and train from scratch).",
    )
    background_save: bool = Field(
        True,
        description="Write, verify, fsync and commit each checkpoint in a background thread while training "
        "goes on (the state is copied at the step boundary; the next save, the end of training and SIGTERM "
        "wait for it). false: every save blocks training. Single-process runs only; with several processes "
        "saves are always synchronous.",
    )
    object_store: ObjectStoreSpec | None = Field(
        None,
        description="Upload every committed checkpoint to this S3-compatible bucket in the background and "
        "resume from the newest committed copy, local or remote: the claim becomes a working copy that may "
        "be lost (docs/trainer.md, object storage).",
    )


CacheLocation = Literal["checkpointVolume", "sharedClaim", "none"]


class CacheSpec(KubeModel):
    """Where the Hugging Face cache lives (HF_HOME: downloaded models and datasets, datasets' processed
    files)."""

    cel_rules = (
        CelRule(
            cel="self.location != 'sharedClaim' || has(self.claimName)",
            message="location sharedClaim needs claimName: an existing PersistentVolumeClaim in the job's "
            "namespace (ReadWriteMany when jobs on several nodes share it)",
            field="claimName",
            check=lambda c: c.location != "sharedClaim" or c.claim_name is not None,
        ),
        CelRule(
            cel="self.location == 'sharedClaim' || !has(self.claimName)",
            message="claimName is used only with location sharedClaim",
            field="claimName",
            check=lambda c: c.location == "sharedClaim" or c.claim_name is None,
        ),
    )
    location: CacheLocation = Field(
        "checkpointVolume",
        description="checkpointVolume: on the job's checkpoint volume (<volume>/.cache/hf), kept across "
        f"attempts; sharedClaim: on claimName, mounted at {CACHE_MOUNT} and shared by every job that names "
        "it (one download for all; concurrent downloads are locked per file); none: the pod's scratch /tmp "
        "(emptyDir, resources.scratchSize), downloaded again by every attempt.",
    )
    claim_name: DnsSubdomain | None = Field(
        None,
        description="With location sharedClaim: an existing PersistentVolumeClaim in the job's namespace "
        f"(ReadWriteMany when jobs on several nodes share it), mounted read-write at {CACHE_MOUNT}; never "
        "created or deleted by the operator.",
    )


class GpuResources(KubeModel):
    """What each trainer pod asks for (requests = limits)."""

    cel_rules = (
        CelRule(
            # Guarded: a value that is not a quantity is reported on its own field, once.
            cel="!has(self.maxMemory) || !has(self.memory) "
            f"|| !({QUANTITY_CEL.replace('self', 'self.maxMemory')}) "
            f"|| !({QUANTITY_CEL.replace('self', 'self.memory')}) "
            "|| quantity(self.maxMemory).compareTo(quantity(self.memory)) >= 0",
            message="maxMemory must be at least memory",
            field="maxMemory",
            check=lambda r: (
                r.max_memory is None
                or r.memory is None
                or not is_quantity(r.max_memory)
                or not is_quantity(r.memory)
                or parse_quantity(r.max_memory) >= parse_quantity(r.memory)
            ),
        ),
    )
    gpus: Int = Field(1, ge=0, le=64, description="GPUs per trainer pod.")
    gpu_resource_name: Annotated[
        str,
        Field(max_length=QUALIFIED_NAME_WITH_PREFIX_MAX_LENGTH),
        FieldRule(
            cel="self.contains('/') && !self.contains('kubernetes.io/') && !self.startsWith('requests.') "
            "&& !format.qualifiedName().validate(self).hasValue() "
            "&& !format.qualifiedName().validate('requests.' + self).hasValue()",
            message="must be an extended resource name <domain>/<name> outside kubernetes.io, "
            "e.g. nvidia.com/gpu, amd.com/gpu, gpu.intel.com/i915",
            check=is_extended_resource_name,
        ),
    ] = Field("nvidia.com/gpu", description="Extended resource that provides GPUs.")
    cpu: Quantity | None = Field(None, description="CPU request and limit, e.g. '8'.")
    memory: Memory | None = Field(
        None, description=f"Memory request and limit, e.g. '32Gi' (at least {MIN_MEMORY})."
    )
    max_memory: Memory | None = Field(
        None,
        description="Cap for memory raised after host OOM kills (default: memory x 2 x oomMemoryFactor).",
    )
    scratch_size: Quantity = Field(
        "8Gi",
        description="Size limit of the trainer's scratch /tmp (emptyDir; the Hugging Face cache is there "
        "only with cache.location none). Writing more gets the pod evicted.",
    )


class Toleration(KubeModel):
    """A Kubernetes toleration, checked with the rules the apiserver applies to a pod's tolerations."""

    cel_rules = (
        CelRule(
            cel="(has(self.key) && self.key != '') || self.operator == 'Exists'",
            message="a toleration without a key must use operator Exists (it then tolerates every taint)",
            field="operator",
            check=lambda t: bool(t.key) or t.operator == "Exists",
        ),
        CelRule(
            cel="self.operator != 'Exists' || !has(self.value) || self.value == ''",
            message="value must be empty when operator is Exists (Exists matches any value)",
            field="value",
            check=lambda t: t.operator != "Exists" or not t.value,
        ),
        CelRule(
            cel="!has(self.tolerationSeconds) || (has(self.effect) && self.effect == 'NoExecute')",
            message="tolerationSeconds needs effect NoExecute",
            field="effect",
            check=lambda t: t.toleration_seconds is None or t.effect == "NoExecute",
        ),
    )
    key: QualifiedName | None = Field(None, description="Taint key to tolerate; empty: every key (Exists).")
    operator: Literal["Exists", "Equal"] = Field(
        "Equal", description="Equal: the taint's value must equal value; Exists: any value."
    )
    value: LabelValue | None = Field(None, description="Taint value to match (operator Equal).")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        None, description="Taint effect to tolerate; empty: every effect."
    )
    toleration_seconds: Int | None = Field(
        None, description="With effect NoExecute: how long the pod stays bound after the taint appears."
    )


#: The providers' documented notice before a spot/preemptible node goes away, as the trainer sees it (from
#: SIGTERM): GKE's graceful node shutdown gives ordinary pods 15 s of its 30 s (the rest is for system pods),
#: whatever terminationGracePeriodSeconds says; EC2 spot sends a 2-minute interruption notice (a node
#: termination handler or Karpenter drains the node then); Azure Scheduled Events announce a spot eviction
#: at least 30 s ahead. scheduling.preemptionNoticeSeconds overrides these (e.g. a GKE node pool with a
#: longer shutdown period).
CLOUD_PREEMPTION_NOTICE_SECONDS: dict[str, int] = {"gke": 15, "aws": 120, "azure": 30}
Cloud = Literal["gke", "aws", "azure"]


class SchedulingSpec(KubeModel):
    """Where the trainer pod may run."""

    spot: bool = Field(
        False,
        description="Shorthand: tolerate the common spot/preemptible taints and prefer spot nodes "
        "(cloud-neutral labels; add your own in nodeSelector).",
    )
    cloud: Cloud | None = Field(
        None,
        description="The nodes' cloud, for its documented preemption notice when preemptionNoticeSeconds is "
        "unset: gke 15 s (graceful node shutdown's share for ordinary pods), aws 120 s (EC2 spot "
        "interruption notice), azure 30 s (Scheduled Events). The trainer's save deadline is the shorter "
        "of the notice and checkpoint.terminationGracePeriodSeconds, less 5 s.",
    )
    preemption_notice_seconds: Int | None = Field(
        None,
        ge=2,
        le=86400,
        description="Seconds the nodes really give a pod between SIGTERM and the kill when they are "
        "reclaimed, if shorter than checkpoint.terminationGracePeriodSeconds (spot nodes often give less "
        "than the pod asks for); overrides the cloud's figure.",
    )
    node_selector: Annotated[
        dict[str, Annotated[str, Field(max_length=LABEL_VALUE_MAX_LENGTH)]],
        FieldRule(
            cel="self.all(k, !format.qualifiedName().validate(k).hasValue())",
            message="keys must be label keys: an optional DNS-subdomain prefix and '/', then at most 63 "
            "letters, digits, '-', '_' or '.', starting and ending with a letter or digit",
            check=lambda m: all(is_qualified_name(k) for k in m),
        ),
        FieldRule(
            cel="self.all(k, !format.labelValue().validate(self[k]).hasValue())",
            message="values must be label values: empty, or at most 63 letters, digits, '-', '_' or '.', "
            "starting and ending with a letter or digit",
            check=lambda m: all(is_label_value(v) for v in m.values()),
        ),
    ] = Field(
        default_factory=dict,
        max_length=MAX_SCHEDULING_ENTRIES,
        description="Node labels the trainer pod's node must have.",
    )
    tolerations: list[Toleration] = Field(
        default_factory=list,
        max_length=MAX_SCHEDULING_ENTRIES,
        description="Taints the trainer pod tolerates (besides the spot shorthand's).",
    )
    affinity: dict[str, Any] | None = Field(None, description="A Kubernetes Affinity, passed through.")
    priority_class_name: DnsSubdomain | None = Field(
        None, description="PriorityClass of the trainer pod (it must exist when the pod is created)."
    )


class RestartPolicy(KubeModel):
    """How many restarts each cause may use, and the backoff between error restarts."""

    cel_rules = (
        CelRule(
            cel="self.maxBackoffSeconds >= self.backoffSeconds",
            message="maxBackoffSeconds must be at least backoffSeconds",
            field="maxBackoffSeconds",
            check=lambda p: p.max_backoff_seconds >= p.backoff_seconds,
        ),
    )
    max_preemptions: Int = Field(
        1000, ge=0, description="Restarts after preemption/eviction/node loss (no work lost beyond a save)."
    )
    max_oom_restarts: Int = Field(
        4, ge=0, description="Restarts after out-of-memory (host OOM kill or CUDA OOM), each adapting."
    )
    max_failures: Int = Field(3, ge=0, description="Restarts after application errors, with backoff.")
    backoff_seconds: Int = Field(10, ge=0, le=3600, description="First delay after an error; doubles.")
    max_backoff_seconds: Int = Field(300, ge=0, le=86400, description="Longest delay after an error.")
    oom_memory_factor: float = Field(1.5, gt=1, le=4, description="Memory x this after a host OOM kill.")
    pending_timeout_seconds: Int = Field(
        0, ge=0, description="Fail a pod that stays unschedulable this long (0 = wait forever)."
    )
    max_infrastructure_restarts: Int = Field(
        10,
        ge=0,
        description="Restarts after the container could not start (StartError: the node's runtime or GPU "
        "hook failed) or the image could not be pulled in time, each on a new pod with backoff, preferring "
        "another node.",
    )
    image_pull_timeout_seconds: Int = Field(
        600,
        ge=0,
        description="How long a pod may keep retrying its image pull (ErrImagePull, ImagePullBackOff) before "
        "it is replaced on another node (0 = wait forever). An unknown image or denied access fails at once.",
    )


class SecretKeyRef(KubeModel):
    """A key in a Secret in the job's namespace."""

    name: DnsSubdomain = Field(description="Secret name.")
    key: str = Field(min_length=1, description="Key within the Secret.")


class EnvVar(KubeModel):
    """An environment variable for the trainer: a value or a Secret key, not both."""

    cel_rules = (
        CelRule(
            # As Kubernetes: valueFrom may not be combined with a non-empty value.
            cel="!has(self.secretKeyRef) || !has(self.value) || self.value == ''",
            message="set value or secretKeyRef, not both",
            field="secretKeyRef",
            check=lambda e: e.secret_key_ref is None or not e.value,
        ),
    )
    name: EnvName = Field(description="Variable name.")
    value: str | None = Field(None, description="Literal value.")
    secret_key_ref: SecretKeyRef | None = Field(None, description="Take the value from this Secret key.")


#: model.name_or_path / dataset.path read from the object store (the trainer's finetune_trainer.s3_inputs).
S3_SCHEME = "s3://"


def is_s3(value: str | None) -> bool:
    """An s3:// input (the trainer fetches it into the Hugging Face cache: finetune_trainer.s3_inputs)."""
    return value is not None and value.startswith(S3_SCHEME)


class FineTuneJobSpec(KubeModel):
    """What to fine-tune, on what data, with which settings, and how the trainer pod runs."""

    model: ModelSpec = Field(description="The base model.")
    dataset: DatasetSpec = Field(description="The training (and evaluation) data.")
    lora: LoraSpec = Field(default_factory=LoraSpec, description="The LoRA adapter (peft LoraConfig).")
    training: TrainingSpec = Field(
        default_factory=TrainingSpec,
        description="Training settings (TrainingArguments / trl SFTConfig names).",
    )
    checkpoint: CheckpointSpec = Field(
        default_factory=CheckpointSpec, description="Checkpoint volume and emergency-save time."
    )
    cache: CacheSpec = Field(
        default_factory=CacheSpec,
        description="Where downloaded models and datasets are cached: the checkpoint volume (default), a "
        "claim shared by many jobs, or none.",
    )
    resources: GpuResources = Field(default_factory=GpuResources, description="GPUs, CPU and memory per pod.")
    scheduling: SchedulingSpec = Field(
        default_factory=SchedulingSpec, description="Spot, node selector, tolerations, affinity, priority."
    )
    restart_policy: RestartPolicy = Field(
        default_factory=RestartPolicy, description="Restart budgets per cause and error backoff."
    )
    image: str = Field(
        "ghcr.io/finetune-operator/trainer:0.1.0", min_length=1, description="The trainer container image."
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = Field(
        "IfNotPresent", description="Pull policy of the trainer image."
    )
    env: list[EnvVar] = Field(
        default_factory=list,
        max_length=MAX_ENV_ENTRIES,
        description="Extra environment variables for the trainer (they win over ours).",
    )
    hf_token_secret: SecretKeyRef | None = Field(
        None, description="Secret key holding a Hugging Face token; exposed to the trainer as HF_TOKEN."
    )
    suspend: bool = Field(False, description="Stop gracefully (emergency checkpoint); resume later.")

    cel_rules = (
        CelRule(
            cel=f"!self.model.name_or_path.startsWith('{S3_SCHEME}') || has(self.checkpoint.objectStore)",
            message=f"an {S3_SCHEME} model is read with spec.checkpoint.objectStore's endpoint, region and "
            "credentials: set checkpoint.objectStore",
            field="model.name_or_path",
            check=lambda s: not is_s3(s.model.name_or_path) or s.checkpoint.object_store is not None,
        ),
        CelRule(
            cel=f"!has(self.dataset.path) || !self.dataset.path.startsWith('{S3_SCHEME}') "
            "|| has(self.checkpoint.objectStore)",
            message=f"an {S3_SCHEME} dataset is read with spec.checkpoint.objectStore's endpoint, region and "
            "credentials: set checkpoint.objectStore",
            field="dataset.path",
            check=lambda s: not is_s3(s.dataset.path) or s.checkpoint.object_store is not None,
        ),
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


# --------------------------------------------------------------------------------------------- object


# The job name's rules, with `self` = the name; the CRD checks them on the object (fieldPath metadata.name).
JOB_NAME_RULES = (
    FieldRule(
        cel=f"self.size() <= {MAX_JOB_NAME_LENGTH}",
        message=f"must be at most {MAX_JOB_NAME_LENGTH} characters (trainer pods are named <job>-<attempt>)",
        check=lambda name: len(name) <= MAX_JOB_NAME_LENGTH,
    ),
    FieldRule(
        cel="self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')",
        message="must be a DNS label: lower-case letters, digits and '-', starting and ending with a letter "
        "or digit",
        check=lambda name: bool(_DNS_LABEL.fullmatch(name)),
    ),
)


class ObjectMeta(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: Annotated[str, Field(min_length=1), *JOB_NAME_RULES]
    namespace: str | None = None


class FineTuneJob(BaseModel):
    """A LoRA fine-tuning job on (spot) GPUs that survives preemption by resuming from checkpoints."""

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
