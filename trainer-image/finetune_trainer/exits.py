"""The exit protocol: which exit code and termination message for which ending (finetune_api.contract,
docs/trainer.md's table). Every exit path of the trainer goes through `ExitProtocol.exit_with`, which writes
the termination message (rank 0), logs the `exit` event and releases the SIGTERM handler's wait.

The attempt (attempt.py) fills in what the messages name as it learns it: the config, the resume policy (the
newest committed checkpoint before training), the run state (the newest one committed during training) and the
trainer (the step).
"""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path
from typing import Any

from finetune_api.contract import (
    EXIT_CONFIG_ERROR,
    EXIT_CUDA_OOM,
    EXIT_NO_INTACT_CHECKPOINT,
    EXIT_PREEMPTED,
    EXIT_SUCCEEDED,
    EXIT_SUPERSEDED,
    EXIT_VOLUME_FULL,
    FINAL_DIR,
    TerminationMessage,
)
from finetune_api.trainer_config import InvalidManifest, TrainerConfig

from finetune_trainer import checkpoints as ckpt
from finetune_trainer.build import ConfigError
from finetune_trainer.fence import Superseded
from finetune_trainer.logs import TerminationWriter, log
from finetune_trainer.preemption import FINISHING, Preemption
from finetune_trainer.resume import NoIntactCheckpoint, ResumePolicy

EXIT_ERROR = 1


