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
    assert m.labels[:2] == ("namespace", "finetunejob")
    assert m.help.strip()


def test_phases_and_causes_match_the_api() -> None:
    models = importlib.import_module("finetune_api.models")
    assert tuple(typing.get_args(models.Phase)) == catalog.PHASES
    assert tuple(models.RESTART_CAUSES) == catalog.CAUSES


def _operator_metrics() -> dict[str, tuple[str | None, tuple[str, ...]]]:
    """name → (type, labels) of every prometheus_client metric finetune_operator.metrics defines."""
    mod = pytest.importorskip("finetune_operator.metrics",
                              reason="finetune_operator.metrics not written yet (the operator's side)")
    from prometheus_client.metrics import MetricWrapperBase

    found: dict[str, tuple[str | None, tuple[str, ...]]] = {}
    for value in vars(mod).values():
        objs: list[Any] = list(value) if isinstance(value, (list, tuple)) else [value]
        for obj in objs:
            if isinstance(obj, MetricWrapperBase):
                name = obj._name + ("_total" if obj._type == "counter" else "")
                found[name] = (obj._type, tuple(obj._labelnames))
    if not found:
        pytest.skip("finetune_operator.metrics exposes no module-level prometheus_client metrics")
    return found


def test_catalog_agrees_with_the_operator() -> None:
    exported = _operator_metrics()
    documented: dict[str, tuple[str | None, tuple[str, ...]]] = {
        m.name: (m.type, m.labels) for m in catalog.OPERATOR_METRICS}
    assert exported == documented
