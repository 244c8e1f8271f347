"""Running real helm against the chart: where the binary is, rendering, and parsing what it renders."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[3]
CHART = REPO_ROOT / "charts" / "finetune-operator"
FULL_VALUES = CHART / "ci" / "full-values.yaml"
# helm built from source without Helm's release ldflags believes the cluster is v1.20 when it renders
# offline (`helm template`); tell it the version the local cluster runs.
KUBE_VERSION = "1.37.2"


def find_helm() -> str | None:
    """helm from $FTO_HELM, the cluster build cache (hack/cluster.sh build) or $PATH."""
    if os.environ.get("FTO_HELM"):
        return os.environ["FTO_HELM"]
    cache = Path(os.environ.get("FTO_CACHE", Path.home() / ".cache" / "finetune-operator"))
    for candidate in sorted(cache.glob("k8s/*/bin/helm"), reverse=True):
        if os.access(candidate, os.X_OK):
            return str(candidate)
    return shutil.which("helm")


def run(
    helm: str, *args: str, check: bool = True, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(
        [helm, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, **(env or {})},
    )
    if check and r.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return r


def template(
    helm: str, *args: str, release: str = "fto", namespace: str = "fto-system"
) -> list[dict[str, Any]]:
    """`helm template` the chart; returns the rendered objects (empty documents dropped)."""
    r = run(
        helm, "template", release, str(CHART), "--namespace", namespace, "--kube-version", KUBE_VERSION, *args
    )
    return [doc for doc in yaml.safe_load_all(r.stdout) if doc]


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o.get("kind") == kind]


def one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = by_kind(objects, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]
