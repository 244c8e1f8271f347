"""Progress to the job's status (Kubernetes API) and to Prometheus; neither may ever block or stop training.

`StatusReporter` keeps one pending merge patch: `update()` merges into it and returns at once (a one-slot
queue that coalesces), a daemon thread sends it with short timeouts, and failures are logged (rate-limited)
and retried with the newest values — except a patch the apiserver rejects as invalid (400/422): resending it
would fail forever and, merged into every later patch, freeze the status, so it is dropped. Non-finite numbers
(a NaN loss) are sent as null: JSON has no NaN. The pod's ServiceAccount may only get/patch
`finetunejobs/status` of its own job, and create Events (`event()`, e.g. "loss is NaN at step N").

Over 400 lines: the trainer's three outputs to the cluster (status patches, Events, metrics) and the
rate and error handling they share.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from finetune_api import metric_catalog as cat
from finetune_api.models import GROUP, PLURAL, VERSION
from finetune_api.status import TrainerStatus
from finetune_api.trainer_config import JobRef

from finetune_trainer.logs import log

PatchFn = Callable[[dict[str, Any]], None]
EventFn = Callable[[str, str, str], None]  # (type, reason, message)

#: HTTP statuses meaning "this body is invalid": sending it again can never succeed.
INVALID_PATCH_STATUSES = (400, 422)


def finite_or_null(value: Any) -> Any:
    """NaN/Inf → None (JSON null), recursively: the apiserver rejects a body containing NaN (400)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: finite_or_null(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [finite_or_null(item) for item in value]
    return value


def _api_client(api_client: Any | None) -> Any:
    if api_client is not None:
        return api_client
    from kubernetes import client, config

    config.load_incluster_config()
    return client.ApiClient()


def _check_in_cluster() -> None:
    """The first thing load_incluster_config checks, without importing the kubernetes client: outside a pod
    status reporting is off at once, and inside one the client is imported later, in the reporter thread."""
    if not os.environ.get("KUBERNETES_SERVICE_HOST") or not os.environ.get("KUBERNETES_SERVICE_PORT"):
        raise RuntimeError("not in a cluster: KUBERNETES_SERVICE_HOST/KUBERNETES_SERVICE_PORT are not set")


class _OnFirstUse:
    """Builds a value on first use and keeps it. The kubernetes client takes about a second to import: built
    by the first patch (in the status-reporter thread, while training runs) it is off the start-up path."""

    def __init__(self, build: Callable[[], Any]):
        self._build = build
        self._value: Any = None
        self._lock = threading.Lock()

    def __call__(self) -> Any:
        with self._lock:
            if self._value is None:
                self._value = self._build()
            return self._value


def kubernetes_patcher(
    job: JobRef, timeout: tuple[float, float] = (2.0, 5.0), api_client: Any | None = None
) -> PatchFn:
    """A function sending a JSON merge patch to the job's status subresource (in-cluster credentials unless
    `api_client` is given; the client is built by the first patch)."""
    if api_client is None:
        _check_in_cluster()

    def build() -> Any:
        from kubernetes import client

        return client.CustomObjectsApi(_api_client(api_client))

    api = _OnFirstUse(build)

    def patch(body: dict[str, Any]) -> None:
        api().patch_namespaced_custom_object_status(
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


def kubernetes_event_poster(
    job: JobRef, timeout: tuple[float, float] = (2.0, 5.0), api_client: Any | None = None
) -> EventFn:
    """A function posting a core/v1 Event about the job (the Role allows `create events`); the client is built
    by the first Event."""
    if api_client is None:
        _check_in_cluster()

    def build() -> Any:
        from kubernetes import client

        shared = _api_client(api_client)
        return client.CoreV1Api(shared), client.CustomObjectsApi(shared)

    apis = _OnFirstUse(build)
    uid: list[str] = []

    def post(type_: str, reason: str, message: str) -> None:
        from kubernetes import client

        core, custom = apis()
        if not uid:  # the Event names its object by uid too; `get` on our own job's status is allowed
            obj: Any = custom.get_namespaced_custom_object_status(
                GROUP, VERSION, job.namespace, PLURAL, job.name, _request_timeout=timeout
            )
            uid.append(obj["metadata"]["uid"])
        now = datetime.now(UTC)
        core.create_namespaced_event(
            job.namespace,
            client.CoreV1Event(
                metadata=client.V1ObjectMeta(generate_name=f"{job.name}.", namespace=job.namespace),
                involved_object=client.V1ObjectReference(
                    api_version=f"{GROUP}/{VERSION}",
                    kind="FineTuneJob",
                    name=job.name,
                    namespace=job.namespace,
                    uid=uid[0],
                ),
                reason=reason,
                message=message[:1024],
                type=type_,
                first_timestamp=now,
                last_timestamp=now,
                count=1,
                source=client.V1EventSource(component="finetune-trainer"),
                reporting_component="finetune-trainer",
                reporting_instance=os.environ.get("HOSTNAME", "trainer"),
            ),
            _request_timeout=timeout,
        )

    return post


def _rejected_as_invalid(error: BaseException) -> bool:
    return getattr(error, "status", None) in INVALID_PATCH_STATUSES


class StatusReporter:
    def __init__(
        self,
        patch: PatchFn | None,
        min_interval: float = 1.0,
        log_every: float = 60.0,
        post_event: EventFn | None = None,
    ):
        self._patch = patch
        self._post_event = post_event
        self._events: list[tuple[str, str, str]] = []
        self._min_interval = min_interval
        self._log_every = log_every
        self._pending: dict[str, Any] = {}
        self._cond = threading.Condition()
        self._closed = False
        self._busy = False
        self._last_error_log = 0.0
        self.sent = 0
        self.failed = 0
        self.rejected = 0
        self.events_sent = 0
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
            self._pending.update(finite_or_null(fields))
            self._cond.notify()

    def event(self, type_: str, reason: str, message: str) -> None:
        """Queue a Kubernetes Event about the job; sent by the reporter thread, never blocks."""
        if self._patch is None or self._post_event is None:
            return
        with self._cond:
            self._events.append((type_, reason, message))
            self._cond.notify()

    def _send_events(self) -> None:
        assert self._post_event is not None
        with self._cond:
            events, self._events = self._events, []
        for type_, reason, message in events:
            try:
                self._post_event(type_, reason, message)
                self.events_sent += 1
            except Exception as error:  # an Event is best effort: log it, never retry forever
                log(
                    "event_post_failed",
                    level="warning",
                    reason=reason,
                    error=f"{type(error).__name__}: {error}"[:300],
                )

    def _run(self) -> None:
        assert self._patch is not None
        last_sent = 0.0
        while True:
            with self._cond:
                while not self._pending and not self._events and not self._closed:
                    self._cond.wait()
                has_events = bool(self._events)
                if not self._pending and not has_events and self._closed:
                    return
            if has_events:
                self._send_events()
            with self._cond:
                if not self._pending:
                    continue
                wait = self._min_interval - (time.monotonic() - last_sent)
                if wait > 0 and not self._closed:
                    self._cond.wait(wait)  # coalesce what arrives meanwhile
                body, self._pending = self._pending, {}
                self._busy = True
            try:
                self._patch(body)
                self.sent += 1
            except Exception as error:  # a report must never stop training
                if _rejected_as_invalid(error):
                    # Resending (or merging into later patches) can only fail again: drop this body.
                    self.rejected += 1
                    log(
                        "status_patch_rejected",
                        level="warning",
                        fields=sorted(body),
                        error=f"{type(error).__name__}: {error}"[:300],
                    )
                    continue
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
        """The job status patch: stepsPerSecond, tokensPerSecond, estimatedRemainingSeconds, remaining."""
        fields: dict[str, Any] = {}
        rate = self.steps_per_second()
        if rate is None:
            return fields
        fields["steps_per_second"] = float(f"{rate:.4g}")
        tokens = self.tokens_per_second()
        if tokens is not None:
            fields["tokens_per_second"] = round(tokens, 1)
        remaining = self.remaining_seconds(step, total_steps)
        if remaining is not None:
            fields["estimated_remaining_seconds"] = round(remaining)
            fields["remaining"] = format_duration(remaining)
        return TrainerStatus.patch(**fields)


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
    """prometheus-client metrics on their own registry, served on `port` when > 0 (main process only).

    Names, help and buckets come from `finetune_api.metric_catalog`; the trainer sets no labels (the scrape
    adds the pod's namespace and job)."""

    def __init__(self, port: int = 0):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

        self.registry = CollectorRegistry()
        r = self.registry

        def gauge(m: cat.Metric) -> Gauge:
            return Gauge(m.name, m.help, registry=r)

        def histogram(m: cat.Metric) -> Histogram:
            return Histogram(m.name, m.help, buckets=m.buckets, registry=r)

        self.step = gauge(cat.TRAINER_STEP)
        self.total_steps = gauge(cat.TRAINER_TOTAL_STEPS)
        self.loss = gauge(cat.TRAINER_LOSS)
        self.step_seconds = histogram(cat.TRAINER_STEP_DURATION)
        self.tokens_per_second = gauge(cat.TRAINER_TOKENS_PER_SECOND)
        self.save_seconds = histogram(cat.TRAINER_CHECKPOINT_SAVE_DURATION)
        self.last_save_seconds = gauge(cat.TRAINER_LAST_SAVE_DURATION)
        self.last_save_bytes = gauge(cat.TRAINER_LAST_CHECKPOINT_SIZE)
        self.last_checkpoint_step = gauge(cat.TRAINER_LAST_CHECKPOINT_STEP)
        self.checkpoints = gauge(cat.TRAINER_CHECKPOINTS)
        committed = cat.TRAINER_CHECKPOINTS_COMMITTED
        self.commits = Counter(committed.name, committed.help, registry=r)
        self.upload_seconds = histogram(cat.TRAINER_UPLOAD_DURATION)
        self.upload_bytes = Counter(
            cat.TRAINER_UPLOADED_BYTES.name, cat.TRAINER_UPLOADED_BYTES.help, registry=r
        )
        failures = cat.TRAINER_UPLOAD_FAILURES
        self.upload_failures = Counter(failures.name, failures.help, registry=r)
        self.durable_step = gauge(cat.TRAINER_DURABLE_STEP)
        self.port = port
        if port > 0:
            start_http_server(port, registry=r)
            log("metrics_serving", port=port)
