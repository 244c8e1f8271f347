"""Cross-field rules written once, enforced twice: by pydantic and by the apiserver.

Each rule carries its CEL expression (emitted into the CRD as `x-kubernetes-validations`) and the same check
in Python. The apiserver side is proven by tests that `kubectl apply --dry-run=server` every invalid
manifest in tests/manifests/invalid against the real local cluster.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import BaseModel, GetJsonSchemaHandler, model_validator
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import PydanticCustomError, core_schema


@dataclass(frozen=True)
class CelRule:
    cel: str  # evaluated by the apiserver with `self` = this object
    message: str
    field: str  # the field the message is about, relative to this object ("" = the object itself)
    check: Callable[[Any], bool]  # the same rule in Python: True when the object is valid

    def to_crd(self) -> dict[str, str]:
        entry = {"rule": self.cel, "message": self.message}
        if self.field:
            entry["fieldPath"] = "." + self.field
        return entry


class RuleModel(BaseModel):
    """A model whose class attribute `cel_rules` is checked after field validation and exported to the CRD."""

    cel_rules: ClassVar[tuple[CelRule, ...]] = ()

    @classmethod
    def __get_pydantic_json_schema__(
        cls, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        json_schema = handler(schema)
        if cls.cel_rules:
            target = handler.resolve_ref_schema(json_schema)
            target["x-kubernetes-validations"] = [rule.to_crd() for rule in cls.cel_rules]
        return json_schema

    @model_validator(mode="after")
    def _check_cel_rules(self) -> RuleModel:
        for rule in type(self).cel_rules:
            if not rule.check(self):
                raise PydanticCustomError(
                    "cross_field_rule",
                    "{field}: {message}",
                    {"field": rule.field or "(object)", "message": rule.message},
                )
        return self
