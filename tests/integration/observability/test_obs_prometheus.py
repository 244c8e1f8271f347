"""A real Prometheus scraping the real operator (and the trainer pods) while a FineTuneJob runs on the local
cluster and is preempted twice: every dashboard panel's query returns data, every alert rule evaluates, and
the restart-loop alert fires.

Needs the local cluster (tests/harness; `-m cluster`), Debian's prometheus (hack/observability/install.sh)
and the tiny trainer image (tests/integration/operator/build_tiny_image.sh, built on demand).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from fto_observability import alerts, dashboard, promql
from fto_observability.local_prometheus import LocalPrometheus, trainer_scrape_config

from tests.harness.cluster import Cluster
from tests.harness.disruptions import evict
from tests.harness.kube import Kube, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.timeout(900)]

JOB = "obs"
GROUP, VERSION, PLURAL = "finetune.dev", "v1alpha1", "finetunejobs"
#: The provoked case: > 1 restart in 5 minutes (the shipped rule: > 3 in 15 minutes).
FAST = {"restart_window": "5m", "restart_threshold": "1",
        "no_checkpoint_window": "120s", "training_gap": "30s"}


def job_manifest(image: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "FineTuneJob", "metadata": {"name": JOB},
        "spec": {
            "model": {"name_or_path": "/opt/finetune-tiny/model", "torch_dtype": "float32"},
            "dataset": {"path": "/opt/finetune-tiny/data.jsonl", "text_field": "text"},
            "lora": {"r": 8, "lora_alpha": 16, "lora_dropout": 0.05, "target_modules": ["c_attn"]},
            "training": {"max_steps": 100000, "per_device_train_batch_size": 4, "learning_rate": 5.0e-3,
                         "max_length": 64, "logging_steps": 1, "save_strategy": "steps", "save_steps": 10,
                         "save_total_limit": 2},
            "checkpoint": {"volumeSize": "1Gi", "deleteWithJob": True, "terminationGracePeriodSeconds": 30},
            "resources": {"gpus": 0, "cpu": "500m", "memory": "2Gi"},
            "image": image, "imagePullPolicy": "Never",
            "env": [{"name": "OMP_NUM_THREADS", "value": "1"}],
        },
    }


def fast_rules(path: Path) -> Path:
    """The shipped rules with small windows, as their own group, each alert labelled variant=fast."""
    doc = alerts.build_rules(FAST)
    for g in doc["groups"]:
        g["name"] += ".fast"
        for r in g["rules"]:
            r["labels"]["variant"] = "fast"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def status(kube: Kube, ns: str) -> dict[str, Any]:
    obj: Any = kube.custom.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, JOB)
    return dict(obj.get("status") or {})


def wait_training(kube: Kube, ns: str, attempt: int, after_step: int, timeout: float = 300) -> dict[str, Any]:
    """Wait until attempt `attempt` runs and committed a checkpoint past `after_step`."""
    def ok() -> Any:
        s = status(kube, ns)
        ckpt = (s.get("lastCheckpoint") or {}).get("step") or 0
        if s.get("attempt", 0) >= attempt and s.get("phase") == "Running" and ckpt > after_step:
            return s
        return None
    return wait_for(ok, timeout, interval=1, what=f"attempt {attempt} training past step {after_step}")


def has_value(result: list[dict[str, Any]]) -> bool:
    for series in result:
        values = [series["value"]] if "value" in series else series.get("values", [])
        if any(not math.isnan(float(v[1])) for v in values):
            return True
    return False


def test_dashboard_and_alerts_against_a_real_prometheus(
    cluster: Cluster, kube: Kube, namespace: str, operator_process: Any, tiny_image: str,
    prometheus_installed: None, tmp_path: Path,
) -> None:
    t0 = time.time()
    prom = LocalPrometheus(
        [operator_process.metrics_target],
        [alerts_file := tmp_path / "shipped.rules.yml", fast_rules(tmp_path / "fast.rules.yml")],
        scrape_interval="1s", evaluation_interval="1s", workdir=tmp_path / "prom",
        extra_scrape_configs=[trainer_scrape_config(cluster.kubeconfig, [namespace])],
    )
    alerts_file.write_text(alerts.render_rules_file())
    with prom:
        manifest = job_manifest(tiny_image)
        kube.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, manifest)

        # Attempt 1 trains and commits; two preemptions (Eviction API, as a drain or spot handler does).
        s = wait_training(kube, namespace, attempt=1, after_step=0)
        for n in (2, 3):
            evict(kube, namespace, s["podName"])
            s = wait_training(kube, namespace, attempt=n, after_step=s["lastCheckpoint"]["step"])
        assert status(kube, namespace)["restarts"]["preemption"] == 2

        # The trainer pods were scraped (pod IPs on the node's bridge are reachable from the host).
        trainer_targets = [t for t in prom.targets() if t["labels"].get("job") == "finetune-trainers"]
        assert any(t["health"] == "up" for t in trainer_targets), trainer_targets

        # --- every dashboard panel's query, variables substituted, returns data --------------------------
        time.sleep(3)  # a few more scrapes after the last save
        window = f"{int(time.time() - t0) + 30}s"
        values = promql.test_values(namespace=namespace, finetunejob=JOB, window=window)
        empty = []
        for panel, target in dashboard.all_targets():
            expr = promql.substitute(target.expr, values)
            if not has_value(prom.query(expr)):
                empty.append(f"{panel.title} [{target.legend}]: {expr}")
        assert not empty, "panels without data:\n" + "\n".join(empty)
        for v in dashboard.build_dashboard()["templating"]["list"][1:]:
            sel, label = v["query"][len("label_values("):-1].rsplit(", ", 1)
            got = prom.label_values(label, promql.substitute(sel, values))
            assert (namespace if label == "namespace" else JOB) in got, (v["name"], got)

        # --- every rule evaluates without error; the provoked restart loop fires --------------------------
        rules = prom.rules()
        assert len(rules) == 2 * len(alerts.RULES)
        assert all(r["health"] == "ok" and not r.get("lastError") for r in rules), rules

        def restart_loop() -> list[dict[str, Any]]:
            return [a for a in prom.alerts() if a["labels"]["alertname"] == "FineTuneJobRestartLoop"
                    and a["labels"].get("variant") == "fast" and a["state"] == "firing"
                    and a["labels"].get("namespace") == namespace and a["labels"].get("finetunejob") == JOB]

        fired = wait_for(restart_loop, 60, interval=1, what="FineTuneJobRestartLoop firing")
        assert "restarted" in fired[0]["annotations"]["summary"]
        # The shipped thresholds (> 3 in 15m) do not fire for two preemptions.
        assert not [a for a in prom.alerts() if a["labels"]["alertname"] == "FineTuneJobRestartLoop"
                    and "variant" not in a["labels"]]
