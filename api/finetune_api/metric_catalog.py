"""Every Prometheus metric finetune-operator exports, one place: name, type, labels, help and buckets.

The operator (`finetune_operator.metrics`) and the trainer (`finetune_trainer.reporting.TrainerMetrics`)
register their metrics from these entries, and the dashboard and alert rules (`finetune_observability`) may
only reference metrics listed here; unit tests prove all four agree. Data only: it lives in the API package so
the trainer image has it, and it imports no Prometheus client (finetune_api stays light).

Metric names and label names are a contract (README, Contracts): dashboards and alerts of users select them.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Literal

from finetune_api.models import RESTART_CAUSES, Phase

MetricType = Literal["counter", "gauge", "histogram"]

#: Label names: bounded by the number of jobs; `finetunejob`, never `job` (Prometheus' scrape-target label).
NS = "namespace"
JOB = "finetunejob"
JOB_LABELS: tuple[str, ...] = (NS, JOB)

#: The values the bounded labels other than the job's take.
LABEL_VALUES: dict[str, tuple[str, ...]] = {
    "phase": typing.get_args(Phase),
    "cause": RESTART_CAUSES,
}


@dataclass(frozen=True)
class Metric:
    name: str  # as exported: counters end in _total (prometheus_client strips it for the family name)
    type: MetricType
    labels: tuple[str, ...]  # as a Prometheus scraping the chart's monitors stores them
    help: str
    source: Literal["operator", "trainer"] = "operator"
    buckets: tuple[float, ...] = ()  # histograms only

    @property
    def exported_labels(self) -> tuple[str, ...]:
        """Labels the process itself sets (the trainer sets none: its pod says which job it trains)."""
        return self.labels if self.source == "operator" else ()

    def series_names(self) -> tuple[str, ...]:
        """The sample names a scrape shows for this metric."""
        if self.type == "histogram":
            return (f"{self.name}_bucket", f"{self.name}_sum", f"{self.name}_count")
        return (self.name,)


# --- the operator's (/metrics of the operator Deployment; labels set by the operator) ---------------------

#: LoRA adapters save in milliseconds, full 70B models in minutes: 5 ms … 30 min.
SAVE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
#: Pod end → trainer training again: ~1 s (operator) + start-up (seconds to minutes for big models).
RECOVERY_BUCKETS = (1, 2, 5, 10, 15, 20, 30, 45, 60, 90, 120, 300, 600, 1200, 1800, 3600)

CHECKPOINT_SAVE_DURATION = Metric(
    "finetune_checkpoint_save_duration_seconds",
    "histogram",
    JOB_LABELS,
    "Seconds one checkpoint save took (write, verify, fsync, commit marker), as the trainer reported it.",
    buckets=SAVE_BUCKETS,
)
CHECKPOINTS = Metric(
    "finetune_checkpoints",
    "gauge",
    JOB_LABELS,
    "Committed checkpoints currently retained on the job's volume.",
)
CHECKPOINTS_SAVED = Metric(
    "finetune_checkpoints_saved_total",
    "counter",
    JOB_LABELS,
    "Checkpoints committed, as seen by this operator process (a restarted operator counts from 0).",
)
RESTARTS = Metric(
    "finetune_restarts_total",
    "counter",
    (*JOB_LABELS, "cause"),
    "Trainer pods replaced, by cause (preemption, hostOOM, cudaOOM, error, infrastructure; from "
    "status.restarts).",
)
RESTART_STREAK = Metric(
    "finetune_restart_streak",
    "gauge",
    JOB_LABELS,
    "Trainer pod ends in a row for the same reason without training progress (0 = none); not exported "
    "for finished jobs.",
)
# Per namespace, not per job: the alerts and panels that read it aggregate `by (namespace, finetunejob)`,
# which also works if it becomes a per-job 0/1 state set.
JOBS = Metric("finetune_jobs", "gauge", (NS, "phase"), "FineTuneJobs by phase.")
TRAINING_STEP = Metric(
    "finetune_training_step", "gauge", JOB_LABELS, "The last optimizer step the trainer reported."
)
LOST_STEPS = Metric(
    "finetune_lost_steps_total",
    "counter",
    JOB_LABELS,
    "Optimizer steps trained after the last committed checkpoint when a pod ended (redone after resume).",
)
EMERGENCY_SAVES_LATE = Metric(
    "finetune_emergency_saves_late_total",
    "counter",
    JOB_LABELS,
    "Emergency checkpoints (after SIGTERM) not committed before the trainer's save deadline "
    "(from status.lateEmergencySaves): the job resumed from an older checkpoint.",
)
RECOVERY_DURATION = Metric(
    "finetune_recovery_duration_seconds",
    "histogram",
    JOB_LABELS,
    "Seconds from a trainer pod's end to its replacement reporting training progress again.",
    buckets=RECOVERY_BUCKETS,
)
CHECKPOINT_SIZE = Metric(
    "finetune_checkpoint_size_bytes", "gauge", JOB_LABELS, "Bytes of the newest committed checkpoint."
)

OPERATOR_METRICS: tuple[Metric, ...] = (
    CHECKPOINT_SAVE_DURATION,
    CHECKPOINTS,
    CHECKPOINTS_SAVED,
    RESTARTS,
    RESTART_STREAK,
    JOBS,
    TRAINING_STEP,
    LOST_STEPS,
    EMERGENCY_SAVES_LATE,
    RECOVERY_DURATION,
    CHECKPOINT_SIZE,
)

# --- the trainer's (its pod's `metrics` port, 9400) ------------------------------------------------------
# Exported without labels: the scrape adds `namespace` (the pod's) and `finetunejob` (from the pod's
# finetune.dev/job label; the PodMonitor's relabelings).


def _trainer(name: str, type_: MetricType, help_: str, buckets: tuple[float, ...] = ()) -> Metric:
    return Metric(name, type_, JOB_LABELS, help_, "trainer", buckets)


TRAINER_STEP = _trainer("finetune_trainer_step", "gauge", "Last completed optimizer step.")
TRAINER_TOTAL_STEPS = _trainer("finetune_trainer_total_steps", "gauge", "Optimizer steps of the whole run.")
TRAINER_LOSS = _trainer("finetune_trainer_loss", "gauge", "Last logged training loss.")
TRAINER_STEP_DURATION = _trainer(
    "finetune_trainer_step_duration_seconds",
    "histogram",
    "Wall time of one optimizer step (saves excluded).",
    (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
TRAINER_TOKENS_PER_SECOND = _trainer(
    "finetune_trainer_tokens_per_second", "gauge", "Input tokens per second over the last step."
)
TRAINER_CHECKPOINT_SAVE_DURATION = _trainer(
    "finetune_trainer_checkpoint_save_duration_seconds",
    "histogram",
    "Checkpoint write + verify + fsync + commit, as the trainer times it.",
    (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)
TRAINER_LAST_SAVE_DURATION = _trainer(
    "finetune_trainer_last_save_duration_seconds", "gauge", "Duration of the last committed save."
)
TRAINER_LAST_CHECKPOINT_SIZE = _trainer(
    "finetune_trainer_last_checkpoint_size_bytes", "gauge", "Bytes of the last committed checkpoint."
)
TRAINER_LAST_CHECKPOINT_STEP = _trainer(
    "finetune_trainer_last_checkpoint_step", "gauge", "Step of the newest committed checkpoint."
)
TRAINER_CHECKPOINTS = _trainer(
    "finetune_trainer_checkpoints", "gauge", "Committed checkpoints currently retained."
)
TRAINER_CHECKPOINTS_COMMITTED = _trainer(
    "finetune_trainer_checkpoints_committed_total",
    "counter",
    "Checkpoints committed by this trainer process.",
)
TRAINER_UPLOAD_DURATION = _trainer(
    "finetune_trainer_checkpoint_upload_duration_seconds",
    "histogram",
    "Seconds to upload and verify one committed checkpoint to the object store (marker included).",
    buckets=SAVE_BUCKETS,
)
TRAINER_UPLOADED_BYTES = _trainer(
    "finetune_trainer_checkpoint_uploaded_bytes_total",
    "counter",
    "Bytes of checkpoint files uploaded and verified to the object store.",
)
TRAINER_UPLOAD_FAILURES = _trainer(
    "finetune_trainer_checkpoint_upload_failures_total",
    "counter",
    "Checkpoint uploads that failed and will be retried (store down, timeout, a file that did not verify).",
)
TRAINER_DURABLE_STEP = _trainer(
    "finetune_trainer_durable_checkpoint_step",
    "gauge",
    "Step of the newest checkpoint committed in the object store.",
)

TRAINER_METRICS: tuple[Metric, ...] = (
    TRAINER_STEP,
    TRAINER_TOTAL_STEPS,
    TRAINER_LOSS,
    TRAINER_STEP_DURATION,
    TRAINER_TOKENS_PER_SECOND,
    TRAINER_CHECKPOINT_SAVE_DURATION,
    TRAINER_LAST_SAVE_DURATION,
    TRAINER_LAST_CHECKPOINT_SIZE,
    TRAINER_LAST_CHECKPOINT_STEP,
    TRAINER_CHECKPOINTS,
    TRAINER_CHECKPOINTS_COMMITTED,
    TRAINER_UPLOAD_DURATION,
    TRAINER_UPLOADED_BYTES,
    TRAINER_UPLOAD_FAILURES,
    TRAINER_DURABLE_STEP,
)

ALL_METRICS: tuple[Metric, ...] = OPERATOR_METRICS + TRAINER_METRICS
BY_NAME: dict[str, Metric] = {m.name: m for m in ALL_METRICS}

#: Every sample name that may appear in a query, mapped to its metric.
SERIES: dict[str, Metric] = {s: m for m in ALL_METRICS for s in m.series_names()}
