"""Generate the FineTuneJob CustomResourceDefinition from the pydantic model.

pydantic emits JSON Schema 2020-12; the apiserver wants a *structural* OpenAPI v3 schema: no $ref, no
anyOf-with-null, boolean exclusive bounds, a type on every node, free-form maps marked
x-kubernetes-preserve-unknown-fields. This module does that translation and nothing else.

    finetune-crd            # print the CRD
    finetune-crd --write    # rewrite crds/ and the chart's crds/ (a test fails while they differ)
    finetune-crd --check    # exit 1 if the committed files are stale
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Any

import yaml

from finetune_api.generated_files import sync
from finetune_api.models import (
    API_VERSION,
    GROUP,
    JOB_NAME_RULES,
    KIND,
    PLURAL,
    SHORT_NAME,
    VERSION,
    FineTuneJob,
    FineTuneJobSpec,
    FineTuneJobStatus,
)

CRD_FILE_NAME = "finetune.dev_finetunejobs.yaml"
CRD_PATHS = (
    Path("crds") / CRD_FILE_NAME,
    Path("charts") / "finetune-operator" / "crds" / CRD_FILE_NAME,
)
_DROP_KEYS = {"title", "$defs"}
_PYDANTIC_BOUNDS = {
    "ge": ("minimum", False),
    "gt": ("minimum", True),
    "le": ("maximum", False),
    "lt": ("maximum", True),
}


def _is_null(schema: dict[str, Any]) -> bool:
    return schema.get("type") == "null"


def structural(
    schema: dict[str, Any], defs: dict[str, Any], *, typed: bool = True, null_is_absent: bool = False
) -> dict[str, Any]:
    """Translate one pydantic JSON-schema node (recursively) into a structural OpenAPI v3 node.

    `typed=False` translates keywords only (the non-type half of an Optional[...] node).
    `null_is_absent`: an Optional field whose default is None is not nullable, so the apiserver prunes a
    null there as if the field were not written (what the model does with None). A null where the field
    has a default becomes the default, nullable or not (the apiserver's defaulting; the model does the same).
    """
    nested: dict[str, Any] = {"defs": defs, "null_is_absent": null_is_absent}
    if "$ref" in schema:
        target = defs[schema["$ref"].split("/")[-1]]
        merged = {**copy.deepcopy(target), **{k: v for k, v in schema.items() if k != "$ref"}}
        return structural(merged, **nested)

    if "anyOf" in schema:
        options = [option for option in schema["anyOf"] if not _is_null(option)]
        rest = {k: v for k, v in schema.items() if k != "anyOf"}
        if len(options) != 1:
            raise ValueError(f"cannot express a union in a structural schema: {schema}")
        merged = {**structural(options[0], **nested), **structural(rest, typed=False, **nested)}
        if len(options) != len(schema["anyOf"]):
            merged["nullable"] = True
        if merged.get("default", ...) is None:
            del merged["default"]
        return merged

    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in _DROP_KEYS:
            continue
        if key == "properties":
            out["properties"] = {name: structural(prop, **nested) for name, prop in value.items()}
        elif key == "items":
            out["items"] = structural(value, **nested)
        elif key == "additionalProperties":
            if value is False:
                # extra="forbid": the apiserver prunes unknown fields and kubectl's strict field
                # validation reports them; a structural schema cannot say `false` beside `properties`.
                continue
            if value is True or value == {}:
                out["x-kubernetes-preserve-unknown-fields"] = True
            else:
                out["additionalProperties"] = structural(value, **nested)
        elif key == "const":
            out["enum"] = [value]
        elif key in _PYDANTIC_BOUNDS:
            # pydantic leaves Field(ge=…) on an Optional[Annotated[int, …]] as a raw keyword beside anyOf.
            bound, exclusive = _PYDANTIC_BOUNDS[key]
            out[bound] = value
            if exclusive:
                out["exclusive" + bound.capitalize()] = True
        elif key in ("exclusiveMinimum", "exclusiveMaximum"):
            bound = "minimum" if key == "exclusiveMinimum" else "maximum"
            out[bound] = value
            out[key] = True
        elif key == "default" and value is None:
            continue
        else:
            out[key] = value

    if "properties" in out:
        out.setdefault("type", "object")
        required = set(out.get("required", []))
        for name, prop in out["properties"].items():
            # An omitted section defaults to its filled-in defaults, so CEL rules can read every field.
            is_section = prop.get("type") == "object" and "properties" in prop and not prop.get("nullable")
            if name not in required and is_section and "default" not in prop:
                prop["default"] = _filled_default(prop)
            if null_is_absent and prop.get("nullable") and "default" not in prop:
                del prop["nullable"]
    if not typed:
        return out
    if out.get("type") == "object" and "properties" not in out and "additionalProperties" not in out:
        out["x-kubernetes-preserve-unknown-fields"] = True
    if not out.get("type") and not out.get("x-kubernetes-preserve-unknown-fields"):
        out["x-kubernetes-preserve-unknown-fields"] = True
    return out


def _filled_default(section: dict[str, Any]) -> dict[str, Any]:
    """The object the apiserver would build from a section's own defaults.

    An omitted section must default to this, not to {}: the apiserver checks a default against the CEL rules
    as written, without filling in the defaults nested inside it.
    """
    return {name: prop["default"] for name, prop in section["properties"].items() if "default" in prop}


def openapi_schema(model: type, *, mode: str = "validation", null_is_absent: bool = False) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode=mode)  # type: ignore[attr-defined]
    return structural(raw, raw.get("$defs", {}), null_is_absent=null_is_absent)


def _job_name_rules() -> list[dict[str, str]]:
    """The model's job-name rules, checked on the object and reported on metadata.name.

    CEL on the object rather than on metadata.name: a CRD may declare metadata's name only as a plain string.
    """
    return [
        {
            "rule": rule.cel.replace("self", "self.metadata.name"),
            "message": rule.message,
            "fieldPath": ".metadata.name",
        }
        for rule in JOB_NAME_RULES
    ]


def build_crd() -> dict[str, Any]:
    spec_schema = openapi_schema(FineTuneJobSpec, null_is_absent=True)
    status_schema = openapi_schema(FineTuneJobStatus, mode="serialization")
    status_schema.pop("required", None)  # every status field is optional: the operator fills them over time
    root = {
        "type": "object",
        "required": ["spec"],
        "description": FineTuneJob.__doc__,
        "properties": {
            "apiVersion": {"type": "string", "description": f"{API_VERSION}"},
            "kind": {"type": "string", "description": KIND},
            # Only name may be declared (kubectl explain shows ObjectMeta's own descriptions): the
            # job-name rules below point their fieldPath at it.
            "metadata": {"type": "object", "properties": {"name": {"type": "string"}}},
            "spec": spec_schema,
            "status": status_schema,
        },
        "x-kubernetes-validations": _job_name_rules(),
    }
    columns = [
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {"name": "Reason", "type": "string", "jsonPath": ".status.reason"},
        {"name": "Step", "type": "string", "jsonPath": ".status.progress"},
        {"name": "Restarts", "type": "integer", "jsonPath": ".status.restartsTotal"},
        {"name": "Last checkpoint", "type": "integer", "jsonPath": ".status.lastCheckpointStep"},
        # spec.checkpoint.objectStore (issue 14): the newest step whose copy is committed in the store
        {"name": "Durable", "type": "integer", "jsonPath": ".status.durableCheckpointStep"},
        {"name": "Loss", "type": "number", "jsonPath": ".status.loss", "priority": 1},
        {"name": "Attempt", "type": "integer", "jsonPath": ".status.attempt", "priority": 1},
        {"name": "Steps/s", "type": "number", "jsonPath": ".status.stepsPerSecond", "priority": 1},
        {"name": "Remaining", "type": "string", "jsonPath": ".status.remaining", "priority": 1},
        {"name": "Message", "type": "string", "jsonPath": ".status.message", "priority": 1},
        {"name": "Queue", "type": "string", "jsonPath": ".metadata.labels.kueue\\.x-k8s\\.io/queue-name"},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": KIND.lower(),
                "shortNames": [SHORT_NAME],
                "categories": ["finetune", "ml"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                    "schema": {"openAPIV3Schema": root},
                }
            ],
        },
    }


def render_crd() -> str:
    header = "# Generated by `finetune-crd --write` from api/finetune_api/models.py. Do not edit.\n"
    return header + yaml.safe_dump(build_crd(), sort_keys=False, width=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--write", action="store_true", help="rewrite the committed CRD files")
    parser.add_argument("--check", action="store_true", help="fail if the committed CRD files are stale")
    parser.add_argument("--root", type=Path, default=Path("."), help="repository root")
    args = parser.parse_args(argv)
    text = render_crd()
    if not (args.write or args.check):
        sys.stdout.write(text)
        return 0
    outputs = dict.fromkeys(CRD_PATHS, text)
    return sync(args.root, outputs, write=args.write, command="finetune-crd")


if __name__ == "__main__":
    raise SystemExit(main())
