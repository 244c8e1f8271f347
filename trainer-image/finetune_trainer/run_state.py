"""What the callbacks, the Trainer subclass and the attempt share about one training attempt."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from finetune_trainer import checkpoints as ckpt
from finetune_trainer.background import BackgroundSaver
from finetune_trainer.fence import AttemptFence


@dataclass
class RunState:
    """Shared by the callbacks, the Trainer subclass and the CLI."""

    output_dir: Path
    world_size: int = 1
    is_main: bool = True
    save_total_limit: int | None = None
    extra_required: tuple[str, ...] = ()
    last_commit: ckpt.CommitRecord | None = None
    save_started_at: float | None = None
    last_save_seconds: float | None = None
    emergency_save_seconds: float | None = None
    stop_for_preemption: bool = False
    stopped_mid_step: bool = False  # stopped at a micro-batch: the checkpoint is the last completed step's
    retained: int = 0
    first_step_of_run: bool = True
    total_steps: int | None = None
    commit_failures: list[str] = field(default_factory=list)
    fence: AttemptFence | None = None  # --attempt N: stop before any change once a newer attempt claimed DIR
    identity: dict[str, str] = field(default_factory=dict)  # {run_id, fingerprint} for every commit marker
    saver: BackgroundSaver | None = None  # background saves on (single process); None: every save blocks
    pending_write: Callable[[], None] | None = None  # set by the trainer: writes the copied state to disk
    durable_checkpoint: str | None = None  # objectStore: newest checkpoint with a remote commit marker

    def wait_for_save(self) -> None:
        """The background save in flight (if any) is committed, or its error is raised here."""
        if self.saver is not None:
            self.saver.wait()

    def check_fence(self, before: str, agree: Callable[[bool], bool] | None = None) -> None:
        if self.fence is not None:
            self.fence.check(before, agree)

    @property
    def last_commit_step(self) -> int | None:
        return self.last_commit.step if self.last_commit else None
