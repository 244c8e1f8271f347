"""The state of one operator process: its settings, API clients, metrics and per-job wake-ups (and
`response_json`, how a raw client response is read).

main.py creates one `Runtime` and hands it to kopf as the operator's memo (`memo.runtime`). kopf gives each
handler that memo (for a job's handlers a shallow copy, so they all share this one Runtime); the handlers
pass it on to what they call. No module global: a test or a second operator in one process makes its own.
"""

from __future__ import annotations

import asyncio
import json
import socket
from dataclasses import dataclass, field
from typing import Any

import kopf
from kubernetes import client, config

from finetune_operator import builders
from finetune_operator.metrics import OperatorMetrics


@dataclass
class OperatorConfig:
    node_lost_seconds: float = 120.0
    unreachable_toleration_seconds: int = builders.DEFAULT_UNREACHABLE_TOLERATION_SECONDS
    instance: str = field(default_factory=socket.gethostname)
    #: The namespaces (patterns) served; empty: the whole cluster. For the orphan sweep.
    namespaces: list[str] = field(default_factory=list)
    #: How often to look for trainer pods left on our finalizer by a job that is gone (0 = never).
    orphan_sweep_seconds: float = 60.0


@dataclass
class Runtime:
    """Process-wide state: the API clients, the settings, the metrics, the per-job wake-up events."""

    config: OperatorConfig = field(default_factory=OperatorConfig)
    metrics: OperatorMetrics = field(default_factory=OperatorMetrics)
    wakes: dict[tuple[str, str], asyncio.Event] = field(default_factory=dict)
    fingerprints: dict[tuple[str, str], Any] = field(default_factory=dict)
    api: client.ApiClient | None = None

    def apis(self) -> tuple[Any, Any, Any]:  # the client's stubs reject plain-dict bodies
        if self.api is None:
            try:
                config.load_incluster_config()
            except config.ConfigException:
                config.load_kube_config()
            self.api = client.ApiClient()
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
