"""The operator's Prometheus metrics (design.md §3 names), computed from job status and from decisions.

Labels: `namespace`, `finetunejob` (not `job`: Prometheus uses that for the scrape target), plus `cause` or
`phase`; nothing unbounded. Values that live in the job's status (restarts by cause, lost steps, training
step, retained checkpoints, checkpoint size, phase) are exported by a collector straight from the newest
status seen, so they are exact, survive an operator restart without double counting, and disappear with the
job. Events that only the operator witnesses (each committed save's latency, recovery time) are
histograms fed once per new observation; a restarted operator starts from the status it finds and does not
re-observe the last save.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from finetune_api.models import RESTART_CAUSES
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

PHASES = ("Pending", "Running", "Restarting", "Succeeded", "Failed", "Suspended")
JOB_LABELS = ("namespace", "finetunejob")

#: LoRA adapters save in milliseconds, full 70B models in minutes: 5 ms … 30 min.
SAVE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
#: Pod end → trainer training again: ~1 s (operator) + start-up (seconds to minutes for big models).
RECOVERY_BUCKETS = (1, 2, 5, 10, 15, 20, 30, 45, 60, 90, 120, 300, 600, 1200, 1800, 3600)


@dataclass
class _Snapshot:
    phase: str | None
    step: int | None
    checkpoints: int | None
    checkpoint_bytes: int | None
    lost_steps: int
    restarts: dict[str, int]
    streak: int  # status.streak.count: pod ends in a row for one reason without training progress
    last_save: tuple[Any, Any] | None  # (step, time) of the newest committed checkpoint seen
    late_emergency_saves: int = 0  # status.lateEmergencySaves


class OperatorMetrics(Collector):
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry if registry is not None else CollectorRegistry()
        self._lock = threading.Lock()
        self._jobs: dict[tuple[str, str], _Snapshot] = {}
        self.save_duration = Histogram(
            "finetune_checkpoint_save_duration_seconds",
            "Time to write and commit one checkpoint, as reported by the trainer.",
            JOB_LABELS,
            buckets=SAVE_BUCKETS,
            registry=self.registry,
        )
        self.saved = Counter(
            "finetune_checkpoints_saved",
            "Checkpoints committed (seen by this operator process).",
            JOB_LABELS,
            registry=self.registry,
        )
        self.recovery = Histogram(
            "finetune_recovery_duration_seconds",
            "From the end of a trainer pod to its replacement reporting training progress again.",
            JOB_LABELS,
            buckets=RECOVERY_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(self)

    # --- feeding ----------------------------------------------------------------------------------
    def observe_job(self, namespace: str, name: str, status: dict[str, Any] | None) -> None:
        """Record the newest status of a job (called on every watch event of the job)."""
        status = status or {}
        ckpt = status.get("lastCheckpoint") or {}
        save = (ckpt.get("step"), ckpt.get("time")) if ckpt.get("step") is not None else None
        restarts = status.get("restarts") or {}
        snap = _Snapshot(
            phase=status.get("phase"),
            step=status.get("step"),
            checkpoints=status.get("checkpoints"),
            checkpoint_bytes=ckpt.get("bytes"),
            lost_steps=int(status.get("lostSteps") or 0),
            restarts={cause: int(restarts.get(cause) or 0) for cause in RESTART_CAUSES},
            streak=int((status.get("streak") or {}).get("count") or 0),
            last_save=save,
            late_emergency_saves=int(status.get("lateEmergencySaves") or 0),
        )
        key = (namespace, name)
        with self._lock:
            previous = self._jobs.get(key)
            self._jobs[key] = snap
        # A save is new when we saw this job before with another newest checkpoint: the first sight after an
        # operator (re)start only sets the baseline.
        if previous is not None and save is not None and save != previous.last_save:
            self.saved.labels(namespace, name).inc()
            seconds = ckpt.get("saveSeconds")
            if isinstance(seconds, int | float) and seconds >= 0:
                self.save_duration.labels(namespace, name).observe(float(seconds))

    def observe_recovery(self, namespace: str, name: str, seconds: float) -> None:
        self.recovery.labels(namespace, name).observe(seconds)

    def forget_job(self, namespace: str, name: str) -> None:
        """The job is deleted: drop every series that names it."""
        with self._lock:
            self._jobs.pop((namespace, name), None)
        for metric in (self.save_duration, self.saved, self.recovery):
            with contextlib.suppress(KeyError):
                metric.remove(namespace, name)

    def known_jobs(self) -> set[tuple[str, str]]:
        with self._lock:
            return set(self._jobs)

    # --- exporting ----------------------------------------------------------------------------------
    def collect(self) -> Iterator[Any]:
        with self._lock:
            jobs = dict(self._jobs)
        restarts = CounterMetricFamily(
            "finetune_restarts",
            "Trainer pod restarts by cause (from status.restarts).",
            labels=[*JOB_LABELS, "cause"],
        )
        lost = CounterMetricFamily(
            "finetune_lost_steps",
            "Optimizer steps trained after the last committed checkpoint when a pod ended (redone).",
            labels=list(JOB_LABELS),
        )
        late_saves = CounterMetricFamily(
            "finetune_emergency_saves_late",
            "Emergency checkpoints (after SIGTERM) not committed before the trainer's save deadline "
            "(from status.lateEmergencySaves): the job resumed from an older checkpoint.",
            labels=list(JOB_LABELS),
        )
        step = GaugeMetricFamily(
            "finetune_training_step", "Last optimizer step reported.", labels=list(JOB_LABELS)
        )
        checkpoints = GaugeMetricFamily(
            "finetune_checkpoints",
            "Committed checkpoints currently retained on the volume.",
            labels=list(JOB_LABELS),
        )
        size = GaugeMetricFamily(
            "finetune_checkpoint_size_bytes",
            "Size of the newest committed checkpoint.",
            labels=list(JOB_LABELS),
        )
        streak = GaugeMetricFamily(
            "finetune_restart_streak",
            "Trainer pod ends in a row for the same reason without training progress (0 = none); "
            "not exported for finished jobs.",
            labels=list(JOB_LABELS),
        )
        phases = GaugeMetricFamily("finetune_jobs", "FineTuneJobs by phase.", labels=["namespace", "phase"])
        per_namespace: dict[str, dict[str, int]] = {}
        for (namespace, name), snap in sorted(jobs.items()):
            for cause in RESTART_CAUSES:
                restarts.add_metric([namespace, name, cause], snap.restarts.get(cause, 0))
            lost.add_metric([namespace, name], snap.lost_steps)
            late_saves.add_metric([namespace, name], snap.late_emergency_saves)
            if snap.phase not in ("Succeeded", "Failed"):  # a finished job's last streak is not a storm
                streak.add_metric([namespace, name], snap.streak)
            if snap.step is not None:
                step.add_metric([namespace, name], snap.step)
            if snap.checkpoints is not None:
                checkpoints.add_metric([namespace, name], snap.checkpoints)
            if snap.checkpoint_bytes is not None:
                size.add_metric([namespace, name], snap.checkpoint_bytes)
            counts = per_namespace.setdefault(namespace, dict.fromkeys(PHASES, 0))
            counts[snap.phase or "Pending"] = counts.get(snap.phase or "Pending", 0) + 1
        for namespace, counts in sorted(per_namespace.items()):
            for phase, count in counts.items():
                phases.add_metric([namespace, phase], count)
        yield from (restarts, lost, late_saves, step, checkpoints, size, streak, phases)

    def describe(self) -> Iterator[Any]:
        return iter(())  # dynamic: collected on every scrape
