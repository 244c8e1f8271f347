"""The real apiserver enforces the generated CRD: every invalid manifest is refused naming its field, every
example is accepted, and nothing is created either way (`kubectl apply --dry-run=server`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.harness import Kube, wait_for

ROOT = Path(__file__).resolve().parents[3]
CRD = ROOT / "crds" / "finetune.dev_finetunejobs.yaml"
INVALID = sorted((ROOT / "tests" / "manifests" / "invalid").glob("*.yaml"))
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def crd(kube: Kube) -> None:
    kube.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
    wait_for(
        lambda: (
            "True"
            in kube.kubectl(
                "get",
                "crd",
                "finetunejobs.finetune.dev",
                "-o",
                "jsonpath={.status.conditions[?(@.type=='Established')].status}",
            ).stdout
        ),
        60,
        what="CRD established",
    )


def expected_field(path: Path) -> str:
    return path.read_text().splitlines()[0].removeprefix("# expect: ").strip()


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.stem)
def test_apiserver_rejects_invalid_manifest_naming_the_field(
    kube: Kube, crd: None, namespace: str, path: Path
) -> None:
    result = kube.kubectl("apply", "--dry-run=server", "-n", namespace, "-f", str(path), check=False)
    assert result.returncode != 0, f"the apiserver accepted {path.name}:\n{result.stdout}"
    assert expected_field(path) in result.stderr, result.stderr
    listed = kube.kubectl("get", "ftj", "-n", namespace, "-o", "name").stdout
    assert listed.strip() == ""


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_apiserver_accepts_every_example(kube: Kube, crd: None, namespace: str, path: Path) -> None:
    result = kube.kubectl("apply", "--dry-run=server", "-n", namespace, "-f", str(path), check=False)
    assert result.returncode == 0, result.stderr


def test_apiserver_fills_in_the_model_defaults(kube: Kube, crd: None, namespace: str) -> None:
    """Defaults come from the same model: a minimal job reads back with the seed's training settings."""
    minimal = ROOT / "tests" / "manifests" / "minimal-job.yaml"
    result = kube.kubectl("apply", "--dry-run=server", "-n", namespace, "-f", str(minimal), "-o", "json")
    spec = json.loads(result.stdout)["spec"]
    assert spec["training"]["save_steps"] == 2 and spec["training"]["save_total_limit"] == 2
    assert spec["restartPolicy"]["maxPreemptions"] == 1000
    assert spec["checkpoint"]["terminationGracePeriodSeconds"] == 120
