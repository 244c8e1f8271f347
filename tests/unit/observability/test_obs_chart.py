"""The chart's monitoring templates (ServiceMonitor, PodMonitor, dashboard ConfigMap), rendered by helm."""

from __future__ import annotations

import json
from typing import Any

from tests.integration.chart.helm import template
from tests.unit.observability import repo_files as paths

MONITORING_APIS = (
    "monitoring.coreos.com/v1/ServiceMonitor",
    "monitoring.coreos.com/v1/PodMonitor",
    "monitoring.coreos.com/v1/PrometheusRule",
)
ALL_ON = (
    "monitoring.serviceMonitor.enabled=true",
    "monitoring.podMonitor.enabled=true",
    "monitoring.prometheusRule.enabled=true",
    "monitoring.dashboards.enabled=true",
)
MINE = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}


def render(helm: str, *sets: str, apis: tuple[str, ...] = MONITORING_APIS) -> list[dict[str, Any]]:
    flags = [f for a in apis for f in ("--api-versions", a)] + [f for s in sets for f in ("--set", s)]
    return template(helm, *flags)


def kinds(objs: list[dict[str, Any]]) -> set[str]:
    return {o["kind"] for o in objs}


def one(objs: list[dict[str, Any]], kind: str, name_suffix: str = "") -> dict[str, Any]:
    found = [o for o in objs if o["kind"] == kind and o["metadata"]["name"].endswith(name_suffix)]
    assert len(found) == 1, (kind, name_suffix, [o["metadata"]["name"] for o in found])
    return found[0]


def test_default_values_render_no_monitoring_objects(helm: str) -> None:
    objs = render(helm)
    assert not kinds(objs) & MINE
    assert not [o for o in objs if o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("-dashboards")]


def test_without_the_crds_only_the_dashboard_renders(helm: str) -> None:
    objs = render(helm, *ALL_ON, apis=())
    assert not kinds(objs) & MINE, "Prometheus Operator objects rendered though the cluster lacks the CRDs"
    one(objs, "ConfigMap", "-dashboards")


def test_service_monitor_scrapes_the_metrics_service(helm: str) -> None:
    objs = render(
        helm,
        *ALL_ON,
        "monitoring.serviceMonitor.labels.release=kps",
        "monitoring.serviceMonitor.interval=15s",
    )
    sm = one(objs, "ServiceMonitor")
    svc = one(objs, "Service", "-metrics")
    assert sm["metadata"]["namespace"] == "fto-system"
    assert sm["metadata"]["labels"]["release"] == "kps"
    sel = sm["spec"]["selector"]["matchLabels"]
    assert sel.items() <= svc["metadata"]["labels"].items(), "the selector must match the metrics Service"
    assert sm["spec"]["namespaceSelector"] == {"matchNames": ["fto-system"]}
    [ep] = sm["spec"]["endpoints"]
    assert ep["port"] in {p["name"] for p in svc["spec"]["ports"]}
    assert ep["path"] == "/metrics" and ep["interval"] == "15s"
    # The operator's `namespace` label (the FineTuneJob's) must survive the scrape.
    assert ep["honorLabels"] is True


def test_pod_monitor_labels_trainer_series_with_the_job(helm: str) -> None:
    objs = render(helm, *ALL_ON)
    pm = one(objs, "PodMonitor")
    assert pm["spec"]["namespaceSelector"] == {"any": True}
    [ep] = pm["spec"]["podMetricsEndpoints"]
    # A trainer runs user code: labels it exports must not override the pod's own (tenant spoofing).
    assert ep["port"] == "metrics" and ep["honorLabels"] is False
    assert {"sourceLabels": ["__meta_kubernetes_namespace"], "targetLabel": "namespace"} in ep["relabelings"]
    key = pm["spec"]["selector"]["matchExpressions"][0]["key"]
    meta = "__meta_kubernetes_pod_label_" + "".join(c if c.isalnum() else "_" for c in key)
    assert {"sourceLabels": [meta], "targetLabel": "finetunejob"} in ep["relabelings"]

    objs = render(
        helm,
        *ALL_ON,
        "monitoring.podMonitor.namespaces={ml,research}",
        "monitoring.podMonitor.jobPodLabel=example.com/ftj",
        "monitoring.podMonitor.port=prom",
    )
    pm = one(objs, "PodMonitor")
    assert pm["spec"]["namespaceSelector"] == {"matchNames": ["ml", "research"]}
    assert pm["spec"]["selector"]["matchExpressions"][0]["key"] == "example.com/ftj"
    [ep] = pm["spec"]["podMetricsEndpoints"]
    assert ep["port"] == "prom"
    assert {
        "sourceLabels": ["__meta_kubernetes_pod_label_example_com_ftj"],
        "targetLabel": "finetunejob",
    } in ep["relabelings"]


def test_dashboard_configmap_carries_the_dashboard_for_the_sidecar(helm: str) -> None:
    objs = render(helm, *ALL_ON)
    cm = one(objs, "ConfigMap", "-dashboards")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["namespace"] == "fto-system"
    assert json.loads(cm["data"]["finetune-operator.json"]) == json.loads(paths.DASHBOARD_JSON.read_text())

    objs = render(
        helm,
        *ALL_ON,
        "monitoring.dashboards.namespace=monitoring",
        "monitoring.dashboards.annotations.grafana_folder=ML",
    )
    cm = one(objs, "ConfigMap", "-dashboards")
    assert cm["metadata"]["namespace"] == "monitoring"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "ML"}
