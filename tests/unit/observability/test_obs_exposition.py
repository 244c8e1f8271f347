"""The dashboard and the alerts against the operator's and trainer's real metric code, without a cluster.

The operator's OperatorMetrics and the trainer's TrainerMetrics serve /metrics on free ports and are fed a job
that trains, saves, and is preempted twice; a real Prometheus scrapes them every second (the trainer target
labelled as the PodMonitor labels it). Then every panel's query returns data and the restart-loop rule (small
windows) fires. The same checks run against the local cluster in tests/integration/observability.
"""

from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from finetune_observability import alerts, dashboard, promql
from prometheus_client import CollectorRegistry, start_http_server

from tests.harness.prometheus import LocalPrometheus, free_port

NS, JOB = "ml", "demo"


def _has_value(result: list[dict[str, Any]]) -> bool:
    return any(not math.isnan(float(s["value"][1])) for s in result)


def _feed(op: Any, tm: Any, seconds: float) -> None:
    """A job: 5 steps per 0.5 s, a save every second, preempted at ~1/3 and ~2/3 of the run."""
    rng = random.Random(7)
    step, saved_step, restarts, lost, n = 0, 0, 0, 0, 0
    end = time.monotonic() + seconds
    preempt_at = {int(seconds * 2 / 3), int(seconds * 4 / 3)}  # iterations (0.5 s each)
    while time.monotonic() < end:
        n += 1
        phase = "Running"
        if n in preempt_at:
            restarts += 1
            lost += step - saved_step
            step = saved_step
            phase = "Restarting"
        else:
            step += 5
            if n % 2 == 0:
                saved_step = step
        status = {
            "phase": phase,
            "step": step,
            "checkpoints": min(2, n // 2),
            "lostSteps": lost,
            "restarts": {"preemption": restarts, "hostOOM": 0, "cudaOOM": 0, "error": 0},
            "lastCheckpoint": {
                "step": saved_step,
                "time": f"t{saved_step}",
                "saveSeconds": rng.uniform(0.05, 0.3),
                "bytes": 235_000,
            },
        }
        op.observe_job(NS, JOB, status)
        if n - 1 in preempt_at:
            op.observe_recovery(NS, JOB, rng.uniform(1.0, 3.0))
        tm.step.set(step)
        tm.total_steps.set(1000)
        tm.loss.set(5.0 / (1 + step / 100))
        tm.step_seconds.observe(rng.uniform(0.05, 0.1))
        tm.tokens_per_second.set(rng.uniform(2000, 3000))
        if n % 2 == 0:
            tm.save_seconds.observe(0.1)
            tm.last_save_seconds.set(0.1)
            tm.last_save_bytes.set(235_000)
            tm.last_checkpoint_step.set(saved_step)
            tm.checkpoints.set(2)
            tm.commits.inc()
        time.sleep(0.5)


def test_every_panel_has_data_and_the_restart_loop_fires(empty_prometheus: Any, tmp_path: Path) -> None:
    del empty_prometheus  # only for its skip/fail when prometheus is missing
    metrics = pytest.importorskip("finetune_operator.metrics")
    reporting = pytest.importorskip("finetune_trainer.reporting")

    op = metrics.OperatorMetrics(CollectorRegistry())
    op_port = free_port()
    start_http_server(op_port, addr="127.0.0.1", registry=op.registry)
    tm_port = free_port()
    tm = reporting.TrainerMetrics(port=tm_port)

    fast = alerts.build_rules({"restart_window": "5m", "restart_threshold": "1"})
    (tmp_path / "fast.rules.yml").write_text(yaml.safe_dump(fast))
    trainer_job = {
        "job_name": "finetune-trainers",
        "honor_labels": True,
        "static_configs": [
            {
                "targets": [f"127.0.0.1:{tm_port}"],
                "labels": {"namespace": NS, "finetunejob": JOB, "pod": f"{JOB}-1"},
            }
        ],
    }
    t0 = time.time()
    with LocalPrometheus(
        [f"127.0.0.1:{op_port}"],
        [tmp_path / "fast.rules.yml"],
        workdir=tmp_path / "prom",
        extra_scrape_configs=[trainer_job],
    ) as prom:
        _feed(op, tm, seconds=12)
        time.sleep(2)
        values = promql.test_values(NS, JOB, window=f"{int(time.time() - t0) + 30}s")
        empty = [
            f"{p.title} [{t.legend}]"
            for p, t in dashboard.all_targets()
            if not _has_value(prom.query(promql.substitute(t.expr, values)))
        ]
        assert not empty, f"panels without data: {empty}"

        fired = [
            a
            for a in prom.alerts()
            if a["labels"]["alertname"] == "FineTuneJobRestartLoop" and a["state"] == "firing"
        ]
        assert [(a["labels"]["namespace"], a["labels"]["finetunejob"]) for a in fired] == [(NS, JOB)]
        assert all(r["health"] == "ok" for r in prom.rules())


def test_a_trainer_cannot_label_its_series_as_another_job(empty_prometheus: Any, tmp_path: Path) -> None:
    """A trainer runs user code: one that exports `namespace`/`finetunejob` labels of another tenant's job
    must not get its series counted there. Scraped as the PodMonitor does (trainer_scrape_config: the
    target's labels from the pod win), a real Prometheus files them under the pod's own job."""
    del empty_prometheus
    from tests.harness.prometheus import trainer_scrape_config

    spoofer = CollectorRegistry()
    from prometheus_client import Gauge

    step = Gauge("finetune_trainer_step", "", ["namespace", "finetunejob"], registry=spoofer)
    step.labels(namespace="victim-ns", finetunejob="victim").set(999)
    port = free_port()
    start_http_server(port, addr="127.0.0.1", registry=spoofer)
    targets = tmp_path / "trainers.json"
    own = {"namespace": "attacker-ns", "finetunejob": "attacker", "pod": "attacker-1"}
    targets.write_text(json.dumps([{"targets": [f"127.0.0.1:{port}"], "labels": own}]))
    with LocalPrometheus(
        [], [], workdir=tmp_path / "prom", extra_scrape_configs=[trainer_scrape_config(targets)]
    ) as prom:
        deadline = time.monotonic() + 30
        while not (series := prom.query("finetune_trainer_step")) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert series, "the trainer target was never scraped"
        for s in series:
            assert s["metric"]["namespace"] == "attacker-ns" and s["metric"]["finetunejob"] == "attacker"
            assert s["metric"]["exported_namespace"] == "victim-ns"
        assert not prom.query('finetune_trainer_step{namespace="victim-ns"}')
        assert not prom.query('finetune_trainer_step{finetunejob="victim"}')
