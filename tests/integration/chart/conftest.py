"""Fixtures for the chart tests: the helm binary (built by `hack/cluster.sh build`)."""

from __future__ import annotations

import pytest

# The trainer image with the tiny offline model (built on demand by the operator suite's script).
from tests.integration.operator.conftest import tiny_image  # noqa: F401

from .helm import find_helm


@pytest.fixture(scope="session")
def helm() -> str:
    path = find_helm()
    if path is None:
        pytest.skip(
            "helm not found: run `hack/cluster.sh build` (builds helm into the cache) or set FTO_HELM"
        )
    return path
