"""The committed CRD files are exactly what the model generates, and the schema is structural."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from finetune_api.crd import CRD_PATHS, build_crd, main, render_crd
from finetune_api.models import FineTuneJobSpec
from finetune_api.rules import transition_violations

ROOT = Path(__file__).resolve().parents[3]


def test_committed_crds_equal_the_generated_one() -> None:
    generated = render_crd()
    for relative in CRD_PATHS:
        assert (ROOT / relative).read_text() == generated, f"{relative} is stale: run `finetune-crd --write`"


def test_check_mode_detects_a_stale_file(tmp_path: Path) -> None:
    assert main(["--write", "--root", str(tmp_path)]) == 0
    assert main(["--check", "--root", str(tmp_path)]) == 0
    (tmp_path / CRD_PATHS[0]).write_text("stale")
    assert main(["--check", "--root", str(tmp_path)]) == 1


def walk(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    found = [(path, node)]
    for name, child in node.get("properties", {}).items():
        found += walk(child, f"{path}.{name}")
    if "items" in node:
        found += walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        found += walk(node["additionalProperties"], f"{path}{{}}")
    return found


OPENAPI_KEYWORDS = {
    "type", "description", "default", "enum", "nullable", "format", "properties", "items", "required",
    "additionalProperties", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minLength",
    "maxLength", "pattern", "minItems", "maxItems", "maxProperties", "x-kubernetes-validations",
    "x-kubernetes-preserve-unknown-fields",
}  # fmt: skip


def test_schema_is_structural() -> None:
    schema = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in walk(schema):
        assert set(node) <= OPENAPI_KEYWORDS, f"{path}: {set(node) - OPENAPI_KEYWORDS}"
        assert "$ref" not in node and "anyOf" not in node and "title" not in node, path
        assert node.get("type") or node.get("x-kubernetes-preserve-unknown-fields"), f"{path} has no type"
        assert not ("properties" in node and "additionalProperties" in node), path
        for bound in ("exclusiveMinimum", "exclusiveMaximum"):
            assert node.get(bound) in (None, True), f"{path}.{bound} must be boolean in OpenAPI v3"


def test_cross_field_rules_reach_the_crd() -> None:
    text = render_crd()
    fragments = (
        "self.save_steps % self.eval_steps == 0",
        "quantity(self.maxMemory)",
        "has(self.dataset.eval_split)",
        "format.qualifiedName().validate(self)",
        "isQuantity(self)",
    )
    for fragment in fragments:
        assert fragment in text


def test_training_defining_sections_are_immutable_and_the_rest_is_not() -> None:
    """model, dataset, lora and training carry `self == oldSelf` (the apiserver refuses an edit, see
    tests/integration/api); resources, scheduling, restartPolicy, image, env, suspend stay editable."""
    spec = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    for section in ("model", "dataset", "lora", "training"):
        rules = spec["properties"][section]["x-kubernetes-validations"]
        immutable = [r for r in rules if r["rule"] == "self == oldSelf"]
        assert len(immutable) == 1 and "create a new FineTuneJob" in immutable[0]["message"], section
        assert f"spec.{section}" in immutable[0]["message"]
    for path, node in walk(spec):
        for rule in node.get("x-kubernetes-validations", []):
            if "oldSelf" in rule["rule"]:
                assert path.split(".")[-1] in ("model", "dataset", "lora", "training"), path


def test_transition_rules_are_checked_in_python_too() -> None:
    base = FineTuneJobSpec.model_validate(
        {"model": {"name_or_path": "gpt2"}, "dataset": {"path": "/d.jsonl"}, "resources": {"memory": "1Gi"}}
    )
    assert transition_violations(base, base.model_copy(deep=True)) == []
    edited = base.model_copy(
        update={
            "training": base.training.model_copy(update={"learning_rate": 1e-4}),
            "resources": base.resources.model_copy(update={"memory": "2Gi"}),
            "suspend": True,
        }
    )
    violations = transition_violations(base, edited)
    assert len(violations) == 1 and violations[0].startswith("training: spec.training cannot change")
    other_data = base.model_copy(update={"dataset": base.dataset.model_copy(update={"path": "/other.jsonl"})})
    assert [v.split(":")[0] for v in transition_violations(base, other_data)] == ["dataset"]


def test_printer_columns_and_names() -> None:
    version = build_crd()["spec"]["versions"][0]
    columns = version["additionalPrinterColumns"]
    default = [c["name"] for c in columns if not c.get("priority")]
    wide = [c["name"] for c in columns if c.get("priority")]
    # `kubectl get ftj` says why (issue 12): the reason at default priority, throughput and ETA with -o wide
    # Queue: the job's Kueue LocalQueue (label kueue.x-k8s.io/queue-name, issue 15)
    # Durable: the newest checkpoint committed in spec.checkpoint.objectStore (issue 14)
    assert default == ["Phase", "Reason", "Step", "Restarts", "Last checkpoint", "Durable", "Queue", "Age"]
    durable = next(c for c in columns if c["name"] == "Durable")
    assert durable == {"name": "Durable", "type": "integer", "jsonPath": ".status.durableCheckpointStep"}
    assert {"Steps/s", "Remaining", "Message"} <= set(wide)
    assert next(c for c in columns if c["name"] == "Reason")["jsonPath"] == ".status.reason"
    assert version["subresources"] == {"status": {}}
    names = build_crd()["spec"]["names"]
    assert names["shortNames"] == ["ftj"] and "finetune" in names["categories"]


def test_rendered_yaml_round_trips() -> None:
    assert yaml.safe_load(render_crd()) == build_crd()


def test_every_field_has_a_description_for_kubectl_explain() -> None:
    """`kubectl explain ftj.spec.<anything>` never answers `<empty>`: every property is described."""
    schema = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    properties = [
        (path, node)
        for path, node in walk(schema)
        if path and not path.endswith(("[]", "{}")) and not path.startswith(".metadata")  # ObjectMeta's own
    ]
    assert len(properties) > 100  # the whole spec and status, not a corner of it
    undescribed = [path for path, node in properties if not node.get("description", "").strip()]
    assert undescribed == []
    spec = schema["properties"]["spec"]["properties"]
    for section in ("model", "dataset", "lora", "training", "checkpoint", "resources", "scheduling"):
        assert spec[section]["description"], section
