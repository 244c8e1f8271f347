"""The trainer's state at the last optimizer-step boundary, for a checkpoint written in the middle of a step.

When a SIGTERM stops training in the middle of gradient accumulation (PreemptionCallback, at a micro-batch),
the model, optimizer and scheduler are still those of the last completed step N, but the micro-batches of
step N+1 already ran: they moved the RNGs (dropout), added their loss to the running loss, and counted their
tokens and FLOPs. A checkpoint-N written then must hold what a save at the end of step N would have held, so
that resume (which skips the trained batches and then reloads the RNG state) is exact. `StepBoundary`
snapshots that state where step N+1 begins; `CommitTrainer._capture_rng_state` writes its RNG state and
`CommitTrainer._maybe_log_save_evaluate` rewinds the totals for such a save (synchronous or background).

Where the snapshot is taken matters for exactness: it must be the RNG state that resume reloads.
- Mid-epoch, resume reloads the RNG state after fetching the first step's batches, which is where
  `on_step_begin` runs: the snapshot is taken there.
- At the start of an epoch, resume reloads it before the epoch's data iterator is created (which may draw
  from the RNG to shuffle): the snapshot taken at `on_epoch_begin` stands for the epoch's first step.
- A restored RNG state (resume) replaces the snapshot, which then stands for the first step after it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments


@dataclass
class RngSnapshot:
    python: Any
    numpy: Any
    cpu: Any
    cuda: Any = None  # every device's state (torch.cuda.get_rng_state_all) when CUDA is available


def capture_rng() -> RngSnapshot:
    import numpy as np
    import torch

    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    return RngSnapshot(random.getstate(), np.random.get_state(), torch.random.get_rng_state(), cuda)


@dataclass
class Counters:
    """The running totals that micro-batches add to before their optimizer step completes."""

    tr_loss: Any  # a detached copy of Trainer._tr_loss (a tensor)
    current_flos: float
    num_input_tokens_seen: int


class StepBoundary(TrainerCallback):
    """Snapshots of the RNG state and the running totals where the current optimizer step began."""

    def __init__(self, trainer: Any):
        self.trainer = trainer
        self.rng: RngSnapshot | None = None
        self.counters: Counters | None = None
        self._epoch_snapshot_pending = False  # the next step is an epoch's first: keep on_epoch_begin's RNG

    def _capture_counters(self) -> None:
        trainer = self.trainer
        tr_loss = getattr(trainer, "_tr_loss", None)
        self.counters = Counters(
            tr_loss=None if tr_loss is None else tr_loss.detach().clone(),
            current_flos=float(getattr(trainer, "current_flos", 0.0)),
            num_input_tokens_seen=int(trainer.state.num_input_tokens_seen or 0),
        )

    def rng_restored(self) -> None:
        """The Trainer just restored the RNG state of a checkpoint (resume): that is the boundary's."""
        self.rng = capture_rng()
        self._epoch_snapshot_pending = True

    def on_epoch_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        self.rng = capture_rng()
        self._epoch_snapshot_pending = True
        return control

    def on_step_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        if not self._epoch_snapshot_pending:
            self.rng = capture_rng()
        self._epoch_snapshot_pending = False
        self._capture_counters()
        return control

    def rewind_counters(self) -> None:
        """Drop what the micro-batches of the unfinished step added: loss, FLOPs and tokens are step N's.
        Once: after it the totals move on (a log resets the running loss)."""
        counters, self.counters = self.counters, None
        if counters is None:
            return
        trainer = self.trainer
        if counters.tr_loss is not None and getattr(trainer, "_tr_loss", None) is not None:
            trainer._tr_loss.copy_(counters.tr_loss)  # in place: the training loop holds this tensor
        trainer.current_flos = counters.current_flos
        trainer.state.num_input_tokens_seen = counters.num_input_tokens_seen
