"""Integration tests: the local real cluster's fixtures (tests/harness) and the `cluster` marker."""

import sys
from pathlib import Path

# `tests.harness` must be importable however pytest was started (rootdir-relative imports).
_root = str(Path(__file__).resolve().parents[2])
if _root not in sys.path:
    sys.path.insert(0, _root)

from tests.harness.plugin import cluster, crd, kube, namespace  # noqa: E402,F401  (fixtures)


def pytest_configure(config):
    config.addinivalue_line("markers", "cluster: needs the local real Kubernetes cluster (hack/cluster.sh)")
