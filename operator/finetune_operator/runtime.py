"""The state of one operator process: its settings, API clients, metrics, per-job wake-ups, the watch
cache, and the bound on concurrent API passes (and `response_json`, how a raw client response is read).

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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import kopf
from kubernetes import client, config

from finetune_operator import builders
from finetune_operator.cache import WatchCache
from finetune_operator.metrics import OperatorMetrics

T = TypeVar("T")
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
    max_concurrent_passes: int = 16


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
    _passes: asyncio.Semaphore | None = None
    _executor: ThreadPoolExecutor | None = None

    async def bounded(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking API pass in a thread, at most `max_concurrent_passes` at once (the rest wait)."""
        if self._passes is None or self._executor is None:
            bound = max(1, self.config.max_concurrent_passes)
            self._passes = asyncio.Semaphore(bound)
            self._executor = ThreadPoolExecutor(max_workers=bound, thread_name_prefix="reconcile")
        queued = time.monotonic()
        async with self._passes:
            if _trace.isEnabledFor(logging.DEBUG) and time.monotonic() - queued > 0.01:
                _trace.debug("waited %.3f s for a pass slot", time.monotonic() - queued)
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def apis(self) -> tuple[Any, Any, Any]:  # the client's stubs reject plain-dict bodies
        if self.api is None:
            try:
                config.load_incluster_config()
            except config.ConfigException:
                config.load_kube_config()
            settings = client.Configuration.get_default_copy()
            # One connection per concurrent pass, plus the sweeps: a smaller pool opens (and drops) a fresh
            # connection per call beyond it in a burst.
            wanted = self.config.max_concurrent_passes + 8
            if (settings.connection_pool_maxsize or 0) < wanted:
                settings.connection_pool_maxsize = wanted
            self.api = client.ApiClient(settings)
        return (
            client.CoreV1Api(self.api),
            client.CustomObjectsApi(self.api),
            client.RbacAuthorizationV1Api(self.api),
        )


def runtime_of(memo: kopf.Memo) -> Runtime:
    """The Runtime main.py put into kopf's memo."""
    runtime = memo.get("runtime")
    if not isinstance(runtime, Runtime):
        raise RuntimeError("no Runtime in kopf's memo: start the operator with finetune-operator (main.py)")
    return runtime


def response_json(response: Any) -> dict[str, Any]:
    """The JSON body of a client call made with `_preload_content=False` (a dict as the API sent it)."""
    return dict(json.loads(response.data))
