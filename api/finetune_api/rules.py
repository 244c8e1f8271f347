"""Rules written once, enforced twice: by pydantic and by the apiserver.

Each rule carries its CEL expression (emitted into the CRD as `x-kubernetes-validations`) and the same check
in Python. `CelRule` is a cross-field rule on a model; `FieldRule` is a rule on one value (a quantity, a
Kubernetes name), attached with `Annotated[str, FieldRule(...)]`, so the message is the project's own text in
both layers instead of a regular-expression dump. tests/integration/api proves both layers give the same
verdict, naming the same field, for every manifest in tests/manifests (`kubectl apply --dry-run=server` on the
real local cluster).

Transition rules (`TransitionRule`, CEL with `oldSelf`) judge an update against the stored object: the
apiserver runs them on every update of an existing job; `transition_violations(old, new)` is the same check
in Python (tests/integration/api proves the apiserver side with real edits).
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
class TransitionRule:
    cel: str  # evaluated by the apiserver on updates, with `self` = the new object and `oldSelf` = the stored
    message: str
    field: str
    check: Callable[[Any, Any], bool]  # (old, new) → True when the update is allowed

    def to_crd(self) -> dict[str, str]:
        entry = {"rule": self.cel, "message": self.message}
        if self.field:
            entry["fieldPath"] = "." + self.field
        return entry


def immutable(what: str) -> TransitionRule:
    """`self == oldSelf` on a section: it cannot change once the object exists."""
    return TransitionRule(
        cel="self == oldSelf",
        message=f"{what} cannot change once the job exists (its checkpoints belong to this training run): "
        "create a new FineTuneJob instead",
        field="",
        check=lambda old, new: bool(old == new),
    )


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
    """A model whose class attribute `cel_rules` is checked after field validation and exported to the CRD;
    `cel_transition_rules` are exported too and checked on updates (`transition_violations`)."""

    cel_rules: ClassVar[tuple[CelRule, ...]] = ()
    cel_transition_rules: ClassVar[tuple[TransitionRule, ...]] = ()

    @classmethod
    def __get_pydantic_json_schema__(
        cls, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        json_schema = handler(schema)
        rules = [rule.to_crd() for rule in cls.cel_rules] + [r.to_crd() for r in cls.cel_transition_rules]
        if rules:
            target = handler.resolve_ref_schema(json_schema)
            target["x-kubernetes-validations"] = rules
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


def transition_violations(old: BaseModel, new: BaseModel, path: str = "") -> list[str]:
    """The transition rules an update from `old` to `new` breaks, as '<path>: <message>' (empty: allowed)."""
    out: list[str] = []
    if isinstance(old, RuleModel) and type(old) is type(new):
        for rule in type(old).cel_transition_rules:
            if not rule.check(old, new):
                out.append(f"{path or '(object)'}: {rule.message}")
    for name, info in type(old).model_fields.items():
        before, after = getattr(old, name, None), getattr(new, name, None)
        if isinstance(before, BaseModel) and isinstance(after, BaseModel):
            key = info.alias or name
            out += transition_violations(before, after, f"{path}.{key}" if path else key)
    return out
