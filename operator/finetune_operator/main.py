"""`finetune-operator`: run the FineTuneJob operator (kopf) with health and metrics endpoints.

    finetune-operator --namespace team-a --namespace team-b   # only these namespaces
    finetune-operator --all-namespaces                         # the whole cluster (the default)

Credentials: in-cluster ServiceAccount, else $KUBECONFIG / ~/.kube/config. One replica per scope: kopf's
peering is off (standalone), so run a single replica (the chart's Deployment uses `strategy: Recreate`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from datetime import UTC, datetime
from typing import Any

import kopf
from prometheus_client import start_http_server

from finetune_operator import handlers

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}
_SKIP = {"settings", "k8s_skip", "k8s_ref"}  # kopf's per-record extras (the whole settings object!)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and any `extra=` fields (finetunejob, ...)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key in _STANDARD or key in _SKIP or key.startswith("_") or value is None:
                continue
            if isinstance(value, str | int | float | bool):
                entry[key] = value
        ref = getattr(record, "k8s_ref", None)
        if isinstance(ref, dict) and ref.get("name"):
            entry["object"] = f"{ref.get('kind')}/{ref.get('namespace')}/{ref.get('name')}"
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def setup_logging(fmt: str, level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # kopf logs every handler run at INFO; keep its chatter at WARNING unless debugging.
    if level.upper() != "DEBUG":
        logging.getLogger("kopf").setLevel(logging.WARNING)
        logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    env = os.environ.get
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument(
        "--namespace",
        "-n",
        action="append",
        default=[],
        help="watch this namespace (repeatable; glob patterns allowed); env FTO_NAMESPACES=a,b",
    )
    scope.add_argument("--all-namespaces", "-A", action="store_true", help="watch every namespace (default)")
    parser.add_argument(
        "--metrics-port", type=int, default=int(env("FTO_METRICS_PORT", "8000")), help="0 = off"
    )
    parser.add_argument(
        "--health-port", type=int, default=int(env("FTO_HEALTH_PORT", "8080")), help="0 = off"
    )
    parser.add_argument("--bind-address", default=env("FTO_BIND_ADDRESS", "0.0.0.0"))
    parser.add_argument(
        "--node-lost-seconds",
        type=float,
        default=float(env("FTO_NODE_LOST_SECONDS", "120")),
        help="a node NotReady/Unknown this long is lost: its trainer pod is force-deleted and replaced",
    )
    parser.add_argument(
        "--unreachable-toleration-seconds",
        type=int,
        default=int(env("FTO_UNREACHABLE_TOLERATION_SECONDS", "30")),
        help="tolerationSeconds of trainer pods for not-ready/unreachable nodes (Kubernetes default: 300)",
    )
    parser.add_argument("--log-format", choices=("json", "text"), default=env("FTO_LOG_FORMAT", "json"))
    parser.add_argument("--log-level", default=env("FTO_LOG_LEVEL", "info"))
    args = parser.parse_args(argv)
    if not args.namespace and env("FTO_NAMESPACES"):
        args.namespace = [n for n in env("FTO_NAMESPACES", "").split(",") if n]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.log_format, args.log_level)
    handlers.RUNTIME.config = handlers.OperatorConfig(
        node_lost_seconds=args.node_lost_seconds,
        unreachable_toleration_seconds=args.unreachable_toleration_seconds,
    )
    if args.metrics_port:
        start_http_server(
            args.metrics_port, addr=args.bind_address, registry=handlers.RUNTIME.metrics.registry
        )
    liveness = f"http://{args.bind_address}:{args.health_port}/healthz" if args.health_port else None
    scope = {"namespaces": args.namespace} if args.namespace else {"clusterwide": True}
    logging.getLogger("finetune_operator").info(
        "starting", extra={"scope": ",".join(args.namespace) or "cluster", "metrics_port": args.metrics_port}
    )
    kopf.run(standalone=True, liveness_endpoint=liveness, **scope)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
