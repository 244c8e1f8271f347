"""Real Kueue (tests/harness/kueue.py) for the Kueue integration's cluster tests: started once per session,
removed (objects, webhooks, CRDs) at the end so the rest of the suite sees a cluster without Kueue."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest

from tests.harness.kube import Kube
from tests.harness.kueue import Kueue, leftovers
from tests.integration.operator.conftest import operator, provider, tiny_image  # noqa: F401  (fixtures)


@pytest.fixture(scope="session")
def kueue(kube: Kube) -> Iterator[Kueue]:
    k = Kueue.start(kube)
    print(f"kueue started in {k.start_seconds:.1f} s (log {k.log_path})", file=sys.stderr)
    try:
        yield k
    finally:
        k.stop()
    # Other tests share this cluster: a Kueue CRD, webhook or namespace left behind would change them.
    left = leftovers(kube)
    assert not left, f"the Kueue harness left {left}"
