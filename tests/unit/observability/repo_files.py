"""Repository files the observability tests read (the generated ones at the generator's paths)."""

from __future__ import annotations

from pathlib import Path

from finetune_observability import generate

from tests.harness.cluster import REPO_ROOT

DASHBOARD_JSON = REPO_ROOT / generate.DASHBOARD_JSON
RULE_TEMPLATE = REPO_ROOT / generate.RULE_TEMPLATE
RULES_FILE = REPO_ROOT / generate.RULES_FILE
PROMETHEUS_YML = REPO_ROOT / "deploy" / "prometheus" / "prometheus.yml"
PROMTOOL_TESTS = Path(__file__).with_name("rules_test.yml")
DOCS = REPO_ROOT / "docs" / "observability.md"
