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


IMMUTABLE_EDITS = {
    "model": {"name_or_path": "/models/other"},
    "dataset": {"path": "/data/other.jsonl"},
    "lora": {"r": 16},
    "training": {"learning_rate": 0.0001},
}


def test_training_defining_fields_are_immutable_the_rest_takes_effect_later(
    kube: Kube, crd: None, namespace: str, tmp_path: Path
) -> None:
    """An edit of model, dataset, lora or training is refused by the apiserver with a message saying to
    create a new job (a running job would resume its checkpoints under another spec); resources,
    scheduling, restartPolicy, image and env edits are accepted (the next attempt uses them)."""
    manifest = {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "edits"},
        # suspended: no operator acts on it, whatever watches this cluster
        "spec": {
            "model": {"name_or_path": "/models/tiny"},
            "dataset": {"examples": [{"text": "one"}, {"text": "two"}]},
            "training": {"max_steps": 10},
            "resources": {"gpus": 0, "memory": "1Gi"},
            "suspend": True,
        },
    }
    path = tmp_path / "job.yaml"
    path.write_text(json.dumps(manifest))
    kube.kubectl("apply", "-n", namespace, "-f", str(path))

    def spec() -> dict:
        return json.loads(kube.kubectl("get", "ftj", "edits", "-n", namespace, "-o", "json").stdout)["spec"]

    before = spec()
    for section, edit in IMMUTABLE_EDITS.items():
        patch = json.dumps({"spec": {section: edit}})
        result = kube.kubectl(
            "patch", "ftj", "edits", "-n", namespace, "--type", "merge", "-p", patch, check=False
        )
        assert result.returncode != 0, f"the apiserver accepted an edit of spec.{section}"
        assert f"spec.{section} cannot change once the job exists" in result.stderr, result.stderr
        assert "create a new FineTuneJob" in result.stderr, result.stderr
    # inline examples are compared in full too (free-form objects inside a list)
    changed = {
        **manifest,
        "spec": {**manifest["spec"], "dataset": {"examples": [{"text": "one"}, {"text": "2"}]}},
    }
    path.write_text(json.dumps(changed))
    result = kube.kubectl("apply", "-n", namespace, "-f", str(path), check=False)
    assert result.returncode != 0 and "spec.dataset cannot change" in result.stderr, result.stderr
    assert spec() == before

    editable = {
        "resources": {"memory": "2Gi", "cpu": "2"},
        "scheduling": {"nodeSelector": {"pool": "gpu"}},
        "restartPolicy": {"maxPreemptions": 50, "imagePullTimeoutSeconds": 1200},
        "image": "registry.example/trainer:0.2.0",
        "env": [{"name": "NCCL_DEBUG", "value": "INFO"}],
    }
    kube.kubectl(
        "patch", "ftj", "edits", "-n", namespace, "--type", "merge", "-p", json.dumps({"spec": editable})
    )
    after = spec()
    assert after["resources"]["memory"] == "2Gi" and after["resources"]["cpu"] == "2"
    assert after["scheduling"]["nodeSelector"] == {"pool": "gpu"}
    assert after["restartPolicy"]["maxPreemptions"] == 50
    assert after["image"] == "registry.example/trainer:0.2.0"
    assert after["env"] == [{"name": "NCCL_DEBUG", "value": "INFO"}]
    for section in IMMUTABLE_EDITS:
        assert after[section] == before[section]
