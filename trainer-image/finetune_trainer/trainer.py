"""SFTTrainer with lean checkpoints and save timing; the commit itself happens in CheckpointCommitCallback."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from transformers import Trainer
from trl import SFTTrainer

from finetune_trainer import checkpoints as ckpt
from finetune_trainer import volume
from finetune_trainer.callbacks import RunState
from finetune_trainer.faults import Faults
from finetune_trainer.logs import log


class CommitTrainer(SFTTrainer):
    def __init__(self, *args: Any, run: RunState, faults: Faults, **kwargs: Any):
        self._run_state = run
        self._faults = faults
        self._in_checkpoint = False
        super().__init__(*args, **kwargs)

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        run = self._run_state
        run.save_started_at = time.monotonic()
        target = os.path.join(self._get_output_dir(trial=trial), f"checkpoint-{self.state.global_step}")
        if self.args.should_save and os.path.isdir(target):
            # Leftover of an earlier attempt (torn, or committed but skipped as damaged): its marker must
            # never describe files of this write. Resume chose an older checkpoint: this one is unused.
            ckpt.remove_checkpoint(Path(target))
        needed = volume.estimate_checkpoint_bytes(run.last_commit, self.model)
        if run.is_main and needed:
            keep = [self.state.best_model_checkpoint] if self.state.best_model_checkpoint else []
            freed = volume.make_room(run.output_dir, run.save_total_limit, needed, keep)
            if freed:
                log(
                    "retention_before_save",
                    step=self.state.global_step,
                    deleted=[p.name for p in freed],
                    needed_bytes=needed,
                    free_bytes=volume.free_bytes(run.output_dir),
                    reason="free space short of the last checkpoint's size",
                )
        free_before = volume.free_bytes(run.output_dir) if run.is_main else 0
        self._in_checkpoint = True
        try:
            # Skip SFTTrainer._save_checkpoint: it rewrites a README model card in output_dir on every save.
            Trainer._save_checkpoint(self, model, trial)
        except Exception as error:
            if run.is_main and volume.is_out_of_space(error, run.output_dir, needed):
                ckpt.remove_checkpoint(Path(target))  # never committed: its partial files only take space
                raise volume.VolumeFull(
                    Path(target).name, run.output_dir, free_before, needed, volume.first_line(error)
                ) from error
            raise
        finally:
            self._in_checkpoint = False

    @contextlib.contextmanager
    def _lean(self) -> Iterator[None]:
        """No tokenizer files and no README in checkpoints (they were 56% of a tiny one); final/ gets them."""
        processing_class = self.processing_class
        self.processing_class = None
        unwrapped = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
        had_card = "create_or_update_model_card" in vars(unwrapped)
        with contextlib.suppress(AttributeError, TypeError):
            unwrapped.create_or_update_model_card = lambda output_dir: None
        try:
            yield
        finally:
            self.processing_class = processing_class
            if not had_card:
                with contextlib.suppress(AttributeError):
                    del unwrapped.create_or_update_model_card

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        if not self._in_checkpoint:
            super()._save(output_dir, state_dict)
            return
        collator: Any = self.data_collator
        collator_tokenizer = getattr(collator, "tokenizer", None)
        if collator_tokenizer is not None:
            collator.tokenizer = None
        try:
            with self._lean():
                super()._save(output_dir, state_dict)
        finally:
            if collator_tokenizer is not None:
                collator.tokenizer = collator_tokenizer

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        super()._save_optimizer_and_scheduler(output_dir)
        self._faults.in_save(self.state.global_step)  # test hook: a SIGKILL here leaves a torn checkpoint
