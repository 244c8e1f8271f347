"""Who writes which status field (finetune_api/status.py): the trainer's and the operator's fields are
disjoint, the CRD's status is exactly the two together, and every field the code writes is in its writer's
model. Writes are found in the source (every `TrainerStatus.patch` / `OperatorStatus.patch` call and its
keywords; no status dict written by hand) and, where the names are computed, by running the writer."""

from __future__ import annotations

import ast
from datetime import timedelta
from pathlib import Path

import pytest
from finetune_api.status import (
    OPERATOR_WRITES_TO_TRAINER_FIELDS,
    FineTuneJobStatus,
    OperatorStatus,
    TrainerStatus,
)
from finetune_operator.policy import plan_next
from finetune_operator.status_patches import decision_patch, phase_patch
from finetune_trainer.reporting import ThroughputMeter

from tests.unit.operator.decision_helpers import NOW, outcome, spec, status

REPO = Path(__file__).resolve().parents[2]
WRITERS = {
    "finetune_operator": (REPO / "operator" / "finetune_operator", OperatorStatus),
    "finetune_trainer": (REPO / "trainer-image" / "finetune_trainer", TrainerStatus),
}


def wire_names(
    model: type[TrainerStatus] | type[OperatorStatus], extra: frozenset[str] = frozenset()
) -> set[str]:
    names = set(model.model_fields) | extra
    return {FineTuneJobStatus.model_fields[name].alias or name for name in names}


def patch_calls(package_dir: Path) -> list[tuple[str, str, ast.Call]]:
    """(file:line, owner class name, call) for every `<Owner>.patch(...)` in the package."""
    found = []
    for path in sorted(package_dir.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "patch"
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id in ("TrainerStatus", "OperatorStatus")
            ):
                found.append((f"{path.relative_to(REPO)}:{node.lineno}", node.func.value.id, node))
    return found


def test_the_two_owners_are_disjoint_and_make_the_whole_status() -> None:
    trainer, operator = set(TrainerStatus.model_fields), set(OperatorStatus.model_fields)
    assert not trainer & operator
    assert trainer | operator == set(FineTuneJobStatus.model_fields)
    # the one overlap in writing is named, with a reason, and only borrows trainer fields
    assert set(OPERATOR_WRITES_TO_TRAINER_FIELDS) <= trainer
    assert all(reason for reason in OPERATOR_WRITES_TO_TRAINER_FIELDS.values())


def test_the_crd_status_schema_is_the_two_models_together() -> None:
    from finetune_api.crd import build_crd

    schema = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
    assert set(schema["properties"]) == wire_names(TrainerStatus) | wire_names(OperatorStatus)


@pytest.mark.parametrize("package", sorted(WRITERS))
def test_every_field_written_in_the_source_is_the_writers_own(package: str) -> None:
    package_dir, owner = WRITERS[package]
    calls = patch_calls(package_dir)
    assert calls, f"{package} writes no status through its model"
    allowed = set(owner.model_fields) | set(owner.borrowed)
    for where, name, call in calls:
        assert name == owner.__name__, f"{where}: {package} writes {name} fields"
        for keyword in call.keywords:
            if keyword.arg is not None:  # **fields: names checked at run time (below, and by patch itself)
                assert keyword.arg in allowed, f"{where}: {keyword.arg} is not {owner.__name__}'s"


@pytest.mark.parametrize("package", sorted(WRITERS))
def test_no_status_is_written_as_a_hand_made_dict(package: str) -> None:
    """`PatchStatus({...})`, `reporter.update({...})`, `patch.update({...})`, `patch["x"] = ...`: a dict
    literal or a hand-written key would skip the owner's model."""
    package_dir, _ = WRITERS[package]
    for path in sorted(package_dir.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            where = f"{path.relative_to(REPO)}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.Assign):
                for target in node.targets:
                    by_hand = isinstance(target, ast.Subscript) and ast.unparse(target.value) == "patch"
                    assert not by_hand, f"{where}: a status key written by hand"
            if not isinstance(node, ast.Call) or not node.args or not isinstance(node.args[0], ast.Dict):
                continue
            func = node.func
            patch_status = isinstance(func, ast.Name) and func.id == "PatchStatus"
            merged = (
                isinstance(func, ast.Attribute)
                and func.attr == "update"
                and ast.unparse(func.value) in ("patch", "reporter", "self.reporter")
            )
            assert not (patch_status or merged), f"{where}: status written as a dict literal"


def test_a_writer_cannot_write_the_other_owners_fields() -> None:
    with pytest.raises(KeyError, match=r"status\.phase is not written by TrainerStatus"):
        TrainerStatus.patch(phase="Running")
    with pytest.raises(KeyError, match=r"status\.loss is not written by OperatorStatus"):
        OperatorStatus.patch(loss=1.0)
    with pytest.raises(KeyError):
        OperatorStatus.patch(no_such_field=1)


@pytest.mark.parametrize("end", ["Completed", "Error", "ConfigError", "Preempted", "HostOOM", "CudaOOM"])
def test_every_decision_patch_writes_operator_fields_only(end: str) -> None:
    st = status(phase="Running", attempt=2, podName="job-2", step=17, lastCheckpointStep=15)
    out = outcome(end, reason=end, finished_at=NOW - timedelta(seconds=2), step=18)
    patch = decision_patch(st, out, plan_next(spec(), st, out), "job-2", NOW)
    assert set(patch) <= wire_names(OperatorStatus, OperatorStatus.borrowed)
    assert set(phase_patch(st, "Failed", "X", "x", NOW)) <= wire_names(OperatorStatus)


def test_the_trainers_throughput_fields_are_its_own() -> None:
    meter = ThroughputMeter()
    for second in range(5):
        meter.add(float(second), second, 100 * second)
    written = meter.status(4, 10)
    assert written and set(written) <= wire_names(TrainerStatus)
