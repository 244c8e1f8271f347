"""After HF wrote checkpoint-N: commit it, then apply retention, then report it; one callback each.

Order of events around a save (transformers 5.23): on_step_end → _maybe_log_save_evaluate: log (on_log) →
evaluate (on_evaluate) → `_save_checkpoint` (writes checkpoint-N/, HF rotation disabled by passing
save_total_limit=None) → on_save. `CheckpointCommitCallback` commits in on_save (synchronous save) or in the
background saver's thread once the copied state is written (background save), and then hands the commit to
its followers in their order (`Committed` carries what each adds for the next):

1. `RetentionCallback`: only now does the new checkpoint count among the committed ones, so retention can
   never delete it (or keep an uncommitted one) in place of an older one; it records what it deleted.
2. `CommitReportCallback`: the `checkpoint_committed` log line, status.lastCheckpoint and the save metrics,
   which name what retention deleted and how many checkpoints are kept.

The followers run where the commit runs (the saver's thread for a background save: the log, the reporter and
the metrics are thread-safe), so a commit is reported when it happens, not at the next step.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finetune_api.status import CheckpointInfo, TrainerStatus
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from finetune_trainer import checkpoints as ckpt
from finetune_trainer import dist, volume
from finetune_trainer.logs import log
from finetune_trainer.reporting import StatusReporter, TrainerMetrics
from finetune_trainer.run_state import RunState


@dataclass
class Committed:
    """One commit, as it goes from the commit to its followers."""

    record: ckpt.CommitRecord
    best: str | None  # the best checkpoint so far (load_best_model_at_end): retention keeps it
    started: float  # time.monotonic() when the save began
    blocked: float | None  # background: how long training waited (the copy); None: synchronous (all of it)
    deleted: list[Path] = field(default_factory=list)  # by retention


class CommitFollower(TrainerCallback):
    """A callback that acts on each commit, in the order CheckpointCommitCallback was given."""

    def on_commit(self, committed: Committed) -> None:
        raise NotImplementedError


class CheckpointCommitCallback(TrainerCallback):
    """Commits checkpoint-N: barrier → (main) verify, fsync, marker → followers → barrier. Background saves:
    hands the write and commit to the saver, surfaces its failure at the next step end, waits for it at the
    end of training."""

    def __init__(self, run: RunState, followers: Sequence[CommitFollower]):
        self.run = run
        self.followers = tuple(followers)

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any):
        run = self.run
        path = run.output_dir / f"checkpoint-{state.global_step}"
        started = run.save_started_at or time.monotonic()
        best = state.best_model_checkpoint
        write, run.pending_write = run.pending_write, None
        run.save_started_at = None
        if write is not None and run.saver is not None:  # background: the state is copied, training goes on
            step = state.global_step

            def write_and_commit() -> None:
                write()
                self.commit(path, step, started, best, blocked=blocked)

            blocked = time.monotonic() - started  # training resumes now
            run.saver.submit(step, write_and_commit)
            return control
        dist.barrier()  # every rank has written its rng_state_<rank>.pth
        if run.is_main:
            self.commit(path, state.global_step, started, best, blocked=None)
        else:
            # Non-main ranks learn the committed step to decide identically whether a stop needs a save.
            run.last_commit = ckpt.CommitRecord(path, state.global_step, "", {}, None)
        dist.barrier()  # nobody exits (or starts deleting) before the commit is done
        return control

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        if self.run.saver is not None:
            self.run.saver.poll()  # a failed background save ends training now, as a synchronous one would
        return control

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        self.run.wait_for_save()  # the last checkpoint is committed before final/ is written
        return control

    def commit(self, path: Path, step: int, started: float, best: str | None, blocked: float | None) -> None:
        """Main rank: verify, fsync, marker; then the followers. In the background thread for a background
        save."""
        run = self.run
        try:
            record = ckpt.commit_checkpoint(
                path,
                run.world_size,
                started_at=started,
                extra_required=run.extra_required,
                before_marker=lambda: run.check_fence(f"committing {path.name}"),
                identity=run.identity or None,
            )
            assert record.save_seconds is not None
        except (ckpt.CheckpointError, OSError) as error:
            if isinstance(error, OSError) and volume.is_out_of_space(error, run.output_dir):
                free = volume.free_bytes(run.output_dir)
                ckpt.remove_checkpoint(path)  # its marker could not be written: never committed
                why = volume.first_line(error)
                raise volume.VolumeFull(path.name, run.output_dir, free, None, why) from error
            run.commit_failures.append(f"{path.name}: {error}")
            log("checkpoint_commit_failed", level="error", step=step, error=str(error))
            return
        committed = Committed(record, best, started, blocked)
        for follower in self.followers:
            follower.on_commit(committed)
        run.last_commit = record
        run.last_save_seconds = record.save_seconds


def _log_set_aside(path: Path, moved: Path, why: str) -> None:
    to = f"{moved.parent.name}/{moved.name}"  # damaged/checkpoint-N, relative to the output dir
    log("checkpoint_set_aside", level="warning", checkpoint=path.name, to=to, reason=why)


class RetentionCallback(CommitFollower):
    """After each commit: keep save_total_limit committed checkpoints (and the best), newest first; damaged
    committed ones are set aside, never deleted. Counts what is kept (`RunState.retained`)."""

    def __init__(self, run: RunState):
        self.run = run

    def on_commit(self, committed: Committed) -> None:
        run = self.run
        run.check_fence("retention")
        keep = [committed.best] if committed.best else []
        committed.deleted = ckpt.apply_retention(
            run.output_dir, run.save_total_limit, keep=keep, on_set_aside=_log_set_aside
        )
        run.retained = len(ckpt.committed_checkpoints(run.output_dir))


class CommitReportCallback(CommitFollower):
    """Each commit to the log (`checkpoint_committed`), the job's status (lastCheckpoint) and the metrics."""

    def __init__(self, run: RunState, reporter: StatusReporter, metrics: TrainerMetrics | None):
        self.run = run
        self.reporter = reporter
        self.metrics = metrics

    def on_commit(self, committed: Committed) -> None:
        record, blocked, retained = committed.record, committed.blocked, self.run.retained
        assert record.save_seconds is not None
        log(
            "checkpoint_committed",
            step=record.step,
            path=str(record.path),
            time=record.committed_at,
            save_seconds=round(record.save_seconds, 4),
            bytes=record.bytes,
            files=len(record.files),
            retained=retained,
            deleted=[p.name for p in committed.deleted],
            background=blocked is not None,
            blocked_seconds=round(time.monotonic() - committed.started if blocked is None else blocked, 4),
        )
        self.reporter.update(_status_for_commit(record, retained))
        if self.metrics is not None:
            self.metrics.save_seconds.observe(record.save_seconds)
            self.metrics.last_save_seconds.set(record.save_seconds)
            self.metrics.last_save_bytes.set(record.bytes)
            self.metrics.last_checkpoint_step.set(record.step)
            self.metrics.checkpoints.set(retained)
            self.metrics.commits.inc()


def _status_for_commit(record: ckpt.CommitRecord, retained: int) -> dict[str, Any]:
    return TrainerStatus.patch(
        last_checkpoint=CheckpointInfo(
            step=record.step,
            path=str(record.path),
            time=record.committed_at,
            save_seconds=round(record.save_seconds or 0.0, 4),
            bytes=record.bytes,
        ),
        last_checkpoint_step=record.step,
        checkpoints=retained,
    )
