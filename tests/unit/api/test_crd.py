"""The committed CRD files are exactly what the model generates, and the schema is structural."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from finetune_api.crd import CRD_PATHS, build_crd, main, render_crd

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


def test_printer_columns_and_names() -> None:
    version = build_crd()["spec"]["versions"][0]
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert columns[:4] == ["Phase", "Step", "Restarts", "Last checkpoint"] and columns[-1] == "Age"
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
