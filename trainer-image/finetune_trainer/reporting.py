"""Progress to the job's status (Kubernetes API) and to Prometheus; neither may ever block or stop training.

`StatusReporter` keeps one pending merge patch: `update()` merges into it and returns at once (a one-slot
queue that coalesces), a daemon thread sends it with short timeouts, and failures are logged (rate-limited)
and retried with the newest values. The pod's ServiceAccount may only get/patch `finetunejobs/status` of its
own job.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from finetune_api.models import GROUP, PLURAL, VERSION
from finetune_api.trainer_config import JobRef

from finetune_trainer.logs import log

PatchFn = Callable[[dict[str, Any]], None]


def kubernetes_patcher(job: JobRef, timeout: tuple[float, float] = (2.0, 5.0)) -> PatchFn:
    """A function sending a JSON merge patch to the job's status subresource with in-cluster credentials."""
    from kubernetes import client, config

    config.load_incluster_config()
    api = client.CustomObjectsApi()

    def patch(body: dict[str, Any]) -> None:
        api.patch_namespaced_custom_object_status(
            GROUP,
            VERSION,
            job.namespace,
            PLURAL,
            job.name,
            {"status": body},
            _request_timeout=timeout,
            _content_type="application/merge-patch+json",
        )

    return patch


class StatusReporter:
    def __init__(self, patch: PatchFn | None, min_interval: float = 1.0, log_every: float = 60.0):
        self._patch = patch
        self._min_interval = min_interval
        self._log_every = log_every
        self._pending: dict[str, Any] = {}
        self._cond = threading.Condition()
        self._closed = False
        self._busy = False
        self._last_error_log = 0.0
        self.sent = 0
        self.failed = 0
        self._thread: threading.Thread | None = None
        if patch is not None:
            self._thread = threading.Thread(target=self._run, name="status-reporter", daemon=True)
            self._thread.start()

    @property
    def enabled(self) -> bool:
        return self._patch is not None

    def update(self, fields: dict[str, Any]) -> None:
        """Merge `fields` into the pending patch; never blocks on the network."""
        if self._patch is None:
            return
        with self._cond:
            self._pending.update(fields)
            self._cond.notify()

    def _run(self) -> None:
        assert self._patch is not None
        last_sent = 0.0
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if not self._pending and self._closed:
                    return
                wait = self._min_interval - (time.monotonic() - last_sent)
                if wait > 0 and not self._closed:
                    self._cond.wait(wait)  # coalesce what arrives meanwhile
                body, self._pending = self._pending, {}
                self._busy = True
            try:
                self._patch(body)
                self.sent += 1
            except Exception as error:  # a report must never stop training
                self.failed += 1
                with self._cond:
                    self._pending = {**body, **self._pending}  # keep the newest values, retry later
                now = time.monotonic()
                if now - self._last_error_log > self._log_every or self.failed == 1:
                    self._last_error_log = now
                    log(
                        "status_report_failed",
                        level="warning",
                        error=f"{type(error).__name__}: {error}"[:300],
                    )
                if self._closed:
                    with self._cond:
                        self._busy = False
                    return
                time.sleep(min(5.0, self._min_interval * 2))
            finally:
                last_sent = time.monotonic()
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def close(self, timeout: float = 3.0) -> None:
        """Try to flush the last patch for up to `timeout` seconds, then give up."""
        if self._thread is None:
            return
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout)


class TrainerMetrics:
    """prometheus-client metrics on their own registry, served on `port` when > 0 (main process only)."""

    def __init__(self, port: int = 0):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

        self.registry = CollectorRegistry()
        r = self.registry
        self.step = Gauge("finetune_trainer_step", "Last completed optimizer step.", registry=r)
        self.total_steps = Gauge(
            "finetune_trainer_total_steps", "Optimizer steps of the whole run.", registry=r
        )
        self.loss = Gauge("finetune_trainer_loss", "Last logged training loss.", registry=r)
        self.step_seconds = Histogram(
            "finetune_trainer_step_duration_seconds",
            "Wall time of one optimizer step (saves excluded).",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
            registry=r,
        )
        self.tokens_per_second = Gauge(
            "finetune_trainer_tokens_per_second", "Input tokens per second over the last step.", registry=r
        )
        self.save_seconds = Histogram(
            "finetune_trainer_checkpoint_save_duration_seconds",
            "Checkpoint write + verify + fsync + commit.",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
            registry=r,
        )
        self.last_save_seconds = Gauge(
            "finetune_trainer_last_save_duration_seconds", "Duration of the last committed save.", registry=r
        )
        self.last_save_bytes = Gauge(
            "finetune_trainer_last_checkpoint_size_bytes",
            "Bytes of the last committed checkpoint.",
            registry=r,
        )
        self.last_checkpoint_step = Gauge(
            "finetune_trainer_last_checkpoint_step", "Step of the newest committed checkpoint.", registry=r
        )
        self.checkpoints = Gauge(
            "finetune_trainer_checkpoints", "Committed checkpoints currently retained.", registry=r
        )
        self.commits = Counter(
            "finetune_trainer_checkpoints_committed", "Checkpoints committed by this process.", registry=r
        )
        self.port = port
        if port > 0:
            start_http_server(port, registry=r)
            log("metrics_serving", port=port)
