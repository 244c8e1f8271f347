"""The metric catalog (fto_observability.catalog): Prometheus naming conventions, bounded labels, and
agreement with the API's phases/causes and with what the operator's finetune_operator.metrics defines."""

from __future__ import annotations

import importlib
import typing
from typing import Any

import pytest
from fto_observability import catalog

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


def test_phases_and_causes_match_the_api() -> None:
    models = importlib.import_module("finetune_api.models")
    assert tuple(typing.get_args(models.Phase)) == catalog.PHASES
    assert tuple(models.RESTART_CAUSES) == catalog.CAUSES


def _families(registry: Any) -> dict[str, tuple[str, tuple[str, ...]]]:
    """name as exported → (type, label names) of every family a registry collects."""
    found: dict[str, tuple[str, tuple[str, ...]]] = {}
    for fam in registry.collect():
        labels: set[str] = set()
        for s in fam.samples:
            labels |= set(s.labels) - {"le", "quantile"}
        name = fam.name + ("_total" if fam.type == "counter" else "")
        found[name] = (fam.type, tuple(sorted(labels)))
    return found


def _documented(metrics: tuple[catalog.Metric, ...]) -> dict[str, tuple[str, tuple[str, ...]]]:
    return {m.name: (m.type, tuple(sorted(m.exported_labels))) for m in metrics}


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


def test_catalog_agrees_with_the_trainer() -> None:
    mod = pytest.importorskip("finetune_trainer.reporting", reason="finetune_trainer not importable here")
    tm = mod.TrainerMetrics(port=0)
    assert _families(tm.registry) == _documented(catalog.TRAINER_METRICS)
