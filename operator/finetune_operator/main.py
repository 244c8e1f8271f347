"""`finetune-operator`: run the FineTuneJob operator (kopf) with health and metrics endpoints.

    finetune-operator --namespace team-a --namespace team-b   # only these namespaces
    finetune-operator --all-namespaces                         # the whole cluster (the default)
    finetune-operator --leader-election --leader-election-namespace finetune-system   # one of N replicas
    finetune-operator --release-finalizers -n team-a          # uninstall: release pods and jobs, exit

Credentials: in-cluster ServiceAccount, else $KUBECONFIG / ~/.kube/config. kopf's peering is off
(standalone); with --leader-election only the holder of a coordination.k8s.io Lease acts, the other replicas
stand by (the chart turns it on).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import kopf
from prometheus_client import start_http_server

from finetune_operator import finalizers, handlers, leader
from finetune_operator.runtime import OperatorConfig, Runtime

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


class KueueAbsentIsNormal(logging.Filter):
    """kopf warns at each resource scan that a handler's resource has no CRD. For Kueue's Workloads that
    is the normal state of a cluster without Kueue (the watch starts when Kueue is installed): say so at
    INFO. A warning that names other resources too stays a warning."""

    PREFIX = "Unresolved resources cannot be served"

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.levelno == logging.WARNING and message.startswith(self.PREFIX):
            names = message.split(":", 1)[1].split(",")
            if all("kueue.x-k8s.io" in n for n in names):
                record.levelno, record.levelname = logging.INFO, "INFO"
                record.msg, record.args = "Kueue is not installed: its Workloads are not watched (yet)", ()
                return logging.getLogger(record.name).isEnabledFor(logging.INFO)
        return True


def setup_logging(fmt: str, level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(KueueAbsentIsNormal())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # kopf logs every handler run at INFO; keep its chatter at WARNING unless debugging.
    if os.environ.get("FTO_TRACE") in ("1", "true"):  # time stamps along a pass (bench/scale), no kopf
        logging.getLogger("finetune_operator.trace").setLevel(logging.DEBUG)
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
    parser.add_argument(
        "--orphan-sweep-seconds",
        type=float,
        default=float(env("FTO_ORPHAN_SWEEP_SECONDS", "60")),
        help="release trainer pods left on our finalizer by a deleted job: at start-up and this often",
    )
    parser.add_argument(
        "--resync-seconds",
        type=float,
        default=float(env("FTO_RESYNC_SECONDS", "300")),
        help="this often, relist jobs, trainer pods, nodes and claims and drop from the watch cache what a "
        "watch missed the deletion of (the jobs concerned then read the API)",
    )
    parser.add_argument(
        "--max-concurrent-reconciles",
        type=int,
        default=int(env("FTO_MAX_CONCURRENT_RECONCILES", "64")),
        help="at most this many jobs' reconcile passes talk to the API at once (a burst waits its turn)",
    )
    parser.add_argument(
        "--leader-election",
        action="store_true",
        default=env("FTO_LEADER_ELECTION", "") in ("1", "true"),
        help="act only while holding the Lease --leader-election-id (for more than one replica)",
    )
    parser.add_argument(
        "--leader-election-namespace",
        default=env("FTO_LEADER_ELECTION_NAMESPACE") or env("POD_NAMESPACE") or "default",
    )
    parser.add_argument(
        "--leader-election-id", default=env("FTO_LEADER_ELECTION_ID", "finetune-operator"), help="Lease name"
    )
    parser.add_argument("--lease-duration-seconds", type=int, default=15)
    parser.add_argument("--renew-deadline-seconds", type=float, default=10.0)
    parser.add_argument("--retry-period-seconds", type=float, default=2.0)
    parser.add_argument(
        "--release-finalizers",
        action="store_true",
        help="do not run: remove the operator's finalizers from every trainer pod and FineTuneJob in scope "
        "and exit (the chart's uninstall hook; with --leader-election, first take the lease)",
    )
    parser.add_argument("--log-format", choices=("json", "text"), default=env("FTO_LOG_FORMAT", "json"))
    parser.add_argument("--log-level", default=env("FTO_LOG_LEVEL", "info"))
    args = parser.parse_args(argv)
    if args.resync_seconds <= 0 or args.max_concurrent_reconciles < 1:
        parser.error("--resync-seconds must be > 0 and --max-concurrent-reconciles >= 1")
    if args.renew_deadline_seconds >= args.lease_duration_seconds:
        parser.error("--renew-deadline-seconds must be shorter than --lease-duration-seconds")
    if not args.namespace and env("FTO_NAMESPACES"):
        args.namespace = [n for n in env("FTO_NAMESPACES", "").split(",") if n]
    return args


class _StandbyHealth(BaseHTTPRequestHandler):
    """/healthz while standing by for the lease: alive, not leading (kopf serves it once leading)."""

    def do_GET(self) -> None:
        body = b'{"leader": false}'
        self.send_response(200 if self.path.startswith("/healthz") else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: Any) -> None:
        pass


def _lease(runtime: Runtime, args: argparse.Namespace) -> leader.LeaseLock:
    runtime.apis()
    assert runtime.api is not None
    return leader.LeaseLock(
        runtime.api,
        args.leader_election_namespace,
        args.leader_election_id,
        lease_seconds=args.lease_duration_seconds,
        renew_deadline=args.renew_deadline_seconds,
        retry_period=args.retry_period_seconds,
    )


def release_finalizers(runtime: Runtime, args: argparse.Namespace) -> int:
    log = logging.getLogger("finetune_operator")
    lock = _lease(runtime, args) if args.leader_election else None
    if lock is not None:  # wait until no operator acts (it released the lease, or it expired)
        lock.acquire()
    try:
        pods, jobs = finalizers.release_all_finalizers(runtime, args.namespace)
    finally:
        if lock is not None:
            lock.release()
    log.info(
        "released finalizers",
        extra={"pods": len(pods), "jobs": len(jobs), "scope": ",".join(args.namespace) or "cluster"},
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.log_format, args.log_level)
    # The one Runtime of this process: kopf hands it to every handler as memo.runtime.
    runtime = Runtime(
        config=OperatorConfig(
            node_lost_seconds=args.node_lost_seconds,
            unreachable_toleration_seconds=args.unreachable_toleration_seconds,
            namespaces=list(args.namespace),
            orphan_sweep_seconds=args.orphan_sweep_seconds,
            resync_seconds=args.resync_seconds,
            max_concurrent_passes=args.max_concurrent_reconciles,
        )
    )
    if args.release_finalizers:
        return release_finalizers(runtime, args)
    if args.metrics_port:
        start_http_server(args.metrics_port, addr=args.bind_address, registry=runtime.metrics.registry)
    lock, renewer = None, None
    renewing = threading.Event()  # set: stop renewing (before the lease is released)
    if args.leader_election:
        lock = _lease(runtime, args)
        standby = None
        if args.health_port:
            standby = ThreadingHTTPServer((args.bind_address, args.health_port), _StandbyHealth)
            threading.Thread(target=standby.serve_forever, daemon=True).start()
        lock.acquire()
        if standby is not None:
            standby.shutdown()
            standby.server_close()
        # Lost the lease (could not renew in time, or someone took it): stop acting at once. Whatever this
        # process was writing is conditional (executor.Fence), and the Deployment restarts it as a candidate.
        renewer = lock.keep_renewing(lambda: os._exit(1), renewing)
    liveness = f"http://{args.bind_address}:{args.health_port}/healthz" if args.health_port else None
    scope = {"namespaces": args.namespace} if args.namespace else {"clusterwide": True}
    logging.getLogger("finetune_operator").info(
        "starting", extra={"scope": ",".join(args.namespace) or "cluster", "metrics_port": args.metrics_port}
    )
    try:
        kopf.run(
            standalone=True,
            liveness_endpoint=liveness,
            registry=handlers.REGISTRY,  # what handlers.py's decorators registered
            memo=kopf.Memo(runtime=runtime),
            **scope,
        )
    finally:
        if lock is not None:
            renewing.set()
            if renewer is not None:
                renewer.join(timeout=10)  # a renewal in flight must not take the lease back after the release
            lock.release()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
