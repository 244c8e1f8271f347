"""The metric catalog (finetune_api.metric_catalog): Prometheus naming conventions, bounded labels, and
agreement with what the operator (finetune_operator.metrics) and the trainer (TrainerMetrics) register:
every registered metric is in the catalog with its type, labels, help and buckets, and every catalogued
metric is registered. (That the dashboard and the alerts select only catalogued metrics is checked in
test_obs_dashboard.py, test_obs_rules.py, and by `finetune-observability --check` below.)"""

from __future__ import annotations

import importlib
import subprocess
import sys
import typing
from typing import Any

import pytest
from finetune_api import metric_catalog as catalog
from finetune_observability import alerts, generate

from tests.harness.cluster import REPO_ROOT

ALLOWED_LABELS = {"namespace", "finetunejob", "cause", "phase"}


@pytest.mark.parametrize("m", catalog.ALL_METRICS, ids=[m.name for m in catalog.ALL_METRICS])
def test_naming_conventions(m: catalog.Metric) -> None:
    assert m.name.startswith("finetune_") and m.name == m.name.lower()
    if m.type == "counter":
        assert m.name.endswith("_total")
    else:
        assert not m.name.endswith("_total")
    if "duration" in m.name or m.name.endswith("_time"):
        assert m.name.endswith("_seconds"), "durations are in seconds"
    if "size" in m.name:
        assert m.name.endswith("_bytes")
    assert set(m.labels) <= ALLOWED_LABELS, "bounded label cardinality; never `job`"
    assert m.labels[0] == "namespace"
    assert m.help.strip()


def test_catalog_imports_no_metrics_client_nor_operator() -> None:
    """The trainer image installs finetune_api only: the catalog must import without the operator's
    dependencies, and finetune_api stays light (no Prometheus client at import)."""
    code = (
        "import sys, finetune_api.metric_catalog as c; assert c.ALL_METRICS; "
        "print(sorted(m for m in ('prometheus_client', 'kopf', 'kubernetes', 'finetune_operator') "
        "if m in sys.modules))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_phases_and_causes_match_the_api() -> None:
    models = importlib.import_module("finetune_api.models")
    assert catalog.LABEL_VALUES["phase"] == tuple(typing.get_args(models.Phase))
    assert catalog.LABEL_VALUES["cause"] == tuple(models.RESTART_CAUSES)
    assert set(catalog.LABEL_VALUES) == {label for m in catalog.ALL_METRICS for label in m.labels} - set(
        catalog.JOB_LABELS
    ), "every bounded label other than the job's has its values listed"


Registered = tuple[str, tuple[str, ...], str, tuple[float, ...]]


def _families(registry: Any) -> dict[str, Registered]:
    """name as exported → (type, label names, help, buckets) of every family a registry collects."""
    found: dict[str, Registered] = {}
    for fam in registry.collect():
        labels: set[str] = set()
        buckets: set[float] = set()
        for s in fam.samples:
            labels |= set(s.labels) - {"le", "quantile"}
            if s.name.endswith("_bucket") and s.labels["le"] != "+Inf":
                buckets.add(float(s.labels["le"]))
        name = fam.name + ("_total" if fam.type == "counter" else "")
        found[name] = (fam.type, tuple(sorted(labels)), fam.documentation, tuple(sorted(buckets)))
    return found


def _documented(metrics: tuple[catalog.Metric, ...]) -> dict[str, Registered]:
    return {
        m.name: (m.type, tuple(sorted(m.exported_labels)), m.help, tuple(sorted(map(float, m.buckets))))
        for m in metrics
    }


def _label_values(registry: Any, label: str) -> set[str]:
    return {s.labels[label] for fam in registry.collect() for s in fam.samples if label in s.labels}


def test_catalog_agrees_with_the_operator() -> None:
    """Feed the operator's OperatorMetrics a job (two saves, a recovery) and compare what it exports."""
    mod = pytest.importorskip("finetune_operator.metrics", reason="finetune_operator.metrics not written yet")
    from prometheus_client import CollectorRegistry

    m = mod.OperatorMetrics(CollectorRegistry())
    status: dict[str, Any] = {
        "phase": "Running",
        "step": 40,
        "checkpoints": 2,
        "lostSteps": 3,
        "restarts": {"preemption": 1, "hostOOM": 0, "cudaOOM": 0, "error": 0},
        "lastCheckpoint": {"step": 20, "time": "2025-01-01T00:00:00Z", "saveSeconds": 0.2, "bytes": 1000},
    }
    m.observe_job("ml", "a", status)
    m.observe_job("ml", "a", {**status, "lastCheckpoint": {**status["lastCheckpoint"], "step": 40}})
    m.observe_recovery("ml", "a", 1.5)
    assert _families(m.registry) == _documented(catalog.OPERATOR_METRICS)
    for label, values in catalog.LABEL_VALUES.items():
        assert _label_values(m.registry, label) == set(values), label


def test_catalog_agrees_with_the_trainer() -> None:
    mod = pytest.importorskip("finetune_trainer.reporting", reason="finetune_trainer not importable here")
    tm = mod.TrainerMetrics(port=0)
    assert _families(tm.registry) == _documented(catalog.TRAINER_METRICS)


def test_generated_files_are_up_to_date_and_select_only_catalogued_metrics() -> None:
    """The command CI and people run: `finetune-observability --check` (the installed script is this module's
    main; run as a module so the test does not depend on the venv's entry points being current)."""
    r = subprocess.run(
        [sys.executable, "-m", "finetune_observability.generate", "--check"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_check_names_a_rule_selecting_an_unknown_metric(monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    bad = alerts.Rule("Bad", "finetune_not_a_metric_total > 0", "0m", "info", "s", "d", "r")
    monkeypatch.setattr(alerts, "RULES", (*alerts.RULES, bad))
    assert generate.main(["--check", "--root", str(REPO_ROOT)]) == 2
    assert (
        "alert Bad selects metrics not in finetune_api.metric_catalog: ['finetune_not_a_metric_total']"
        in capsys.readouterr().err
    )


def test_check_names_a_stale_file(tmp_path: Any, capsys: Any) -> None:
    assert generate.main(["--write", "--root", str(tmp_path)]) == 0
    assert generate.main(["--check", "--root", str(tmp_path)]) == 0
    (tmp_path / generate.RULES_FILE).write_text("groups: []\n")
    assert generate.main(["--check", "--root", str(tmp_path)]) == 1
    assert str(generate.RULES_FILE) in capsys.readouterr().err
