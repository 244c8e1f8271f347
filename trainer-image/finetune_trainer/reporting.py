"""Progress to the job's status (Kubernetes API) and to Prometheus; neither may ever block or stop training.

`StatusReporter` keeps one pending merge patch: `update()` merges into it and returns at once (a one-slot
queue that coalesces), a daemon thread sends it with short timeouts, and failures are logged (rate-limited)
and retried with the newest values. The pod's ServiceAccount may only get/patch `finetunejobs/status` of its
own job.
"""

from __future__ import annotations

import threading
import time
from collections import deque
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


class ThroughputMeter:
    """Optimizer steps (and input tokens) per second over the last `window_seconds` of wall time.

    Wall time between step ends, so checkpoint saves, evaluation and logging count: the remaining time it
    predicts is what the user will actually wait. A fresh meter per process: after a restart the estimate
    starts again from the resumed step (loading and the first step are short next to the window).
    """

    def __init__(self, window_seconds: float = 120.0):
        self.window_seconds = window_seconds
        self._samples: deque[tuple[float, int, int | None]] = deque()

    def add(self, now: float, step: int, tokens: int | None = None) -> None:
        self._samples.append((now, step, tokens))
        # keep one sample at or beyond the window's start, so the span covers the whole window
        while len(self._samples) > 2 and self._samples[1][0] <= now - self.window_seconds:
            self._samples.popleft()

    def _span(self) -> tuple[float, int, int | None] | None:
        if len(self._samples) < 2:
            return None
        (t0, s0, k0), (t1, s1, k1) = self._samples[0], self._samples[-1]
        if t1 <= t0 or s1 <= s0:
            return None
        tokens = k1 - k0 if k0 is not None and k1 is not None and k1 > k0 else None
        return t1 - t0, s1 - s0, tokens

    def steps_per_second(self) -> float | None:
        span = self._span()
        return span[1] / span[0] if span else None

    def tokens_per_second(self) -> float | None:
        span = self._span()
        return span[2] / span[0] if span and span[2] is not None else None

    def remaining_seconds(self, step: int, total_steps: int | None) -> float | None:
        rate = self.steps_per_second()
        if rate is None or not total_steps or total_steps <= 0:
            return None
        return max(0, total_steps - step) / rate

    def status(self, step: int, total_steps: int | None) -> dict[str, Any]:
        """The job status fields: stepsPerSecond, tokensPerSecond, estimatedRemainingSeconds, remaining."""
        fields: dict[str, Any] = {}
        rate = self.steps_per_second()
        if rate is None:
            return fields
        fields["stepsPerSecond"] = float(f"{rate:.4g}")
        tokens = self.tokens_per_second()
        if tokens is not None:
            fields["tokensPerSecond"] = round(tokens, 1)
        remaining = self.remaining_seconds(step, total_steps)
        if remaining is not None:
            fields["estimatedRemainingSeconds"] = round(remaining)
            fields["remaining"] = format_duration(remaining)
        return fields


def format_duration(seconds: float) -> str:
    """Short and human, for `kubectl get`: 45s, 12m30s, 3h05m, 2d04h."""
    total = max(0, round(seconds))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


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
