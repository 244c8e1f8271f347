"""The Grafana dashboard: generated file up to date, valid JSON model, every query parses in a real
Prometheus and references only documented metrics with the dashboard's variables."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from finetune_api import metric_catalog as catalog
from finetune_observability import dashboard, promql

from tests.harness import grafana_schema
from tests.harness.prometheus import LocalPrometheus, PrometheusError
from tests.unit.observability import repo_files as paths

TARGETS = dashboard.all_targets()
IDS = [f"{p.title}/{t.legend or i}" for i, (p, t) in enumerate(TARGETS)]
JSON_PATH = paths.DASHBOARD_JSON


def test_committed_dashboard_is_generated_from_the_panel_list() -> None:
    assert JSON_PATH.read_text() == dashboard.render(), "run `finetune-observability --write`"


def test_dashboard_matches_grafanas_own_schema(grafana_schema_check: Path) -> None:
    """Grafana's dashboard and panel schemas (grafana-foundation-sdk): no unknown or mistyped field, no
    required one missing, in the dashboard, its variables, every panel's options and every query."""
    r = grafana_schema.check(grafana_schema_check, JSON_PATH)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"ok ({len(json.loads(JSON_PATH.read_text())['panels'])} panels)" in r.stdout


def test_grafanas_schema_refuses_a_wrong_panel(grafana_schema_check: Path, tmp_path: Path) -> None:
    """The schema check is real: a heatmap legend shaped like a time series' (as this dashboard had it before
    the check existed) and a mistyped gridPos are refused, each named."""
    d = dashboard.build_dashboard()
    heatmap = next(p for p in d["panels"] if p["type"] == "heatmap")
    heatmap["options"]["legend"] = {"displayMode": "list", "placement": "bottom", "showLegend": True}
    d["panels"][1]["gridPos"]["w"] = "12"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(d))
    r = grafana_schema.check(grafana_schema_check, bad)
    assert r.returncode == 1, r.stdout + r.stderr
    index = d["panels"].index(heatmap)
    assert f"panels[{index}].options.legend.HeatmapLegend: unexpected field 'placement'" in r.stdout
    assert "panels[1].gridPos.w: json: cannot unmarshal string" in r.stdout


def test_dashboard_json_model() -> None:
    d = json.loads(JSON_PATH.read_text())
    assert d["uid"] == dashboard.UID and d["title"]
    assert isinstance(d["schemaVersion"], int)
    names = [v["name"] for v in d["templating"]["list"]]
    assert names == ["datasource", "namespace", "finetunejob"]
    ds = d["templating"]["list"][0]
    assert ds["type"] == "datasource" and ds["query"] == "prometheus"
    for v in d["templating"]["list"][1:]:
        assert v["type"] == "query" and v["includeAll"] and v["allValue"] == ".*"
        assert v["datasource"] == {"type": "prometheus", "uid": "${datasource}"}

    panels = d["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    occupied: set[tuple[int, int]] = set()
    graph = [p for p in panels if p["type"] != "row"]
    assert len(graph) == len(dashboard.PANELS)
    for p in panels:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24 and g["h"] > 0, p["title"]
        cells = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & occupied, f"panel {p['title']!r} overlaps another"
        occupied |= cells
        if p["type"] == "row":
            continue
        assert p["type"] in {"timeseries", "stat", "table", "heatmap"}
        assert p["datasource"]["uid"] == "${datasource}"
        assert p["description"], p["title"]
        assert p["targets"], p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs))
        for t in p["targets"]:
            assert t["expr"].strip() and t["datasource"]["uid"] == "${datasource}"


