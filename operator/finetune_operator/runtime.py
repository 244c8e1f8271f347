"""The state of one operator process: its settings, API clients, metrics, per-job wake-ups, the watch
cache, the bound on concurrent API passes, the threads a pass reads and posts Events with, and how a pass
reaches the cache on the event loop's thread (and `response_json`, how a raw client response is read).

main.py creates one `Runtime` and hands it to kopf as the operator's memo (`memo.runtime`). kopf gives each
handler that memo (for a job's handlers a shallow copy, so they all share this one Runtime); the handlers
pass it on to what they call. No module global: a test or a second operator in one process makes its own.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import kopf
from kubernetes import client, config

from finetune_operator import builders
from finetune_operator.cache import WatchCache
from finetune_operator.metrics import OperatorMetrics

T = TypeVar("T")
#: A pass waits at most this long for the event loop's thread (it is never busy that long unless stopping).
ON_LOOP_TIMEOUT_SECONDS = 30.0
_trace = logging.getLogger("finetune_operator.trace")


@dataclass
class OperatorConfig:
    node_lost_seconds: float = 120.0
    unreachable_toleration_seconds: int = builders.DEFAULT_UNREACHABLE_TOLERATION_SECONDS
    instance: str = field(default_factory=socket.gethostname)
    #: The namespaces (patterns) served; empty: the whole cluster. For the orphan sweep.
    namespaces: list[str] = field(default_factory=list)
    #: How often to look for trainer pods left on our finalizer by a job that is gone (0 = never).
    orphan_sweep_seconds: float = 60.0
    #: This often, one relist of the jobs, trainer pods, nodes and claims drops from the watch cache what a
    #: watch missed the deletion of (kopf's relist after a watch error does not report those).
    resync_seconds: float = 300.0
    #: At most this many reconcile passes talk to the API at once (a burst of pod ends is processed this
    #: many at a time; one slow call holds one slot, not the others).
    #: 64: a burst of 100 preemptions on the local cluster ends sooner than with 16 (bench/scale/README.md).
    max_concurrent_passes: int = 64
    #: Events are posted by a few threads of their own, off the pass (an Event is never what the next step
    #: waits for; in a burst each one held a pass slot for a round trip). False: posted in the pass (tests).
    background_events: bool = True


@dataclass
class Runtime:
    """Process-wide state: the API clients, the settings, the metrics, the per-job wake-up events."""

    config: OperatorConfig = field(default_factory=OperatorConfig)
    metrics: OperatorMetrics = field(default_factory=OperatorMetrics)
    wakes: dict[tuple[str, str], asyncio.Event] = field(default_factory=dict)
    fingerprints: dict[tuple[str, str], Any] = field(default_factory=dict)
    cache: WatchCache = field(default_factory=WatchCache)
    woken_at: dict[tuple[str, str], float] = field(default_factory=dict)  # monotonic, for the trace
    reread: set[tuple[str, str]] = field(default_factory=set)  # jobs whose next look must read the API
    terminating: set[str] = field(default_factory=set)  # namespaces being deleted (kopf stopped watching)
    api: client.ApiClient | None = None
    #: The event loop the kopf handlers run on (set by the first pass): the watch cache belongs to it.
    loop: asyncio.AbstractEventLoop | None = None
    _passes: asyncio.Semaphore | None = None
    _executor: ThreadPoolExecutor | None = None
    _reads: ThreadPoolExecutor | None = None
    _events: ThreadPoolExecutor | None = None

    async def bounded(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking API pass in a thread, at most `max_concurrent_passes` at once (the rest wait)."""
        if self._passes is None or self._executor is None:
            self.loop = asyncio.get_running_loop()
            bound = max(1, self.config.max_concurrent_passes)
            self._passes = asyncio.Semaphore(bound)
            self._executor = ThreadPoolExecutor(max_workers=bound, thread_name_prefix="reconcile")
        queued = time.monotonic()
        async with self._passes:
            if _trace.isEnabledFor(logging.DEBUG) and time.monotonic() - queued > 0.01:
                _trace.debug("waited %.3f s for a pass slot", time.monotonic() - queued)
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def on_loop(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn` on the event loop's thread and return its result: how a pass (in a worker thread)
        reads or changes the watch cache, which the kopf handlers change on that thread. Calls are run in
        the order they were made. Without a loop (unit tests), or on its thread: at once."""
        loop = self.loop
        if loop is None or _on_thread_of(loop):
            return fn(*args)

        async def call() -> T:
            return fn(*args)

        return asyncio.run_coroutine_threadsafe(call(), loop).result(timeout=ON_LOOP_TIMEOUT_SECONDS)

    def observe(self, fn: Callable[..., Any], *args: Any) -> None:
        """Like on_loop, without waiting: a pass records what its own write returned into the cache."""
        loop = self.loop
        if loop is None or _on_thread_of(loop):
            fn(*args)
        else:
            loop.call_soon_threadsafe(fn, *args)

    def read_concurrently(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        """Start an API read beside the pass's own (a pass's independent reads take one round trip)."""
        if self._reads is None:
            self._reads = ThreadPoolExecutor(
                max_workers=max(2, self.config.max_concurrent_passes * 2), thread_name_prefix="read"
            )
        return self._reads.submit(fn, *args)

    def post_event(self, fn: Callable[..., Any], *args: Any) -> None:
        """Post an Event (`fn` logs its own failure) off the pass, or in it (config.background_events)."""
        if not self.config.background_events:
            fn(*args)
            return
        if self._events is None:
            self._events = ThreadPoolExecutor(max_workers=4, thread_name_prefix="event")
        self._events.submit(fn, *args)

    def apis(self) -> tuple[Any, Any, Any]:  # the client's stubs reject plain-dict bodies
        if self.api is None:
            try:
                config.load_incluster_config()
            except config.ConfigException:
                config.load_kube_config()
            settings = client.Configuration.get_default_copy()
            # One connection per concurrent pass, plus the sweeps: a smaller pool opens (and drops) a fresh
            # connection per call beyond it in a burst.
            wanted = self.config.max_concurrent_passes * 3 + 8  # a pass's concurrent reads, the Events
            if (settings.connection_pool_maxsize or 0) < wanted:
                settings.connection_pool_maxsize = wanted
            self.api = client.ApiClient(settings)
        return (
            client.CoreV1Api(self.api),
            client.CustomObjectsApi(self.api),
            client.RbacAuthorizationV1Api(self.api),
        )


def _on_thread_of(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


def runtime_of(memo: kopf.Memo) -> Runtime:
    """The Runtime main.py put into kopf's memo."""
    runtime = memo.get("runtime")
    if not isinstance(runtime, Runtime):
        raise RuntimeError("no Runtime in kopf's memo: start the operator with finetune-operator (main.py)")
    return runtime


def response_json(response: Any) -> dict[str, Any]:
    """The JSON body of a client call made with `_preload_content=False` (a dict as the API sent it)."""
    return dict(json.loads(response.data))
