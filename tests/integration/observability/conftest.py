"""Fixtures for the observability integration test: fto_observability importable, and the operator's own
cluster fixtures (tests/integration/operator/conftest.py: the CRD, the tiny trainer image, the operator as a
process scoped to the test's namespace, with its /metrics on a free port)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
OBS = REPO / "hack" / "observability"
if str(OBS) not in sys.path:
    sys.path.insert(0, str(OBS))

from tests.integration.operator.conftest import operator, tiny_image  # noqa: E402,F401  (fixtures)


@pytest.fixture(scope="session")
def prometheus_installed() -> None:
    if not (shutil.which("prometheus") and shutil.which("promtool")):
        pytest.fail("Debian's prometheus is not installed: run hack/observability/install.sh")