@pytest.mark.parametrize(("panel", "target"), TARGETS, ids=IDS)
def test_query_uses_only_documented_metrics_and_the_variables(
    panel: dashboard.Panel, target: dashboard.Target
) -> None:
    names = promql.metric_names(target.expr)
    assert names, "every panel query reads at least one finetune_* metric"
    unknown = names - set(catalog.SERIES)
    assert not unknown, f"not documented in catalog.py: {unknown}"
    # Every selector filters on the dashboard's variables (on the job too wherever the metric has it).
    for m in re.finditer(r"\b(finetune_[a-zA-Z0-9_]+)(\{[^}]*\})?", target.expr):
        has_job = "finetunejob" in catalog.SERIES[m.group(1)].labels
        expected = dashboard.SEL if has_job else dashboard.NSSEL
        assert m.group(2) == "{" + expected + "}", f"{m.group(1)} without the variable selector"
    allowed = {"namespace", "finetunejob", "__rate_interval", "__interval", "__range"}
    assert promql.variables(target.expr) <= allowed


def test_every_operator_metric_is_on_the_dashboard() -> None:
    used = {catalog.SERIES[n].name for _, t in TARGETS for n in promql.metric_names(t.expr)}
    missing = {m.name for m in catalog.OPERATOR_METRICS} - used
    assert not missing, f"operator metrics without a panel: {missing}"


@pytest.mark.parametrize(("panel", "target"), TARGETS, ids=IDS)
def test_query_parses_in_prometheus(
    empty_prometheus: LocalPrometheus, panel: dashboard.Panel, target: dashboard.Target
) -> None:
    expr = promql.substitute(target.expr, promql.test_values(window="5m"))
    try:
        empty_prometheus.query(expr)
    except PrometheusError as e:
        pytest.fail(f"{panel.title}: {e}\n{expr}")


def test_variable_queries_parse_in_prometheus(empty_prometheus: LocalPrometheus) -> None:
    d = dashboard.build_dashboard()
    for v in d["templating"]["list"][1:]:
        m = re.fullmatch(r"label_values\((.+), (\w+)\)", v["query"])
        assert m, v["query"]
        selector = promql.substitute(m.group(1), promql.test_values())
        assert empty_prometheus.label_values(m.group(2), selector) == []


def test_a_bad_query_is_refused(empty_prometheus: LocalPrometheus) -> None:
    """The parse check above is real: Prometheus refuses broken PromQL."""
    with pytest.raises(PrometheusError, match="bad_data"):
        empty_prometheus.query("sum by (le (rate(finetune_jobs[5m]))")
    with pytest.raises(PrometheusError):
        empty_prometheus.query('histogram_quantile(0.5, finetune_jobs{phase="x"}[5m])')


def test_docs_describe_every_panel_and_alert() -> None:
    from finetune_observability import alerts

    text = paths.DOCS.read_text()
    for p in dashboard.PANELS:
        assert f"**{p.title}**" in text, f"docs/observability.md does not describe panel {p.title!r}"
    for r in alerts.RULES:
        assert f"### {r.alert}\n" in text, f"docs/observability.md has no section for {r.alert}"
    for m in catalog.ALL_METRICS:
        assert f"`{m.name}`" in text, f"docs/observability.md does not name {m.name}"


def test_render_svg_draws_every_panel() -> None:
    import xml.etree.ElementTree as ET

    from tests.harness import dashboard_svg as render

    panels = [
        {
            "title": p.title,
            "unit": p.unit,
            "series": [("a", [(0.0, 1.0), (1.0, 2.0), (30.0, 3.0), (31.0, 4.0)])] if i % 2 else [],
        }
        for i, p in enumerate(dashboard.PANELS)
    ]
    root = ET.fromstring(render.svg(panels, "t", 0.0, 60.0))
    texts = [t.text for t in root.iter("{http://www.w3.org/2000/svg}text")]
    assert {p.title for p in dashboard.PANELS} <= set(texts)
    with_data = len(dashboard.PANELS) // 2
    # Two lines per panel with data (the 29 s gap breaks the line); the others say "no data".
    assert len(list(root.iter("{http://www.w3.org/2000/svg}polyline"))) == 2 * with_data
    assert texts.count("no data") == len(dashboard.PANELS) - with_data
