"""Fixtures for the observability integration test: fto_observability importable, the tiny trainer image in
the node, the operator as a process (scoped to the test's namespace) with its /metrics on a free port."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
OBS = REPO / "hack" / "observability"
if str(OBS) not in sys.path:
    sys.path.insert(0, str(OBS))

from fto_observability.local_prometheus import free_port  # noqa: E402

from tests.harness.cluster import Cluster  # noqa: E402

TINY_IMAGE = os.environ.get("FTO_TINY_IMAGE", "localhost/finetune-trainer:tiny")
BUILD_TINY = REPO / "tests" / "integration" / "operator" / "build_tiny_image.sh"


def _node_has_image(cluster: Cluster, image: str) -> bool:
    sock = cluster.state_dir / "containerd" / "containerd.sock"
    r = subprocess.run(["ctr", "--address", str(sock), "-n", "k8s.io", "images", "ls", "-q"],
                       capture_output=True, text=True, timeout=60, check=False)
    return image in r.stdout.split()


@pytest.fixture(scope="session")
def prometheus_installed() -> None:
    if not (shutil.which("prometheus") and shutil.which("promtool")):
        pytest.fail("Debian's prometheus is not installed: run hack/observability/install.sh")


@pytest.fixture(scope="session")
def tiny_image(cluster: Cluster) -> str:
    """The trainer image with the tiny model (tests/integration/operator/build_tiny_image.sh builds it)."""
    if not _node_has_image(cluster, TINY_IMAGE):
        if not BUILD_TINY.exists():
            pytest.fail(f"{TINY_IMAGE} is not in the node and {BUILD_TINY} is missing")
        r = subprocess.run([str(BUILD_TINY)], capture_output=True, text=True, timeout=1800, check=False)
        if r.returncode != 0:
            pytest.fail(f"building {TINY_IMAGE} failed (needs hack/cluster.sh images):\n{r.stderr[-3000:]}")
    return TINY_IMAGE


@dataclass
class OperatorProcess:
    proc: subprocess.Popen[bytes]
    metrics_port: int
    log_path: Path

    @property
    def metrics_target(self) -> str:
        return f"127.0.0.1:{self.metrics_port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def operator_process(cluster: Cluster, namespace: str, tmp_path: Path) -> Iterator[OperatorProcess]:
    """`finetune-operator` watching only this test's namespace, its /metrics on 127.0.0.1:<free port>."""
    port = free_port()
    log_path = tmp_path / "operator.log"
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig)}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "finetune_operator.main", "--namespace", namespace,
             "--metrics-port", str(port), "--health-port", "0", "--bind-address", "127.0.0.1",
             "--log-format", "text"],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    op = OperatorProcess(proc, port, log_path)
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            pytest.fail(f"the operator exited {proc.returncode}:\n{op.log()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://{op.metrics_target}/metrics", timeout=2):
                break
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"the operator's /metrics did not answer in 60 s:\n{op.log()[-3000:]}")
            time.sleep(0.5)
    yield op
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
