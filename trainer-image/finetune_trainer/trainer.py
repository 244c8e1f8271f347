"""SFTTrainer with lean checkpoints and save timing; the commit itself happens in CheckpointCommitCallback.

Also: restoring a checkpoint either works or raises `RestoreFailed` naming what could not be read (so the CLI
can fall back to an older checkpoint), and a run resumed at its last step trains no further step.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from transformers import Trainer
from trl import SFTTrainer

from finetune_trainer import checkpoints as ckpt
from finetune_trainer import dist, volume
from finetune_trainer.callbacks import RunState, StartupCallback
from finetune_trainer.faults import Faults
from finetune_trainer.logs import log, startup
from finetune_trainer.step_boundary import StepBoundary, rng_at


@contextlib.contextmanager
def restoring(what: str) -> Iterator[None]:
    """Turn a failure to read back `what` into RestoreFailed; running out of memory is not damage."""
    import torch

    try:
        yield
    except (MemoryError, torch.OutOfMemoryError):
        raise
    except ckpt.RestoreFailed:
        raise
    except Exception as error:
        raise ckpt.RestoreFailed(f"{what}: cannot be restored ({volume.first_line(error)})") from error


def probe_restore(path: Path, world_size: int) -> None:
    """Deserialise every file resume reads, the way the Trainer reads it, before anything is built.

    Catches a file that matches its marker but cannot be read back (a version-1 marker has no checksums;
    a writer bug) in a second, instead of after the model is loaded or after training has begun.
    Every rank checks every rank's RNG file, so all ranks reach the same verdict.
    """
    import safetensors.torch
    import torch
    from transformers import TrainerState
    from transformers.trainer_pt_utils import safe_globals

    loads: list[tuple[str, Callable[[Path], Any]]] = [
        (ckpt.TRAINER_STATE, lambda f: TrainerState.load_from_json(str(f))),
        (ckpt.ADAPTER_CONFIG, lambda f: json.loads(f.read_text())),
        (ckpt.ADAPTER_WEIGHTS, lambda f: safetensors.torch.load_file(str(f), device="cpu")),
        (ckpt.OPTIMIZER, lambda f: torch.load(f, map_location="cpu", weights_only=True)),
        (ckpt.SCHEDULER, lambda f: torch.load(f, map_location="cpu", weights_only=True)),
    ]
    for rng in ckpt.rng_files(world_size):

        def load_rng(f: Path) -> Any:
            with safe_globals():
                return torch.load(f, weights_only=True)

        loads.append((rng, load_rng))
    for name, load in loads:
        with restoring(name):
            load(path / name)


class CommitTrainer(SFTTrainer):
    def __init__(self, *args: Any, run: RunState, faults: Faults, **kwargs: Any):
        self._run_state = run
        self._faults = faults
        self._in_checkpoint = False
        super().__init__(*args, **kwargs)
        self.add_callback(StartupCallback())
        # Snapshots where each optimizer step begins, for a save in the middle of one (step_boundary.py).
        self._step_boundary = StepBoundary(self)
        self.add_callback(self._step_boundary)
        startup.mark("trainer_build")

    def _prepare_dataset(self, *args: Any, **kwargs: Any) -> Any:
        startup.mark("trainer_build")  # what SFTTrainer.__init__ did before it tokenizes
        try:
            return super()._prepare_dataset(*args, **kwargs)
        finally:
            startup.mark("tokenization")

    def train(self, *args: Any, **kwargs: Any) -> Any:
        startup.mark("trainer_build")  # the CLI's work between building the trainer and training
        return super().train(*args, **kwargs)

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        run = self._run_state
        run.save_started_at = time.monotonic()
        target = os.path.join(self._get_output_dir(trial=trial), f"checkpoint-{self.state.global_step}")
        # Before anything of this save touches DIR (a leftover's removal, retention, the files): every rank.
        run.check_fence(f"writing {Path(target).name}", agree=dist.any_rank)
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

    # --- a save in the middle of an optimizer step (SIGTERM at a micro-batch): step N's state -----------

    def _maybe_log_save_evaluate(self, *args: Any, **kwargs: Any) -> None:
        if self._run_state.stopped_mid_step:
            self._step_boundary.rewind_counters()  # before the loss is logged and trainer_state written
        super()._maybe_log_save_evaluate(*args, **kwargs)

    def _save_rng_state(self, output_dir: str) -> None:
        # The micro-batches after step N moved the RNGs: write those of the boundary, which resume reloads.
        mid_step = self._run_state.stopped_mid_step
        with rng_at(self._step_boundary.rng if mid_step else None):
            super()._save_rng_state(output_dir)

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        super()._save_optimizer_and_scheduler(output_dir)
        self._faults.in_save(self.state.global_step)  # test hook: a SIGKILL here leaves a torn checkpoint

    # --- restore: every read of a checkpoint either works or raises RestoreFailed ------------------------

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
        with restoring("adapter (adapter_model.safetensors, adapter_config.json)"):
            super()._load_from_checkpoint(resume_from_checkpoint, model)

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        with restoring("optimizer.pt / scheduler.pt"):
            super()._load_optimizer_and_scheduler(checkpoint)

    def _load_rng_state(self, checkpoint: str | None) -> None:
        with restoring("RNG state"):
            super()._load_rng_state(checkpoint)
        self._step_boundary.rng_restored()

    def _run_epoch(self, *args: Any, **kwargs: Any) -> None:
        # Resumed from the checkpoint of the last step (killed after it was committed, before final/ was
        # written): transformers' loop would run one more optimizer step before it checks max_steps (it
        # does when the last step is mid-epoch). There is nothing left to train: go straight to the end.
        if self.state.global_step >= self.state.max_steps:
            if not self.control.should_training_stop:
                log("resume_at_last_step", step=self.state.global_step, max_steps=self.state.max_steps)
            self.control.should_training_stop = True
            return
        super()._run_epoch(*args, **kwargs)
