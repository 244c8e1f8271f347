"""The operator's Prometheus metrics, computed from job status and from decisions.

Names, help, labels and buckets come from `finetune_api.metric_catalog` (one list for the operator, the
trainer, the dashboard and the alerts).

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

from finetune_api import metric_catalog as cat
from finetune_api.models import RESTART_CAUSES, FineTuneJobStatus
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

PHASES = cat.LABEL_VALUES["phase"]


def _histogram(metric: cat.Metric, registry: CollectorRegistry) -> Histogram:
    return Histogram(metric.name, metric.help, metric.labels, buckets=metric.buckets, registry=registry)


def _family(kind: Any, metric: cat.Metric) -> Any:
    """A Counter/GaugeMetricFamily for one scrape (prometheus_client strips a counter's `_total`)."""
    return kind(metric.name, metric.help, labels=list(metric.labels))


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
        self.save_duration = _histogram(cat.CHECKPOINT_SAVE_DURATION, self.registry)
        self.saved = Counter(
            cat.CHECKPOINTS_SAVED.name,
            cat.CHECKPOINTS_SAVED.help,
            cat.CHECKPOINTS_SAVED.labels,
            registry=self.registry,
        )
        self.recovery = _histogram(cat.RECOVERY_DURATION, self.registry)
        self.registry.register(self)

    # --- feeding ----------------------------------------------------------------------------------
    def observe_job(
        self, namespace: str, name: str, status: FineTuneJobStatus | dict[str, Any] | None
    ) -> None:
        """Record the newest status of a job (called on every watch event of the job)."""
        if not isinstance(status, FineTuneJobStatus):
            status = FineTuneJobStatus.model_validate(status or {})
        ckpt = status.last_checkpoint
        save = (ckpt.step, ckpt.time) if ckpt is not None else None
        counts = status.restarts.model_dump(by_alias=True)  # keyed by the causes (the wire names)
        snap = _Snapshot(
            phase=status.phase,
            step=status.step,
            checkpoints=status.checkpoints,
            checkpoint_bytes=ckpt.bytes if ckpt is not None else None,
            lost_steps=status.lost_steps,
            restarts={cause: int(counts[cause]) for cause in RESTART_CAUSES},
            streak=status.streak.count if status.streak is not None else 0,
            last_save=save,
            late_emergency_saves=status.late_emergency_saves,
        )
        key = (namespace, name)
        with self._lock:
            previous = self._jobs.get(key)
            self._jobs[key] = snap
        # A save is new when we saw this job before with another newest checkpoint: the first sight after an
        # operator (re)start only sets the baseline.
        if previous is not None and save is not None and save != previous.last_save:
            self.saved.labels(namespace, name).inc()
            seconds = ckpt.save_seconds if ckpt is not None else None
            if seconds is not None and seconds >= 0:
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
        restarts = _family(CounterMetricFamily, cat.RESTARTS)
        lost = _family(CounterMetricFamily, cat.LOST_STEPS)
        late_saves = _family(CounterMetricFamily, cat.EMERGENCY_SAVES_LATE)
        step = _family(GaugeMetricFamily, cat.TRAINING_STEP)
        checkpoints = _family(GaugeMetricFamily, cat.CHECKPOINTS)
        size = _family(GaugeMetricFamily, cat.CHECKPOINT_SIZE)
        streak = _family(GaugeMetricFamily, cat.RESTART_STREAK)
        phases = _family(GaugeMetricFamily, cat.JOBS)
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
