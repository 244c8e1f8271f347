"""Fixtures for the observability integration test: Prometheus installed, and the operator's own
cluster fixtures (tests/integration/operator/conftest.py: the CRD, the tiny trainer image, the operator as a
process scoped to the test's namespace, with its /metrics on a free port)."""

from __future__ import annotations

import shutil

import pytest

from tests.harness.prometheus import INSTALL_HINT
from tests.integration.operator.conftest import operator, tiny_image  # noqa: F401  (fixtures)


@pytest.fixture(scope="session")
def prometheus_installed() -> None:
    if not (shutil.which("prometheus") and shutil.which("promtool")):
        pytest.fail(INSTALL_HINT)
