"""The documented metrics (design.md §3 and the trainer's metrics port), one place for all of observability.

The operator's `finetune_operator.metrics` is the source of truth for what is exported; a unit test proves
this catalog and that module agree (names, types, labels), so the dashboard and alert tests, which check
every metric they reference against this catalog, also check it against what the operator exports.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

MetricType = Literal["counter", "gauge", "histogram", "summary"]

#: Label names: bounded by the number of jobs; `finetunejob`, never `job` (Prometheus' scrape-target label).
NS = "namespace"
JOB = "finetunejob"

#: The values the `phase` and `cause` labels take (finetune_api.models.Phase / RESTART_CAUSES).
PHASES: tuple[str, ...] = ("Pending", "Running", "Restarting", "Succeeded", "Failed", "Suspended")
CAUSES: tuple[str, ...] = ("preemption", "hostOOM", "cudaOOM", "error", "infrastructure")


@dataclass(frozen=True)
class Metric:
    name: str  # as exported: counters end in _total (the family name is without it)
    type: MetricType
    labels: tuple[str, ...]
    help: str
    source: Literal["operator", "trainer"] = "operator"

    @property
    def exported_labels(self) -> tuple[str, ...]:
        """Labels the process itself sets (the trainer sets none: its pod says which job it trains)."""
        return self.labels if self.source == "operator" else ()

    def series_names(self) -> tuple[str, ...]:
        """The sample names a scrape shows for this metric."""
        if self.type == "histogram":
            return (f"{self.name}_bucket", f"{self.name}_sum", f"{self.name}_count")
        if self.type == "summary":
            return (self.name, f"{self.name}_sum", f"{self.name}_count")
        return (self.name,)


OPERATOR_METRICS: tuple[Metric, ...] = (
    Metric(
        "finetune_checkpoint_save_duration_seconds",
        "histogram",
        (NS, JOB),
        "Seconds one checkpoint save took (trainer-reported, write + fsync + commit marker).",
    ),
    Metric(
        "finetune_checkpoints",
        "gauge",
        (NS, JOB),
        "Committed checkpoints currently retained on the job's volume.",
    ),
    Metric(
        "finetune_checkpoints_saved_total",
        "counter",
        (NS, JOB),
        "Checkpoints committed since the job was created.",
    ),
    Metric(
        "finetune_restarts_total",
        "counter",
        (NS, JOB, "cause"),
        "Trainer pods replaced, by cause (preemption, hostOOM, cudaOOM, error, infrastructure).",
    ),
    Metric(
        "finetune_restart_streak",
        "gauge",
        (NS, JOB),
        "Trainer pod ends in a row for the same reason without training progress (a restart storm).",
    ),
    # Per namespace, not per job (finetune_operator.metrics): the alerts and panels that read it aggregate
    # `by (namespace, finetunejob)`, which also works if it becomes a per-job 0/1 state set.
    Metric("finetune_jobs", "gauge", (NS, "phase"), "FineTuneJobs by phase."),
    Metric("finetune_training_step", "gauge", (NS, JOB), "The last optimizer step the trainer reported."),
    Metric(
        "finetune_lost_steps_total",
        "counter",
        (NS, JOB),
        "Optimizer steps trained but not covered by a committed checkpoint when a pod ended.",
    ),
    Metric(
        "finetune_emergency_saves_late_total",
        "counter",
        (NS, JOB),
        "Emergency checkpoints (after SIGTERM) not committed before the trainer's save deadline.",
    ),
    Metric(
        "finetune_recovery_duration_seconds",
        "histogram",
        (NS, JOB),
        "Seconds from a trainer pod's end to its replacement training again.",
    ),
    Metric("finetune_checkpoint_size_bytes", "gauge", (NS, JOB), "Bytes of the newest committed checkpoint."),
)

#: Exposed by the trainer pod itself on its `metrics` port (9400), without labels: the scrape adds `namespace`
#: (the pod's) and `finetunejob` (from the pod's finetune.dev/job label; the PodMonitor's relabelings).
_T = (NS, JOB)
TRAINER_METRICS: tuple[Metric, ...] = (
    Metric("finetune_trainer_step", "gauge", _T, "Last completed optimizer step.", "trainer"),
    Metric("finetune_trainer_total_steps", "gauge", _T, "Optimizer steps of the whole run.", "trainer"),
    Metric("finetune_trainer_loss", "gauge", _T, "Last logged training loss.", "trainer"),
    Metric(
        "finetune_trainer_step_duration_seconds",
        "histogram",
        _T,
        "Wall time of one optimizer step (saves excluded).",
        "trainer",
    ),
    Metric(
        "finetune_trainer_tokens_per_second",
        "gauge",
        _T,
        "Input tokens per second over the last step.",
        "trainer",
    ),
    Metric(
        "finetune_trainer_checkpoint_save_duration_seconds",
        "histogram",
        _T,
        "Checkpoint write + verify + fsync + commit, as the trainer times it.",
        "trainer",
    ),
    Metric(
        "finetune_trainer_last_save_duration_seconds",
        "gauge",
        _T,
        "Duration of the last committed save.",
        "trainer",
    ),
    Metric(
        "finetune_trainer_last_checkpoint_size_bytes",
        "gauge",
        _T,
        "Bytes of the last committed checkpoint.",
        "trainer",
    ),
    Metric(
        "finetune_trainer_last_checkpoint_step",
        "gauge",
        _T,
        "Step of the newest committed checkpoint.",
        "trainer",
    ),
    Metric(
        "finetune_trainer_checkpoints", "gauge", _T, "Committed checkpoints currently retained.", "trainer"
    ),
    Metric(
        "finetune_trainer_checkpoints_committed_total",
        "counter",
        _T,
        "Checkpoints committed by this trainer process.",
        "trainer",
    ),
)

ALL_METRICS: tuple[Metric, ...] = OPERATOR_METRICS + TRAINER_METRICS
BY_NAME: dict[str, Metric] = {m.name: m for m in ALL_METRICS}

#: Every sample name that may appear in a query, mapped to its metric.
SERIES: dict[str, Metric] = {s: m for m in ALL_METRICS for s in m.series_names()}
