"""Find, start and stop the local cluster through hack/cluster.sh."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
CLUSTER_SH = REPO_ROOT / "hack" / "cluster.sh"
DEFAULT_STATE = "/var/tmp/finetune-operator/cluster"

#: Images the harness tests run; `hack/cluster.sh up` imports it into the node.
TESTBOX_IMAGE = "localhost/fto-testbox:1"
TRAINER_IMAGE = "localhost/finetune-trainer:dev"
OPERATOR_IMAGE = "localhost/finetune-operator:dev"


class ClusterUnavailable(RuntimeError):
    """The cluster is not up and may not be started here (not root, FTO_CLUSTER=existing, ...)."""


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CLUSTER_SH), *args], capture_output=True, text=True, timeout=timeout, check=False
    )


@dataclass
class Cluster:
    """The local single-node cluster. `started_here` is True when this process brought it up."""

    state_dir: Path = field(default_factory=lambda: Path(os.environ.get("FTO_STATE", DEFAULT_STATE)))
    node_name: str = field(default_factory=lambda: os.environ.get("FTO_NODE_NAME", "fto-node"))
    started_here: bool = False

    @property
    def kubeconfig(self) -> Path:
        return self.state_dir / "kubeconfig"

    def is_up(self) -> bool:
        if not self.kubeconfig.exists():
            return False
        r = _run(["status"], timeout=30)
        return r.returncode == 0 and f"node {self.node_name}: Ready" in r.stdout

    def status(self) -> str:
        return _run(["status"], timeout=30).stdout

    def up(self, build: bool = True) -> None:
        """Start the cluster (building the binaries first when they are missing and `build`)."""
        if os.geteuid() != 0:
            raise ClusterUnavailable("the local cluster needs root (kubelet, containerd, network namespaces)")
        if build:
            # Cached: seconds when already built; the first (cold) build prints its progress.
            r = _run(["build"], timeout=3600)
            if r.returncode != 0:
                raise ClusterUnavailable(f"hack/cluster.sh build failed:\n{r.stderr[-3000:]}")
        t0 = time.monotonic()
        r = _run(["up"], timeout=300)
        if r.returncode != 0:
            raise ClusterUnavailable(f"hack/cluster.sh up failed:\n{r.stderr[-3000:]}")
        self.started_here = True
        self.up_seconds = time.monotonic() - t0

    def down(self) -> None:
        r = _run(["down"], timeout=300)
        if r.returncode != 0:
            raise RuntimeError(f"hack/cluster.sh down failed:\n{r.stderr[-3000:]}")
        self.started_here = False

    # --- the node vanishing, for disruption tests ----------------------------------------------
    def stop_node(self, kill_pods: bool = True) -> None:
        """SIGKILL the kubelet (and every pod process): the machine is gone, nobody says goodbye."""
        r = _run(["node-stop", *(["--kill-pods"] if kill_pods else [])], timeout=60)
        if r.returncode != 0:
            raise RuntimeError(f"node-stop failed: {r.stderr}")

    def start_node(self) -> None:
        r = _run(["node-start"], timeout=180)
        if r.returncode != 0:
            raise RuntimeError(f"node-start failed: {r.stderr}")


def have_prerequisites() -> str | None:
    """None when this machine can run the cluster, else why not (one line)."""
    if os.geteuid() != 0:
        return "not root"
    for tool in ("etcd", "containerd", "runc", "iptables", "openssl"):
        if shutil.which(tool) is None:
            return f"{tool} missing (run: hack/cluster.sh tools)"
    return None
