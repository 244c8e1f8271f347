"""Running real helm against the chart: where the binary is, rendering, and parsing what it renders."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.harness.kube import helm_path

REPO_ROOT = Path(__file__).resolve().parents[3]
CHART = REPO_ROOT / "charts" / "finetune-operator"
FULL_VALUES = CHART / "ci" / "full-values.yaml"
# Render offline (`helm template`) for the Kubernetes version the local cluster runs, whatever helm is used.
KUBE_VERSION = "1.37.2"


find_helm = helm_path


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


def render_error(helm: str, *args: str) -> str:
    """`helm template` the chart expecting a refusal; returns helm's stderr (fails if it rendered)."""
    r = run(helm, "template", "fto", str(CHART), "--kube-version", KUBE_VERSION, *args, check=False)
    assert r.returncode != 0, f"helm template {' '.join(args)} rendered:\n{r.stdout[:2000]}"
    return r.stderr


def is_hook(obj: dict[str, Any]) -> bool:
    return "helm.sh/hook" in (obj["metadata"].get("annotations") or {})


def installed(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The release's own objects, without hook objects (the uninstall hook's Job and its RBAC)."""
    return [o for o in objects if not is_hook(o)]


def hooks(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o for o in objects if is_hook(o)]


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o.get("kind") == kind]


def one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = by_kind(objects, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]
