"""A kind cluster from kind-config.yaml, where Docker and kind exist: create, load images, read volumes,
pause a node. Everything here shells out to `docker` and `kind`; nothing runs where they are missing.

Two ways to get the cluster and its images:
- on this project's machines (no registry): `hack/kind.sh build/up/load` builds the node image, creates
  the cluster on a private Docker engine and streams the project's images into the nodes; the tests run
  with `FTO_KIND_IMAGES=loaded` and that engine's DOCKER_HOST (`hack/kind.sh env`), as `make test` does;
- with stock Docker, kind and internet: the fixture creates the cluster from kind-config.yaml, builds the
  images with `docker build` and `kind load`s them (README, "kind e2e suite").
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.harness.kube import wait_for

REPO_ROOT = Path(__file__).resolve().parents[2]
KIND_CONFIG = REPO_ROOT / "kind-config.yaml"
CLUSTER_NAME = os.environ.get("FTO_KIND_CLUSTER", "finetune-e2e")
OPERATOR_IMAGE = os.environ.get("FTO_KIND_OPERATOR_IMAGE", "localhost/finetune-operator:dev")
TRAINER_IMAGE = os.environ.get("FTO_KIND_TRAINER_IMAGE", "localhost/finetune-trainer:dev")
TINY_IMAGE = os.environ.get("FTO_KIND_TINY_IMAGE", "localhost/finetune-trainer:tiny")
TINY_CONTAINERFILE = REPO_ROOT / "trainer-image" / "Dockerfile.tiny"
# "loaded": hack/kind.sh load has put the images into the nodes already (nothing to build or load here)
IMAGES_LOADED = os.environ.get("FTO_KIND_IMAGES") == "loaded"


def why_not_available() -> str | None:
    """None when Docker (a reachable engine, not just the CLI) and kind are both usable, else why not."""
    if shutil.which("docker") is None:
        return "docker CLI not found"
    r = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True)
    if r.returncode != 0 or not r.stdout.strip():
        detail = ((r.stderr or r.stdout).strip().splitlines() or ["docker info failed"])[-1]
        return f"no Docker engine reachable: {detail}"
    if shutil.which("kind") is None:
        return "kind not found (hack/kind.sh build, or go install sigs.k8s.io/kind@latest)"
    return None


def sh(*args: str, timeout: float = 1800, check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, check=False)
    if check and r.returncode != 0:
        raise RuntimeError(
            f"{' '.join(args)} failed ({r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
        )
    return r


@dataclass
class KindCluster:
    name: str = CLUSTER_NAME
    kubeconfig: Path = Path(os.environ.get("FTO_KIND_KUBECONFIG", "/tmp/finetune-e2e.kubeconfig"))
    created_here: bool = False

    def exists(self) -> bool:
        return self.name in sh("kind", "get", "clusters").stdout.split()

    def create(self) -> None:
        """Create the cluster from kind-config.yaml (reused when it already exists)."""
        if self.exists():
            sh("kind", "export", "kubeconfig", "--name", self.name, "--kubeconfig", str(self.kubeconfig))
            return
        sh(
            "kind",
            "create",
            "cluster",
            "--name",
            self.name,
            "--config",
            str(KIND_CONFIG),
            "--kubeconfig",
            str(self.kubeconfig),
            "--wait",
            "300s",
        )
        self.created_here = True

    def delete(self) -> None:
        sh("kind", "delete", "cluster", "--name", self.name, check=False)

    # --- images ------------------------------------------------------------------------------------
    @staticmethod
    def build_images() -> None:
        """docker build the operator and trainer images from the project's Dockerfiles, and the tiny-model
        image on top (unless FTO_KIND_SKIP_BUILD=1 and they exist)."""
        have = {
            img
            for img in (OPERATOR_IMAGE, TRAINER_IMAGE, TINY_IMAGE)
            if sh("docker", "image", "inspect", img, check=False).returncode == 0
        }
        if os.environ.get("FTO_KIND_SKIP_BUILD") == "1" and len(have) == 3:
            return
        sh(
            "docker",
            "build",
            "-f",
            str(REPO_ROOT / "operator/Dockerfile"),
            "-t",
            OPERATOR_IMAGE,
            str(REPO_ROOT),
        )
        sh(
            "docker",
            "build",
            "-f",
            str(REPO_ROOT / "trainer-image/Dockerfile"),
            "-t",
            TRAINER_IMAGE,
            str(REPO_ROOT),
        )
        sh(
            "docker",
            "build",
            "-f",
            str(TINY_CONTAINERFILE),
            "--build-arg",
            f"TRAINER_IMAGE={TRAINER_IMAGE}",
            "-t",
            TINY_IMAGE,
            str(TINY_CONTAINERFILE.parent),
        )

    def load_images(self, *images: str) -> None:
        for image in images:
            sh("kind", "load", "docker-image", image, "--name", self.name)

    # --- nodes -------------------------------------------------------------------------------------
    def node_by_pool(self, kube: Any, pool: str) -> str:
        nodes = kube.core.list_node(label_selector=f"finetune.dev/pool={pool}").items
        assert len(nodes) == 1, f"kind-config.yaml should make one {pool} worker, found {len(nodes)}"
        return str(nodes[0].metadata.name)

    def pause_node(self, kube: Any, node: str) -> None:
        """The node's VM is gone: its container (kubelet and every pod) frozen, the node goes Unknown."""
        sh("docker", "pause", node)
        wait_for(lambda: kube.node_ready(node) == "Unknown", 120, what=f"{node} Ready=Unknown")

    def unpause_node(self, kube: Any, node: str) -> None:
        sh("docker", "unpause", node)
        wait_for(lambda: kube.node_ready(node) == "True", 180, what=f"{node} Ready")
        wait_for(
            lambda: (
                not [
                    t for t in (kube.node(node).spec.taints or []) if t.key.startswith("node.kubernetes.io/")
                ]
            ),
            180,
            what=f"{node}: unreachable taints lifted",
        )

    def read_volume_file(self, kube: Any, namespace: str, claim: str, path: str) -> bytes:
        """A file on a PVC of kind's local-path provisioner: a directory inside the node's container."""
        pvc = kube.core.read_namespaced_persistent_volume_claim(claim, namespace)
        pv = kube.core.read_persistent_volume(pvc.spec.volume_name)
        source = pv.spec.host_path or pv.spec.local
        terms = pv.spec.node_affinity.required.node_selector_terms
        node = terms[0].match_expressions[0].values[0]
        r = subprocess.run(
            ["docker", "exec", node, "cat", f"{source.path}/{path}"], capture_output=True, check=True
        )
        return bytes(r.stdout)
