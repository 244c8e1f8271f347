"""Fixtures for the observability tests: promtool, helm, an empty Prometheus."""

from __future__ import annotations

import glob
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import grafana_schema
from tests.harness.prometheus import INSTALL_HINT, LocalPrometheus


def _missing(what: str) -> None:
    """Skip on a developer machine; in CI (CI set) a missing tool is a failure, not a silent skip."""
    if os.environ.get("CI"):
        pytest.fail(f"{what} (CI must run tests/harness/install_prometheus.sh)")
    pytest.skip(what)


@pytest.fixture(scope="session")
def promtool() -> str:
    path = shutil.which("promtool")
    if not path:
        _missing(INSTALL_HINT)
    assert path
    return path


def find_helm() -> str | None:
    """helm from $FTO_HELM, $PATH, or the cluster build cache (hack/cluster.sh build)."""
    path = os.environ.get("FTO_HELM") or shutil.which("helm")
    if path:
        return path
    cache = os.environ.get("FTO_CACHE", os.path.expanduser("~/.cache/finetune-operator"))
    found = sorted(glob.glob(f"{cache}/k8s/*/bin/helm"))
    return found[-1] if found else None


@pytest.fixture(scope="session")
def helm() -> str:
    path = find_helm()
    if not path:
        pytest.skip("helm not found (hack/cluster.sh build puts it in ~/.cache/finetune-operator/k8s/*/bin)")
    assert path
    return path


@pytest.fixture(scope="session")
def empty_prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalPrometheus]:
    """A real Prometheus with an empty TSDB: its query API parses (and type-checks) any PromQL we send."""
    if not shutil.which("prometheus"):
        _missing(INSTALL_HINT)
    prom = LocalPrometheus(workdir=tmp_path_factory.mktemp("prom-empty"))
    prom.start()
    yield prom
    prom.stop()


@pytest.fixture(scope="session")
def grafana_schema_check() -> Path:
    """Grafana's dashboard schema checker, built (cached) from tests/harness/grafana-schema-check."""
    try:
        return grafana_schema.binary()
    except grafana_schema.ToolUnavailable as e:
        pytest.skip(f"Grafana's dashboard schema check cannot be built here: {e}")
