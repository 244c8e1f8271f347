#!/usr/bin/env python3
"""Run a local Prometheus scraping the given targets, with the finetune-operator alert rules loaded.

    hack/observability/local_prometheus.py --target 127.0.0.1:8000            # the operator's /metrics
    hack/observability/local_prometheus.py --target 127.0.0.1:8000 --port 9090 \
        --trainers /var/tmp/finetune-operator/cluster/kubeconfig   # + trainer pods (all namespaces)

Prints the URL and runs until Ctrl-C (its TSDB is a temp dir, removed at exit, unless --data DIR).
Needs Debian's `prometheus` (hack/observability/install.sh).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from fto_observability.local_prometheus import (  # noqa: E402
    LocalPrometheus,
    TrainerDiscovery,
    trainer_scrape_config,
)

DEFAULT_RULES = HERE.parents[1] / "deploy" / "prometheus" / "finetune-operator.rules.yml"


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
