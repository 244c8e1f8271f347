"""CommitTrainer saves through trl's SFTTrainer._save_checkpoint (super()), not around it: trl's override
runs (it asks for a model card, named after the output directory) and hands on to transformers' own. The
card itself is written only when asked for (model_card=True). No training: transformers' save is recorded,
not run."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from finetune_trainer.run_state import RunState
from finetune_trainer.trainer import CommitTrainer
from transformers import Trainer, TrainerState
from trl import SFTTrainer


def _trainer(out: Path, model_card: bool) -> CommitTrainer:
    """A CommitTrainer with only what _save_checkpoint reads (no model: nothing is written)."""
    trainer = object.__new__(CommitTrainer)
    trainer._run_state = RunState(output_dir=out)
    trainer._model_card = model_card
    trainer._in_checkpoint = False
    trainer.args = SimpleNamespace(output_dir=str(out), should_save=True, hub_model_id=None)  # type: ignore[assignment]
    trainer.state = TrainerState(global_step=3)
    trainer.model = None  # type: ignore[assignment]
    trainer.hp_search_backend = None
    return trainer


@pytest.mark.parametrize("model_card", [False, True])
def test_save_checkpoint_runs_trl_override_then_transformers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, model_card: bool
) -> None:
    calls: list[tuple[str, Any]] = []

    def transformers_save(self: Trainer, model: Any, trial: Any) -> None:
        calls.append(("Trainer._save_checkpoint", self._in_checkpoint))  # type: ignore[attr-defined]

    def trl_card(self: SFTTrainer, model_name: str | None = None, **kwargs: Any) -> None:
        calls.append(("trl create_model_card", model_name))

    ours = CommitTrainer.create_model_card

    def asked_for_card(self: CommitTrainer, *args: Any, **kwargs: Any) -> None:
        calls.append(("CommitTrainer.create_model_card", kwargs.get("model_name")))
        ours(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "_save_checkpoint", transformers_save)
    monkeypatch.setattr(SFTTrainer, "create_model_card", trl_card)  # what our override hands on to
    monkeypatch.setattr(CommitTrainer, "create_model_card", asked_for_card)
    out = tmp_path / "run-dir"
    out.mkdir()
    trainer = _trainer(out, model_card)
    trainer._save_checkpoint(model=None, trial=None)
    # trl's SFTTrainer._save_checkpoint asks for the card (named after DIR) before handing on; the card is
    # written only with model_card=True. transformers' save then runs inside CommitTrainer's lean mode.
    written = [("trl create_model_card", "run-dir")] if model_card else []
    asked = [("CommitTrainer.create_model_card", "run-dir")]
    assert calls == [*asked, *written, ("Trainer._save_checkpoint", True)]
    assert trainer._in_checkpoint is False
    assert not (out / "README.md").exists()
