"""Where the generated and hand-written observability files live in the repository."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
CHART = REPO / "charts" / "finetune-operator"
DASHBOARD_JSON = CHART / "dashboards" / "finetune-operator.json"
RULE_TEMPLATE = CHART / "templates" / "prometheusrule.yaml"
RULES_FILE = REPO / "deploy" / "prometheus" / "finetune-operator.rules.yml"
PROMETHEUS_YML = REPO / "deploy" / "prometheus" / "prometheus.yml"
PROMTOOL_TESTS = REPO / "tests" / "unit" / "observability" / "rules_test.yml"
DOCS = REPO / "docs" / "observability.md"
