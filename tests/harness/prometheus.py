"""A local Prometheus for the tests: Debian's `prometheus` on a free loopback port, scraping given targets.

The observability tests use it (an empty TSDB parses every dashboard query; the exposition and integration
tests scrape the real operator and trainer metrics and watch the alerts fire). Installed by
tests/harness/install_prometheus.sh. People can run one too, with the shipped alert rules loaded:

    .venv/bin/python -m tests.harness.prometheus --target 127.0.0.1:8000            # the operator's /metrics
    .venv/bin/python -m tests.harness.prometheus --target 127.0.0.1:8000 --port 9090 \
        --trainers /var/tmp/finetune-operator/cluster/kubeconfig   # + trainer pods (all namespaces)

It prints the URL and runs until Ctrl-C (its TSDB is a temp dir, removed at exit, unless --data DIR).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from tests.harness.cluster import REPO_ROOT

INSTALL_HINT = "Debian's prometheus is not installed: run tests/harness/install_prometheus.sh"
DEFAULT_RULES = REPO_ROOT / "deploy" / "prometheus" / "finetune-operator.rules.yml"


class PrometheusError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def prometheus_binary() -> str | None:
    return shutil.which("prometheus")


def make_config(
    targets: Sequence[str],
    rule_files: Sequence[str | os.PathLike[str]] = (),
    scrape_interval: str = "1s",
    evaluation_interval: str = "1s",
    job_name: str = "finetune-operator",
    extra_scrape_configs: Sequence[dict[str, Any]] = (),
) -> dict[str, Any]:
    """prometheus.yml: one static job over `targets` (host:port, /metrics), honoring the targets' labels.

    honor_labels: the operator labels series with the FineTuneJob's `namespace`, which must not be
    renamed to exported_namespace by a target label.
    """
    scrape_configs: list[dict[str, Any]] = []
    if targets:
        scrape_configs.append(
            {
                "job_name": job_name,
                "honor_labels": True,
                "metrics_path": "/metrics",
                "static_configs": [{"targets": list(targets)}],
            }
        )
    scrape_configs.extend(extra_scrape_configs)
    return {
        "global": {
            "scrape_interval": scrape_interval,
            "evaluation_interval": evaluation_interval,
            "scrape_timeout": scrape_interval,
        },
        "rule_files": [str(Path(f).resolve()) for f in rule_files],
        "scrape_configs": scrape_configs,
    }


def trainer_scrape_config(
    targets_file: str | os.PathLike[str], scrape_interval: str | None = None
) -> dict[str, Any]:
    """Scrape the trainer pods listed in `targets_file` (file_sd JSON, written by `TrainerDiscovery`).

    Debian's prometheus is built without kubernetes_sd_configs, so the pods are found through the API by
    `TrainerDiscovery` and handed over as a file; the labels are what the chart's PodMonitor gives them,
    and like the PodMonitor it does not honour labels the trainer exports (no spoofing another job's).
    """
    cfg: dict[str, Any] = {
        "job_name": "finetune-trainers",
        # As the PodMonitor: the target's labels (from the pod) win over what a trainer exports itself.
        "honor_labels": False,
        "file_sd_configs": [{"files": [str(targets_file)], "refresh_interval": "1s"}],
    }
    if scrape_interval:
        cfg["scrape_interval"] = scrape_interval
    return cfg


def trainer_targets(
    pods: Sequence[Any], job_label: str = "finetune.dev/job", port_name: str = "metrics"
) -> list[dict[str, Any]]:
    """file_sd target groups for trainer pods (kubernetes client V1Pod objects), labelled like the PodMonitor:
    pods with the job label and an IP, their `metrics` container port; namespace, finetunejob, pod."""
    groups = []
    for pod in pods:
        labels = pod.metadata.labels or {}
        ip = pod.status.pod_ip if pod.status else None
        if job_label not in labels or not ip or (pod.status.phase not in ("Pending", "Running")):
            continue
        for c in pod.spec.containers:
            for port in c.ports or []:
                if port.name == port_name:
                    groups.append(
                        {
                            "targets": [f"{ip}:{port.container_port}"],
                            "labels": {
                                "namespace": pod.metadata.namespace,
                                "finetunejob": labels[job_label],
                                "pod": pod.metadata.name,
                            },
                        }
                    )
    return groups


class TrainerDiscovery:
    """A thread that lists trainer pods every `interval` seconds and rewrites a file_sd targets file."""

    def __init__(
        self,
        core_api: Any,
        path: str | os.PathLike[str],
        namespaces: Sequence[str] = (),
        interval: float = 1.0,
    ):
        self.core, self.path, self.interval = core_api, Path(path), interval
        self.namespaces = list(namespaces)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="trainer-discovery", daemon=True)
        self.errors = 0
        self.write()

    def pods(self) -> list[Any]:
        sel = "finetune.dev/job"
        if not self.namespaces:
            return list(self.core.list_pod_for_all_namespaces(label_selector=sel).items)
        return [
            p for ns in self.namespaces for p in self.core.list_namespaced_pod(ns, label_selector=sel).items
        ]

    def write(self) -> None:
        try:
            groups = trainer_targets(self.pods())
        except Exception:  # the API hiccups; keep the last file
            self.errors += 1
            if self.path.exists():
                return
            groups = []
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(groups))
        tmp.replace(self.path)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.write()

    def start(self) -> TrainerDiscovery:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)


class LocalPrometheus:
    """A Prometheus process with its own TSDB under `workdir` (a temp dir by default), on 127.0.0.1."""

    def __init__(
        self,
        targets: Sequence[str] = (),
        rule_files: Sequence[str | os.PathLike[str]] = (),
        scrape_interval: str = "1s",
        evaluation_interval: str = "1s",
        workdir: str | os.PathLike[str] | None = None,
        port: int | None = None,
        extra_scrape_configs: Sequence[dict[str, Any]] = (),
    ):
        binary = prometheus_binary()
        if binary is None:
            raise PrometheusError(INSTALL_HINT)
        self.binary = binary
        self._tmp = None if workdir else tempfile.TemporaryDirectory(prefix="fto-prometheus-")
        self.workdir = Path(workdir or self._tmp.name)  # type: ignore[union-attr]
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = make_config(
            targets,
            rule_files,
            scrape_interval,
            evaluation_interval,
            extra_scrape_configs=extra_scrape_configs,
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.workdir / "prometheus.log"

    # --- lifecycle ------------------------------------------------------------------------------------
    def start(self, timeout: float = 30) -> LocalPrometheus:
        self.workdir.mkdir(parents=True, exist_ok=True)
        cfg = self.workdir / "prometheus.yml"
        cfg.write_text(yaml.safe_dump(self.config, sort_keys=False))
        args = [
            self.binary,
            f"--config.file={cfg}",
            f"--storage.tsdb.path={self.workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--web.enable-lifecycle",
            "--storage.tsdb.retention.time=1d",
            "--log.level=warn",
        ]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise PrometheusError(f"prometheus exited {self.proc.returncode}: {self.log()[-2000:]}")
            with contextlib.suppress(OSError), urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as r:
                if r.status == 200:
                    return self
            time.sleep(0.2)
        self.stop()
        raise PrometheusError(f"prometheus not ready in {timeout} s: {self.log()[-2000:]}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None
        if self._tmp:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> LocalPrometheus:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    # --- HTTP API -------------------------------------------------------------------------------------
    def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/<path>; returns `data`, raises PrometheusError with Prometheus' message on error."""
        url = f"{self.url}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=30) as r:
                body = json.load(r)
        except urllib.error.HTTPError as e:
            try:
                body = json.load(e)
            except ValueError:
                raise PrometheusError(f"{path}: HTTP {e.code}") from e
        if body.get("status") != "success":
            raise PrometheusError(f"{body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        data = self.api("query", **params)
        result = data["result"]
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": result}]
        return list(result)

    def query_range(self, expr: str, start: float, end: float, step: str = "1s") -> list[dict[str, Any]]:
        return list(
            self.api("query_range", query=expr, start=f"{start:.3f}", end=f"{end:.3f}", step=step)["result"]
        )

    def label_values(self, label: str, match: str) -> list[str]:
        return list(self.api(f"label/{label}/values", **{"match[]": match}))

    def alerts(self) -> list[dict[str, Any]]:
        return list(self.api("alerts")["alerts"])

    def rules(self) -> list[dict[str, Any]]:
        return [r for g in self.api("rules")["groups"] for r in g["rules"]]

    def targets(self) -> list[dict[str, Any]]:
        return list(self.api("targets")["activeTargets"])

    def reload(self) -> None:
        req = urllib.request.Request(f"{self.url}/-/reload", method="POST")
        with urllib.request.urlopen(req, timeout=30):
            pass


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", action="append", default=[], help="host:port serving /metrics (repeatable)")
    ap.add_argument("--rules", action="append", default=None, help=f"rules file (default {DEFAULT_RULES})")
    ap.add_argument("--no-rules", action="store_true", help="load no rules")
    ap.add_argument(
        "--trainers",
        metavar="KUBECONFIG",
        default=None,
        help="also scrape trainer pods, listed every second through this kubeconfig's API server",
    )
    ap.add_argument("--namespace", action="append", default=[], help="trainer pods only in these namespaces")
    ap.add_argument("--port", type=int, default=None, help="listen port on 127.0.0.1 (default: a free one)")
    ap.add_argument("--scrape-interval", default="2s")
    ap.add_argument("--data", default=None, help="keep the TSDB and config in this directory")
    a = ap.parse_args(argv)
    if not a.target:
        a.target = ["127.0.0.1:8000"]
    rules = [] if a.no_rules else (a.rules or [str(DEFAULT_RULES)])
    discovery = None
    extra = []
    workdir = Path(a.data) if a.data else Path(tempfile.mkdtemp(prefix="fto-prometheus-"))
    if a.trainers:
        from kubernetes import client, config

        core = client.CoreV1Api(config.new_client_from_config(config_file=a.trainers))
        targets = workdir / "trainers.json"
        workdir.mkdir(parents=True, exist_ok=True)
        discovery = TrainerDiscovery(core, targets, a.namespace).start()
        extra = [trainer_scrape_config(targets)]
    prom = LocalPrometheus(
        a.target,
        rules,
        a.scrape_interval,
        a.scrape_interval,
        workdir=workdir,
        port=a.port,
        extra_scrape_configs=extra,
    )
    prom.start()
    print(
        f"prometheus on {prom.url} scraping {', '.join(a.target)} every {a.scrape_interval} "
        f"(data in {prom.workdir}); Ctrl-C stops it",
        flush=True,
    )
    try:
        while prom.proc and prom.proc.poll() is None:
            time.sleep(1)
        print(prom.log()[-3000:], file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        prom.stop()
        if discovery:
            discovery.stop()


if __name__ == "__main__":
    sys.exit(main())
