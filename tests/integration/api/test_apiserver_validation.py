"""Two validation layers, one verdict: every manifest under tests/manifests (and every example) goes through
the model the way the trainer CLI reads it (`load_document` + `parse_job`) and through the real apiserver
(`kubectl apply --dry-run=server`, nothing is created); both must accept it, or both refuse it naming the same
fields (the manifest's `# expect:` field among them). For accepted ones, the object the apiserver would store
(its defaults filled in) equals the model's view of it."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from finetune_api import InvalidManifest, load_document, parse_job
from kubernetes import client

from tests.harness import Kube

ROOT = Path(__file__).resolve().parents[3]
CRD = ROOT / "crds" / "finetune.dev_finetunejobs.yaml"
MANIFESTS = ROOT / "tests" / "manifests"
INVALID = sorted((MANIFESTS / "invalid").glob("*.yaml"))
VALID = sorted(MANIFESTS.glob("*.yaml")) + sorted((MANIFESTS / "valid").glob("*.yaml"))
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
# The apiserver's one line when a schema error stops it from running the CEL rules (k8s: hasBlockingErr).
NOT_CHECKED = "some validation rules were not checked"

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def dry_run_namespace(kube: Kube, crd: None) -> Iterator[str]:
    """One namespace for all the dry runs (they create nothing; each test checks that)."""
    name = f"t-api-validation-{uuid.uuid4().hex[:5]}"
    kube.core.create_namespace(
        client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels={"finetune-operator.test": "true"}))
    )
    yield name
    kube.core.delete_namespace(name, grace_period_seconds=0, propagation_policy="Background")


def expected_field(path: Path) -> str:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# expect: "), f"{path.name} must start with '# expect: <field path>'"
    return first.removeprefix("# expect: ").strip()


def model_fields(path: Path) -> set[str]:
    """The fields the trainer's validation names (empty: accepted)."""
    try:
        parse_job(load_document(path), path.name)
    except InvalidManifest as error:
        return {line.split(": ", 1)[0] for line in error.errors}
    return set()


def apiserver_fields(stderr: str) -> set[str]:
    """Fields in kubectl's error: `is invalid: <field>: …`, `* <field>: …` or `unknown field "<field>"`."""
    fields = set(re.findall(r'unknown field "([^"]+)"', stderr))
    for match in re.finditer(r"(?:is invalid: |^\* )(\S+): (.*)$", stderr, re.MULTILINE):
        field, rest = match.groups()
        if field == "<nil>" and NOT_CHECKED in rest:
            continue
        # The apiserver's type check adds `<nil>: …: Checked value must be of type integer … in <field>`.
        named = re.search(r" in (\S+)$", rest) if field == "<nil>" else None
        fields.add(named.group(1) if named else field)
    return fields


def dry_run(kube: Kube, namespace: str, path: Path, *extra: str) -> Any:
    return kube.kubectl("apply", "--dry-run=server", "-n", namespace, "-f", str(path), *extra, check=False)


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.stem)
def test_both_layers_refuse_naming_the_same_field(kube: Kube, dry_run_namespace: str, path: Path) -> None:
    result = dry_run(kube, dry_run_namespace, path)
    assert result.returncode != 0, f"the apiserver accepted {path.name}:\n{result.stdout}"
    field = expected_field(path)
    assert field in result.stderr, result.stderr
    from_apiserver, from_model = apiserver_fields(result.stderr), model_fields(path)
    assert from_model == from_apiserver and field in from_model, result.stderr
    if field == "metadata.name":  # the job-name rules name their field
        assert "<nil>" not in result.stderr, result.stderr
    listed = kube.kubectl("get", "ftj", "-n", dry_run_namespace, "-o", "name").stdout
    assert listed.strip() == ""


def without_nulls(value: Any) -> Any:
    """Nulls and empty lists/maps mean 'not set' on both sides (the CRD has no default for an empty list)."""
    if isinstance(value, dict):
        return {k: without_nulls(v) for k, v in value.items() if v is not None and v != [] and v != {}}
    if isinstance(value, list):
        return [without_nulls(v) for v in value]
    return value


@pytest.mark.parametrize("path", VALID + EXAMPLES, ids=lambda p: p.stem)
def test_both_layers_accept_and_store_the_same_spec(kube: Kube, dry_run_namespace: str, path: Path) -> None:
    result = dry_run(kube, dry_run_namespace, path, "-o", "json")
    assert result.returncode == 0, result.stderr
    assert model_fields(path) == set()
    stored = without_nulls(json.loads(result.stdout)["spec"])
    modelled = parse_job(load_document(path)).spec.model_dump(mode="json", by_alias=True, exclude_none=True)
    assert stored == without_nulls(modelled)


def test_apiserver_fills_in_the_model_defaults(kube: Kube, dry_run_namespace: str) -> None:
    """Defaults come from the same model: a minimal job reads back with the seed's training settings."""
    result = dry_run(kube, dry_run_namespace, MANIFESTS / "minimal-job.yaml", "-o", "json")
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


def test_null_section_exponent_numbers_and_empty_class_as_stored(kube: Kube, dry_run_namespace: str) -> None:
    """What the model assumes of the apiserver: `training: null` = the defaults, 1e4 = 10000, "" kept."""
    training = json.loads(
        dry_run(kube, dry_run_namespace, MANIFESTS / "valid" / "training-null.yaml", "-o", "json").stdout
    )
    assert training["spec"]["training"]["save_steps"] == 2
    numbers = json.loads(
        dry_run(kube, dry_run_namespace, MANIFESTS / "valid" / "exponent-numbers.yaml", "-o", "json").stdout
    )
    assert numbers["spec"]["training"]["max_steps"] == 10000
    empty = json.loads(
        dry_run(
            kube, dry_run_namespace, MANIFESTS / "valid" / "storage-class-empty.yaml", "-o", "json"
        ).stdout
    )
    assert empty["spec"]["checkpoint"]["storageClassName"] == ""
