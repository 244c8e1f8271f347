"""The trainer's input: what the operator renders into a ConfigMap and `finetune-trainer --config` reads.

The trainer accepts either this document (kind TrainerConfig) or a whole FineTuneJob manifest, so the same
job.yaml runs on a laptop and in a pod.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from finetune_api.models import (
    CLOUD_PREEMPTION_NOTICE_SECONDS,
    KIND,
    DatasetSpec,
    FineTuneJob,
    FineTuneJobSpec,
    LoraSpec,
    ModelSpec,
    TrainingSpec,
)

RUNS_PREFIX = "runs"

TRAINER_CONFIG_KIND = "TrainerConfig"
# Seconds kept back from the pod's grace period for writing the termination message and exiting.
EXIT_MARGIN_SECONDS = 5.0


class InvalidManifest(ValueError):
    """A manifest the model rejects; `errors` holds one 'field.path: message' line per problem."""

    def __init__(self, source: str, errors: list[str]):
        self.source = source
        self.errors = errors
        super().__init__(f"{source}: invalid: " + "; ".join(errors))


class JobRef(BaseModel):
    model_config = ConfigDict(extra="forbid")
    namespace: str
    name: str


class ObjectStoreConfig(BaseModel):
    """Where this run's checkpoints are uploaded: s3://bucket/prefix/checkpoint-N/. The key pair comes from
    the environment (contract.S3_ACCESS_KEY_ID_ENV / S3_SECRET_ACCESS_KEY_ENV; in a pod: from the Secret)."""

    model_config = ConfigDict(extra="forbid")
    bucket: str
    prefix: str = Field("", description="This run's key prefix (the operator appends runs/<job uid>).")
    endpoint: str | None = None
    region: str = "us-east-1"
    path_style: bool = False


class TrainerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    api_version: Literal["finetune.dev/v1alpha1"] = Field("finetune.dev/v1alpha1", alias="apiVersion")
    kind: Literal["TrainerConfig"] = "TrainerConfig"
    job: JobRef | None = Field(None, description="The FineTuneJob to report progress to (in a cluster).")
    model: ModelSpec
    dataset: DatasetSpec
    lora: LoraSpec = Field(default_factory=LoraSpec)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    save_deadline_seconds: float = Field(
        115.0, gt=0, description="After SIGTERM, the emergency checkpoint must be committed within this."
    )
    metrics_port: int = Field(0, ge=0, le=65535, description="Serve trainer metrics here (0 = off).")
    on_no_intact_checkpoint: Literal["fail", "restart"] = Field(
        "fail", description="spec.checkpoint.onNoIntactCheckpoint: exit 65, or set damaged aside and restart."
    )
    background_save: bool = Field(
        True, description="spec.checkpoint.backgroundSave: write and commit each checkpoint in a thread."
    )
    object_store: ObjectStoreConfig | None = Field(
        None, description="spec.checkpoint.objectStore: upload committed checkpoints, resume from them."
    )


def _field_path(loc: tuple[int | str, ...]) -> str:
    """('spec', 'tolerations', 0, 'effect') → 'spec.tolerations[0].effect', as kubectl prints it."""
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def format_validation_error(error: ValidationError, prefix: str = "") -> list[str]:
    """One line per problem, each starting with the dotted field path (what users grep their YAML for)."""
    lines = []
    for item in error.errors():
        path = _field_path(item["loc"])
        ctx = item.get("ctx") or {}
        failures = ctx.get("failures") if item["type"] == "cross_field_rule" else None
        for field, message in failures or [("", item["msg"])]:
            where = f"{path}.{field}" if path and field else (field or path)
            full = ".".join(part for part in (prefix, where) if part)
            lines.append(f"{full or '(document)'}: {message}")
    return lines


def parse_job(document: dict[str, Any], source: str = "manifest") -> FineTuneJob:
    """Validate a manifest as the apiserver does: camelCase names only in the Kubernetes sections."""
    try:
        return FineTuneJob.model_validate(document, by_alias=True, by_name=False)
    except ValidationError as error:
        raise InvalidManifest(source, format_validation_error(error)) from None


def preemption_notice_seconds(spec: FineTuneJobSpec) -> int | None:
    """What the nodes give a pod after SIGTERM when reclaimed: the spec's figure, else its cloud's."""
    scheduling = spec.scheduling
    if scheduling.preemption_notice_seconds is not None:
        return scheduling.preemption_notice_seconds
    return CLOUD_PREEMPTION_NOTICE_SECONDS.get(scheduling.cloud or "")


def save_deadline_seconds(spec: FineTuneJobSpec) -> float:
    """The emergency save must be committed within the shorter of the grace period and the cloud's notice,
    less the time to write the termination message and exit."""
    grace = spec.checkpoint.termination_grace_period_seconds
    notice = preemption_notice_seconds(spec)
    budget = grace if notice is None else min(grace, notice)
    return max(1.0, budget - EXIT_MARGIN_SECONDS)


def trainer_config_from_job(
    job: FineTuneJob, metrics_port: int = 0, report_to_job: bool = False
) -> TrainerConfig:
    """Render the trainer's config for one attempt from the job's spec as it stands: the operator passes
    the effective job (finetune_api.effective: the OOM adaptations applied), a manifest on a laptop its own.
    This config is the only way the adaptations reach the trainer."""
    spec = job.spec
    job_ref = None
    if report_to_job:
        job_ref = JobRef(namespace=job.metadata.namespace or "default", name=job.metadata.name)
    return TrainerConfig(
        job=job_ref,
        model=spec.model,
        # the volume is the pod's business (builders mount it at /data); the trainer only reads dataset.path
        dataset=spec.dataset.model_copy(update={"volume": None}),
        lora=spec.lora,
        training=spec.training,
        save_deadline_seconds=save_deadline_seconds(spec),
        metrics_port=metrics_port,
        on_no_intact_checkpoint=spec.checkpoint.on_no_intact_checkpoint,
        background_save=spec.checkpoint.background_save,
        object_store=_object_store_config(job),
    )


def _object_store_config(job: FineTuneJob) -> ObjectStoreConfig | None:
    """The run's prefix is keyed by the job's uid, as its run directory on the claim (contract.RUNS_DIR)."""
    store = job.spec.checkpoint.object_store
    if store is None:
        return None
    uid = (job.metadata.model_extra or {}).get("uid")
    run = f"{RUNS_PREFIX}/{uid}" if uid else ""
    prefix = "/".join(part for part in (store.prefix, run) if part)
    return ObjectStoreConfig(
        bucket=store.bucket,
        prefix=prefix,
        endpoint=store.endpoint,
        region=store.region,
        path_style=store.path_style,
    )


class KubectlYamlLoader(yaml.SafeLoader):
    """YAML read as kubectl reads it (go-yaml v2 via sigs.k8s.io/yaml), so both layers see the same values.

    PyYAML differs from kubectl on plain scalars: `1e4` and `5.0e4` are strings to PyYAML but numbers to
    kubectl (a whole number lands in an integer field as 10000), `y`/`n` are booleans to kubectl only, and
    `1:30` (sexagesimal) or `2024-01-01` (a date) are values to PyYAML but strings to kubectl.
    """

    yaml_implicit_resolvers: dict[Any, list[tuple[str, re.Pattern[str]]]] = {}


def _construct_bool(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> bool:
    return str(loader.construct_scalar(node)).lower() in ("y", "yes", "true", "on")


_GO_YAML_RESOLVERS = (
    ("tag:yaml.org,2002:null", r"^(?:~|null|Null|NULL|)$", ["~", "n", "N", ""]),
    (
        "tag:yaml.org,2002:bool",
        r"^(?:y|Y|yes|Yes|YES|true|True|TRUE|on|On|ON|n|N|no|No|NO|false|False|FALSE|off|Off|OFF)$",
        list("yYnNtTfFoO"),
    ),
    (
        "tag:yaml.org,2002:int",
        r"^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]*|[-+]?[1-9][0-9_]*|[-+]?0x[0-9a-fA-F_]+)$",
        list("-+0123456789"),
    ),
    (
        "tag:yaml.org,2002:float",
        r"^(?:[-+]?(?:\.[0-9_]+|[0-9][0-9_]*(?:\.[0-9_]*)?)(?:[eE][-+]?[0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$",
        list("-+.0123456789"),
    ),
    ("tag:yaml.org,2002:merge", r"^(?:<<)$", ["<"]),
)
for _tag, _pattern, _first in _GO_YAML_RESOLVERS:
    KubectlYamlLoader.add_implicit_resolver(_tag, re.compile(_pattern), _first)
KubectlYamlLoader.add_constructor("tag:yaml.org,2002:bool", _construct_bool)


def load_document(path: str | Path) -> dict[str, Any]:
    text = Path(path).read_text()
    try:
        document = json.loads(text) if str(path).endswith(".json") else yaml.load(text, KubectlYamlLoader)
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        raise InvalidManifest(str(path), [f"(document): not valid YAML/JSON: {error}"]) from None
    if not isinstance(document, dict):
        raise InvalidManifest(str(path), ["(document): expected a mapping at the top level"])
    return document


def load_trainer_config(path: str | Path) -> TrainerConfig:
    """Read a TrainerConfig or a FineTuneJob manifest (YAML or JSON)."""
    document = load_document(path)
    kind = document.get("kind")
    if kind == KIND:
        return trainer_config_from_job(parse_job(document, str(path)))
    if kind == TRAINER_CONFIG_KIND:
        try:
            return TrainerConfig.model_validate(document)
        except ValidationError as error:
            raise InvalidManifest(str(path), format_validation_error(error)) from None
    raise InvalidManifest(str(path), [f"kind: expected {KIND} or {TRAINER_CONFIG_KIND}, got {kind!r}"])
