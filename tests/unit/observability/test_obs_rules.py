"""Alert rules: generated files up to date, promtool check + unit tests, annotations, metric names, and the
chart's PrometheusRule rendering to the same rules as the plain file (and following its values)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from finetune_api import metric_catalog as catalog
from finetune_observability import alerts, promql

from tests.integration.chart.helm import render_error, template
from tests.unit.observability import repo_files as paths


def _promtool(promtool: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool, *args], capture_output=True, text=True, timeout=120, check=False)


def test_committed_rules_are_generated() -> None:
    assert paths.RULES_FILE.read_text() == alerts.render_rules_file(), "run `finetune-observability --write`"
    assert paths.RULE_TEMPLATE.read_text() == alerts.render_helm_template(), (
        "run `finetune-observability --write`"
    )


def test_promtool_check_rules(promtool: str) -> None:
    r = _promtool(promtool, "check", "rules", str(paths.RULES_FILE))
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"SUCCESS: {len(alerts.RULES)} rules found" in r.stdout


def test_promtool_check_config(promtool: str) -> None:
    r = _promtool(promtool, "check", "config", str(paths.PROMETHEUS_YML))
    assert r.returncode == 0, r.stdout + r.stderr


def test_promtool_rule_unit_tests(promtool: str) -> None:
    """Restart loop, no checkpoint, job failed and latency regression fire (and stay quiet) on synthetic
    series (tests/unit/observability/rules_test.yml)."""
    r = _promtool(promtool, "test", "rules", str(paths.PROMTOOL_TESTS))
    assert r.returncode == 0, r.stdout + r.stderr
    tested = {
        t["alertname"]
        for g in yaml.safe_load(paths.PROMTOOL_TESTS.read_text())["tests"]
        for t in g.get("alert_rule_test", [])
    }
    assert tested == {r.alert for r in alerts.RULES}, "every alert has a promtool unit test"


def test_promtool_fails_a_wrong_expectation(promtool: str, tmp_path: Path) -> None:
    """The unit tests can fail: expecting the restart loop at 2m is refused."""
    doc = yaml.safe_load(paths.PROMTOOL_TESTS.read_text())
    doc["rule_files"] = [str(paths.RULES_FILE)]
    group = doc["tests"][0]
    group["alert_rule_test"] = [
        {
            "alertname": "FineTuneJobRestartLoop",
            "eval_time": "2m",
            "exp_alerts": [{"exp_labels": {"severity": "warning", "namespace": "ml", "finetunejob": "a"}}],
        }
    ]
    doc["tests"] = [group]
    f = tmp_path / "t.yml"
    f.write_text(yaml.safe_dump(doc))
    r = _promtool(promtool, "test", "rules", str(f))
    assert r.returncode != 0 and "FAILED" in r.stdout + r.stderr


def test_every_rule_is_documented_and_labelled() -> None:
    rules = [r for g in alerts.build_rules()["groups"] for r in g["rules"]]
    assert {r["alert"] for r in rules} == {
        "FineTuneJobNoCheckpoint",
        "FineTuneJobRestartLoop",
        "FineTuneJobRestartStorm",
        "FineTuneCheckpointSaveLatencyRegression",
        "FineTuneJobFailed",
        "FineTuneJobCheckpointUploadsFailing",
        "FineTuneJobEmergencySaveLate",
    }
    for r in rules:
        assert r["labels"]["severity"] in {"warning", "critical", "info"}
        ann = r["annotations"]
        for key in ("summary", "description", "runbook", "runbook_url"):
            assert ann.get(key, "").strip(), f"{r['alert']}: no {key}"
        assert ann["runbook_url"].endswith("#" + r["alert"].lower())
        assert "<<" not in yaml.safe_dump(r), "a parameter was left unfilled"


@pytest.mark.parametrize("rule", alerts.RULES, ids=[r.alert for r in alerts.RULES])
def test_rules_use_only_documented_metrics(rule: alerts.Rule) -> None:
    names = promql.metric_names(rule.expr)
    assert names and names <= set(catalog.SERIES), names - set(catalog.SERIES)
    # Aggregations keep the job's identity: the alert says which FineTuneJob.
    assert "finetunejob" in rule.expr


def test_rules_with_small_windows_are_valid(promtool: str, tmp_path: Path) -> None:
    """The overrides the integration test uses produce valid rules too."""
    f = tmp_path / "fast.rules.yml"
    f.write_text(
        yaml.safe_dump(
            alerts.build_rules(
                {"restart_window": "2m", "restart_threshold": "1", "no_checkpoint_window": "30s"}
            )
        )
    )
    r = _promtool(promtool, "check", "rules", str(f))
    assert r.returncode == 0, r.stdout + r.stderr


# --- the chart's PrometheusRule ---------------------------------------------------------------------------
def _render_rule(helm: str, *sets: str) -> dict[str, Any] | None:
    """The chart's PrometheusRule, or None when the values render none."""
    flags = ["--api-versions", "monitoring.coreos.com/v1/PrometheusRule"]
    flags += ["--show-only", "templates/prometheusrule.yaml"] + [f for s in sets for f in ("--set", s)]
    try:
        docs = template(helm, *flags)
    except AssertionError as error:
        if "could not find template" in str(error):  # --show-only: the template rendered nothing
            return None
        raise
    return docs[0] if docs else None


def test_chart_rule_equals_plain_rules_file(helm: str) -> None:
    rule = _render_rule(helm, "monitoring.prometheusRule.enabled=true")
    assert rule is not None and rule["kind"] == "PrometheusRule"
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["spec"] == yaml.safe_load(paths.RULES_FILE.read_text())


def test_chart_rule_follows_values(helm: str) -> None:
    rule = _render_rule(
        helm,
        "monitoring.prometheusRule.enabled=true",
        "monitoring.prometheusRule.checkpointIntervalSeconds=300",
        "monitoring.prometheusRule.noCheckpointFactor=4",
        "monitoring.prometheusRule.restartLoopWindow=30m",
        "monitoring.prometheusRule.restartLoopThreshold=6",
        "monitoring.prometheusRule.labels.release=kube-prometheus-stack",
    )
    assert rule is not None
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    expected = alerts.build_rules(
        {"no_checkpoint_window": "1200s", "restart_window": "30m", "restart_threshold": "6"}
    )
    assert rule["spec"] == expected


def test_chart_rule_needs_enabled_and_the_crd(helm: str) -> None:
    assert _render_rule(helm) is None  # default values: off
    stderr = render_error(
        helm,
        "--set",
        "monitoring.prometheusRule.enabled=true",
        "--show-only",
        "templates/prometheusrule.yaml",
    )
    assert "could not find template" in stderr, "rendered without the CRD's API"
