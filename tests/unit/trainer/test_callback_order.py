"""The trainer's callbacks run in the documented order (callbacks.trainer_callbacks), and each one that reads
what an earlier one did sees it: a commit, then retention, then its report, then the stop decision and the
volume check that read the commit. Real files (a fake checkpoint in the real formats), no training."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from checkpoint_files import make_checkpoint
from finetune_api.contract import COMMIT_MARKER
from finetune_trainer.callbacks import (
    FaultInjectionCallback,
    PreemptionCallback,
    ProgressCallback,
    RunState,
    VolumeSpaceCallback,
    trainer_callbacks,
)
from finetune_trainer.commit_callbacks import (
    CheckpointCommitCallback,
    CommitReportCallback,
    RetentionCallback,
)
from finetune_trainer.faults import Faults
from finetune_trainer.preemption import Preemption
from finetune_trainer.reporting import StatusReporter
from transformers import TrainerCallback, TrainerControl, TrainerState

ORDER = [
    CheckpointCommitCallback,
    RetentionCallback,
    CommitReportCallback,
    PreemptionCallback,
    ProgressCallback,
    VolumeSpaceCallback,
    FaultInjectionCallback,
]


def _attempt(out: Path) -> tuple[RunState, Preemption, StatusReporter, list[TrainerCallback]]:
    run = RunState(output_dir=out, save_total_limit=1)
    preemption = Preemption()
    reporter = StatusReporter(SENT.append, min_interval=0.0)
    callbacks = trainer_callbacks(run, preemption, reporter, None, Faults(), cache_dir=None)
    return run, preemption, reporter, callbacks


SENT: list[dict[str, Any]] = []  # the status patches of the reporter (one test at a time)


def test_the_list_is_in_the_documented_order(tmp_path: Path) -> None:
    _run, _preemption, _reporter, callbacks = _attempt(tmp_path)
    assert [type(c) for c in callbacks] == ORDER
    commit = callbacks[0]
    assert isinstance(commit, CheckpointCommitCallback)
    assert commit.followers == (callbacks[1], callbacks[2])  # retention, then the report
    for number, cls in enumerate(ORDER, 1):  # the docstring names each, in this order
        assert f"{number}. {cls.__name__}" in (trainer_callbacks.__doc__ or "")


def _save(callbacks: list[TrainerCallback], step: int) -> TrainerControl:
    """One on_save, as transformers' CallbackHandler calls it: each callback in the list's order."""
    state = TrainerState()
    state.global_step, state.max_steps = step, 10
    args = SimpleNamespace(save_strategy="steps", save_steps=2, num_train_epochs=1)
    control = TrainerControl()
    for callback in callbacks:
        control = callback.on_save(args, state, control) or control  # type: ignore[arg-type]
    return control


def _events(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_each_callback_sees_what_the_ones_before_it_did(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    SENT.clear()
    run, preemption, reporter, callbacks = _attempt(tmp_path)
    make_checkpoint(tmp_path, 2)
    make_checkpoint(tmp_path, 4, commit=False)  # what HF's _save_checkpoint just wrote
    preemption.request()  # SIGTERM while checkpoint-4 was written: the stop reads the commit
    control = _save(callbacks, 4)

    assert (tmp_path / "checkpoint-4" / COMMIT_MARKER).exists()
    assert not (tmp_path / "checkpoint-2").exists()  # retention after the commit: save_total_limit 1
    events = _events(capsys.readouterr().err)
    committed = next(e for e in events if e["event"] == "checkpoint_committed")
    assert committed["step"] == 4 and committed["deleted"] == ["checkpoint-2"] and committed["retained"] == 1
    volume = [e for e in events if e["event"] == "volume_space"]
    assert [(e["checkpoint_bytes"], e["present"]) for e in volume] == [(run.last_commit.bytes, 1)]  # type: ignore[union-attr]
    assert run.last_commit is not None and run.last_commit.step == 4
    assert run.emergency_save_seconds == run.last_save_seconds  # the stop saw the commit it waited for
    assert control.should_training_stop and not control.should_save
    reporter.close(timeout=5)
    merged: dict[str, Any] = {}
    for body in SENT:
        merged.update(body)
    assert merged["lastCheckpointStep"] == 4 and merged["checkpoints"] == 1


def test_out_of_order_the_volume_check_misses_the_commit(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Why the order matters: run before the commit, the volume check finds no new commit to check."""
    _run, _preemption, _reporter, callbacks = _attempt(tmp_path)
    make_checkpoint(tmp_path, 4, commit=False)
    volume_first = [callbacks[5], *callbacks[:5], callbacks[6]]
    _save(volume_first, 4)
    events = _events(capsys.readouterr().err)
    assert any(e["event"] == "checkpoint_committed" for e in events)
    assert not any(e["event"] == "volume_space" for e in events)
