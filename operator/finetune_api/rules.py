"""Cross-field rules written once, enforced twice: by pydantic and by the apiserver.

Each rule carries its CEL expression (emitted into the CRD as `x-kubernetes-validations`) and the same check
in Python. The apiserver side is proven by tests that `kubectl apply --dry-run=server` every invalid
manifest in tests/manifests/invalid against the real local cluster.

Transition rules (`TransitionRule`, CEL with `oldSelf`) judge an update against the stored object: the
apiserver runs them on every update of an existing job; `transition_violations(old, new)` is the same check
in Python (tests/integration/api proves the apiserver side with real edits).
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
        for rule in type(self).cel_rules:
            if not rule.check(self):
                raise PydanticCustomError(
                    "cross_field_rule",
                    "{field}: {message}",
                    {"field": rule.field or "(object)", "message": rule.message},
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