class ExitProtocol:
    """One attempt's endings: the state every termination message needs, and the code for each ending."""

    def __init__(self, term: TerminationWriter, preemption: Preemption, output_dir: Path):
        self.term = term
        self.preemption = preemption
        self.output_dir = output_dir
        self.config: TrainerConfig | None = None
        self.resume: ResumePolicy | None = None  # its `newest`: the committed checkpoint before training
        self.run_state: Any = None  # callbacks.RunState once training is set up: the newest commit since
        self.trainer: Any = None  # once built: the step
        self.object_store = False  # spec.checkpoint.objectStore in use: the message names the durable copy
        self.durable_at_start: str | None = None  # the newest remote committed checkpoint at start
        self.durable_final: str | None = None  # 'final' once DIR/final is in the store

    def _newest_commit(self) -> ckpt.CommitRecord | None:
        record = self.run_state.last_commit if self.run_state is not None else None
        return record or (self.resume.newest if self.resume is not None else None)

    def _commit_fields(self) -> dict[str, Any]:
        record = self._newest_commit()
        durable = self.run_state.durable_checkpoint if self.run_state is not None else None
        fields: dict[str, Any] = (
            {"durable_checkpoint": durable or self.durable_at_start} if self.object_store else {}
        )
        if record is None:
            return fields
        return {"checkpoint": record.name, "checkpoint_step": record.step, **fields}

    def _current_step(self) -> int | None:
        if self.trainer is not None:
            return int(self.trainer.state.global_step)
        newest = self.resume.newest if self.resume is not None else None
        return newest.step if newest else None

    def exit_with(self, code: int, reason: str, **fields: Any) -> int:
        message = TerminationMessage(
            reason=reason, step=self._current_step(), **self._commit_fields(), **fields
        )
        self.term.write(message)
        self.preemption.done.set()
        log(
            "exit",
            level="info" if code in (0, EXIT_PREEMPTED) else "error",
            exit_code=code,
            **message.model_dump(exclude_none=True),
        )
        return code

    # ------------------------------------------------------------------------------- from other threads

    def early_exit_message(self) -> None:
        """From the signal handler during start-up: no locks, no allocation-heavy work."""
        newest = self.resume.newest if self.resume is not None else None
        self.term.write_raw_unlocked(
            TerminationMessage(
                reason="Preempted",
                step=newest.step if newest else None,
                message="SIGTERM before training started",
                **self._commit_fields(),
            )
        )

    def on_save_deadline(self) -> None:
        """Watchdog: the emergency save did not commit within save_deadline_seconds."""
        assert self.config is not None
        deadline = self.config.save_deadline_seconds
        log("save_deadline_exceeded", level="error", deadline_seconds=deadline)
        self.term.write(
            TerminationMessage(
                reason="Preempted",
                step=self._current_step(),
                message=f"emergency checkpoint not committed within save_deadline_seconds={deadline}; "
                "resume uses the newest committed one",
                save_in_time=False,
                save_deadline_seconds=deadline,
                **self._commit_fields(),
            )
        )
        os._exit(EXIT_PREEMPTED)

    # ------------------------------------------------------------------------------------- endings

    def completed(self, final: dict[str, Any] | None = None) -> int:
        """0: DIR/final is written (now, or `final` is the marker of one complete at start). With an object
        store the message says whether final/ reached it (`durable_final`: 'final', or null)."""
        path = str(self.output_dir / FINAL_DIR)
        durable = {"durable_final": self.durable_final} if self.object_store else {}
        if final is not None:
            return self.exit_with(EXIT_SUCCEEDED, "Completed", final=path, final_step=final.get("step"))
        return self.exit_with(EXIT_SUCCEEDED, "Completed", final=path, **durable)

    def preempted(self, run: Any) -> int:
        """75 after training stopped on SIGTERM: how long the emergency save took and whether in time."""
        step = self.trainer.state.global_step
        seconds = run.emergency_save_seconds
        if seconds is None and run.last_commit is not None and run.last_commit.step == step:
            seconds = 0.0  # the newest committed checkpoint was already at this step
        since = self.preemption.seconds_since_request()
        log("preempted", step=step, save_seconds=seconds, seconds_since_signal=round(since or 0.0, 3))
        return self.exit_with(
            EXIT_PREEMPTED,
            "Preempted",
            save_seconds=None if seconds is None else round(seconds, 4),
            save_in_time=seconds is not None,  # committed (or already there) before the watchdog's deadline
            save_deadline_seconds=self.config.save_deadline_seconds if self.config is not None else None,
        )

    def failed(self, error: BaseException) -> int:
        """The exit for an exception that ended the attempt: 78, 65, 73, 75, 76, 74, else 1."""
        # Only once training was set up (callbacks imports transformers: 10 s that an error at start, a config
        # error included, must not wait for before its exit).
        callbacks = sys.modules.get("finetune_trainer.callbacks")
        before_first_step = callbacks.PreemptedBeforeFirstStep if callbacks is not None else ()

        if isinstance(error, InvalidManifest):
            for line in error.errors:
                print(f"config error: {line}", file=sys.stderr, flush=True)
            return self.exit_with(EXIT_CONFIG_ERROR, "ConfigError", message="; ".join(error.errors))
        if isinstance(error, ConfigError):
            print(f"config error: {error}", file=sys.stderr, flush=True)
            return self.exit_with(EXIT_CONFIG_ERROR, "ConfigError", message=str(error))
        if isinstance(error, NoIntactCheckpoint):
            print(f"no intact checkpoint: {error}", file=sys.stderr, flush=True)
            if self.resume is not None:
                self.resume.newest = None
            return self.exit_with(EXIT_NO_INTACT_CHECKPOINT, "NoIntactCheckpoint", message=str(error))
        if isinstance(error, Superseded):
            log("superseded", level="error", message=str(error), attempt=error.attempt, newer=error.newer)
            return self.exit_with(EXIT_SUPERSEDED, "Superseded", message=str(error))
        if isinstance(error, before_first_step):
            return self.exit_with(
                EXIT_PREEMPTED, "Preempted", message="SIGTERM before the first step", save_seconds=0.0
            )
        if _is_cuda_oom(error):
            assert self.config is not None
            t = self.config.training
            log("cuda_oom", level="error", error=str(error).splitlines()[0] if str(error) else "")
            return self.exit_with(
                EXIT_CUDA_OOM,
                "CudaOOM",
                per_device_train_batch_size=t.per_device_train_batch_size,
                gradient_accumulation_steps=t.gradient_accumulation_steps,
                message=(str(error).splitlines() or ["CUDA out of memory"])[0][:500],
            )
        full = self._volume_full(error)
        if full is not None:
            log(
                "volume_full",
                level="error",
                checkpoint=full.what,
                volume=str(full.volume),
                free_bytes=full.free_bytes,
                needed_bytes=full.needed_bytes,
                error=full.detail,
            )
            return self.exit_with(
                EXIT_VOLUME_FULL,
                "VolumeFull",
                message=str(full),
                free_bytes=full.free_bytes,
                needed_bytes=full.needed_bytes,
            )
        if isinstance(error, KeyboardInterrupt | SystemExit):
            return self.exit_with(EXIT_ERROR, "Error", message=f"{type(error).__name__}")
        log("traceback", level="error", traceback=traceback.format_exc()[-4000:])
        text = f"{type(error).__name__}: {error}".splitlines()[0][:1000]
        return self.exit_with(EXIT_ERROR, "Error", message=text)

    def _volume_full(self, error: BaseException) -> Any:
        """A VolumeFull from a save, or an out-of-space error from elsewhere (final/, the commit marker)."""
        from finetune_trainer import volume

        for seen in (error, error.__cause__, error.__context__):
            if isinstance(seen, volume.VolumeFull):
                return seen
        if isinstance(error, Exception) and volume.is_out_of_space(error, self.output_dir):
            what = FINAL_DIR if self.preemption.phase == FINISHING else "a file on the checkpoint volume"
            return volume.VolumeFull(
                what, self.output_dir, volume.free_bytes(self.output_dir), None, volume.first_line(error)
            )
        return None


def _is_cuda_oom(error: BaseException) -> bool:
    torch = sys.modules.get("torch")  # not imported (an error at start): not a CUDA OOM; no 10 s import
    if torch is not None and isinstance(error, torch.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and "CUDA out of memory" in str(error)
