"""Rules written once, enforced twice: by pydantic and by the apiserver.

Each rule carries its CEL expression (emitted into the CRD as `x-kubernetes-validations`) and the same check
in Python. `CelRule` is a cross-field rule on a model; `FieldRule` is a rule on one value (a quantity, a
Kubernetes name), attached with `Annotated[str, FieldRule(...)]`, so the message is the project's own text in
both layers instead of a regular-expression dump. tests/integration/api proves both layers give the same
verdict, naming the same field, for every manifest in tests/manifests (`kubectl apply --dry-run=server` on the
real local cluster).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import BaseModel, GetCoreSchemaHandler, GetJsonSchemaHandler, model_validator
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


@dataclass(frozen=True)
class FieldRule:
    cel: str  # evaluated by the apiserver with `self` = this value
    message: str
    check: Callable[[Any], bool]  # the same rule in Python: True when the value is valid

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        def validate(value: Any) -> Any:
            if not self.check(value):
                raise PydanticCustomError("field_rule", "{message}", {"message": self.message})
            return value

        return core_schema.no_info_after_validator_function(validate, handler(source))

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        json_schema = handler(schema)
        rules = json_schema.setdefault("x-kubernetes-validations", [])
        rules.append({"rule": self.cel, "message": self.message})
        return json_schema


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
        # Every failing rule is reported, as the apiserver reports every failing CEL rule.
        failed = [(rule.field, rule.message) for rule in type(self).cel_rules if not rule.check(self)]
        if failed:
            raise PydanticCustomError(
                "cross_field_rule",
                "{field}: {message}",
                {"field": failed[0][0] or "(object)", "message": failed[0][1], "failures": failed},
            )
        return self
