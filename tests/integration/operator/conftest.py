"""Fixtures for the operator's tests on the local real cluster: the CRD, the tiny trainer image, and the
operator running as a subprocess of the test (so a test can kill and restart it).

The scenarios themselves live in tests/scenarios/operator_scenarios.py; `LocalProvider` is this cluster's
implementation of their `Provider`.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes.client.rest import ApiException

from tests.harness import disruptions
from tests.harness.cluster import TRAINER_IMAGE, Cluster
from tests.harness.kube import Kube, delete_jobs, wait_for

REPO = Path(__file__).resolve().parents[3]
TINY_IMAGE = os.environ.get("FTO_TINY_IMAGE", "localhost/finetune-trainer:tiny")
OPERATOR_BIN = Path(sys.executable).parent / "finetune-operator"
GROUP, VERSION, PLURAL = "finetune.dev", "v1alpha1", "finetunejobs"
#: The operator's knobs for tests: a lost node is confirmed after 20 s (default 120 s) and trainer pods leave
#: an unreachable node after 10 s (default 30 s).
NODE_LOST_SECONDS = "20"
UNREACHABLE_TOLERATION_SECONDS = "10"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class OperatorProcess:
    """`finetune-operator --namespace NS` as a child process, logging JSON to a file."""

    def __init__(
        self,
        kubeconfig: Path,
        namespace: str,
        log_dir: Path,
        extra_args: tuple[str, ...] = (),
        name: str = "operator",
    ):
        self.kubeconfig, self.namespace, self.log_dir = kubeconfig, namespace, log_dir
        self.extra_args, self.name = extra_args, name
        self.proc: subprocess.Popen[bytes] | None = None
        self.metrics_port = _free_port()
        self.health_port = _free_port()
        self.starts = 0

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"{self.name}-{self.namespace}.log"

    def start(self, timeout: float = 60) -> None:
        assert self.proc is None
        self.starts += 1
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig)}
        log = open(self.log_path, "ab")  # noqa: SIM115  (owned by the child)
        self.proc = subprocess.Popen(
            [
                str(OPERATOR_BIN),
                "--namespace",
                self.namespace,
                "--metrics-port",
                str(self.metrics_port),
                "--health-port",
                str(self.health_port),
                "--bind-address",
                "127.0.0.1",
                "--node-lost-seconds",
                NODE_LOST_SECONDS,
                "--unreachable-toleration-seconds",
                UNREACHABLE_TOLERATION_SECONDS,
                *self.extra_args,
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        wait_for(self._healthy, timeout, interval=0.2, what="operator /healthz")

    def _healthy(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"operator exited {self.proc.returncode}: {self.log_path.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/healthz", timeout=1) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def stop(self, kill: bool = False) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            return str(r.read().decode())


class LocalProvider:
    """The scenarios' Provider on the local cluster (hack/cluster.sh)."""

    def __init__(self, cluster: Cluster, kube: Kube, namespace: str, operator: OperatorProcess):
        self.cluster, self.kube, self.namespace, self.operator = cluster, kube, namespace, operator
        self.node_name = cluster.node_name
        self.trainer_image = TINY_IMAGE

    def read_volume_file(self, namespace: str, claim: str, path: str) -> bytes:
        pvc = self.kube.core.read_namespaced_persistent_volume_claim(claim, namespace)
        pv = self.kube.core.read_persistent_volume(pvc.spec.volume_name)
        assert pv.spec.host_path is not None, "the local cluster's volumes are host-path volumes"
        return (Path(pv.spec.host_path.path) / path).read_bytes()

    def restart_operator(self, kill: bool = True) -> None:
        self.operator.stop(kill=kill)
        self.operator.start()

    def stop_operator(self) -> None:
        self.operator.stop(kill=True)

    def start_operator(self) -> None:
        self.operator.start()

    def vanish_node(self) -> None:
        disruptions.vanish_node(self.cluster, self.kube)

    def restore_node(self) -> None:
        disruptions.restore_node(self.cluster, self.kube)


def _image_present(image: str) -> bool:
    sock = (
        Path(os.environ.get("FTO_STATE", "/var/tmp/finetune-operator/cluster")) / "containerd/containerd.sock"
    )
    out = subprocess.run(
        ["ctr", "--address", str(sock), "-n", "k8s.io", "images", "ls", "-q"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()
    return image in out


@pytest.fixture(scope="session")
def tiny_image(cluster: Cluster) -> str:
    """The trainer image with the tiny model, (re)built on top of the current trainer image.

    Always run: the build is cached (seconds when nothing changed), and checking only that the image exists
    would test an old trainer after a code change.
    """
    if not _image_present(TRAINER_IMAGE):
        pytest.fail(f"{TRAINER_IMAGE} is not in the node (run hack/cluster.sh images)")
    r = subprocess.run(
        [str(REPO / "tests/integration/operator/build_tiny_image.sh")],
        capture_output=True,
        text=True,
        check=False,
        timeout=900,
    )
    if r.returncode != 0:
        pytest.fail(f"building {TINY_IMAGE} failed:\n{r.stderr[-3000:]}")
    return TINY_IMAGE


@pytest.fixture
def operator(
    cluster: Cluster,
    kube: Kube,
    namespace: str,
    crd: None,
    tiny_image: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[OperatorProcess]:
    log_dir = Path(os.environ.get("FTO_TEST_LOGS", str(tmp_path_factory.mktemp("operator-logs"))))
    log_dir.mkdir(parents=True, exist_ok=True)
    proc = OperatorProcess(cluster.kubeconfig, namespace, log_dir)
    proc.start()
    yield proc
    # Delete the jobs while the operator still runs (it removes its finalizers), then stop it.
    try:
        if proc.proc is None:
            proc.start()
        delete_jobs(kube, namespace)
    except (ApiException, TimeoutError) as error:  # leave a trace, do not mask the test's own failure
        print(f"cleanup of {namespace}: {error}", file=sys.stderr)
    finally:
        proc.stop()
        print(f"operator log: {proc.log_path}", file=sys.stderr)


@pytest.fixture
def provider(cluster: Cluster, kube: Kube, namespace: str, operator: OperatorProcess) -> LocalProvider:
    return LocalProvider(cluster, kube, namespace, operator)
