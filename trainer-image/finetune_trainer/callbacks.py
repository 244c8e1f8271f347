"""TrainerCallbacks, one job each: checkpoint commit, retention and its report (commit_callbacks.py),
preemption (SIGTERM) stop, progress reporting, volume space, fault injection, start-up phases.
`trainer_callbacks` builds them in the order they must run and says why.

Over 400 lines on purpose: the callbacks that act on training events are kept beside the one list that
orders them, so the reasons given there sit next to the code they are about (the commit and its followers,
which run where the commit runs, are in commit_callbacks.py).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from finetune_api.status import TrainerStatus
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from finetune_trainer import checkpoints as ckpt
from finetune_trainer import dist, volume
from finetune_trainer.commit_callbacks import (
    CheckpointCommitCallback,
    CommitReportCallback,
    RetentionCallback,
)
from finetune_trainer.faults import Faults
from finetune_trainer.logs import log, startup
from finetune_trainer.preemption import (
    TRAINING,
    NoticeBudget,
    Preemption,
    estimated_save_seconds,
    stop_at_micro_batch,
)
from finetune_trainer.reporting import StatusReporter, ThroughputMeter, TrainerMetrics
from finetune_trainer.run_state import RunState

__all__ = ["RunState", "trainer_callbacks"]


class PreemptedBeforeFirstStep(Exception):
    """SIGTERM arrived after loading but before the first step of this attempt: nothing new to save."""


def _budget_fields(budget: NoticeBudget) -> dict[str, Any]:
    return {
        "micro_batches_left": budget.micro_batches_left,
        "seconds_per_micro_batch": round(budget.seconds_per_micro_batch, 3),
        "expected_save_seconds": round(budget.save_seconds, 3),
        "needed_seconds": round(budget.needed_seconds, 3),
        "seconds_left": round(budget.seconds_left, 3),
    }


class PreemptionCallback(TrainerCallback):
    """On SIGTERM: stop at the next step boundary (all ranks agree), save there unless already committed.

    With gradient accumulation, at each micro-batch after the signal: when finishing the step, then saving,
    would not fit in what is left of save_deadline_seconds, stop at once; the checkpoint is then the last
    completed step's (CommitTrainer writes the step boundary's RNG state, step_boundary.py)."""

    def __init__(self, run: RunState, preemption: Preemption):
        self.run = run
        self.preemption = preemption
        self._step_started: float | None = None
        self._micro_batches_done = 0  # in the step in progress
        self._last_step_seconds: float | None = None  # the last whole step (its micro-batches)
        self._save_estimate: float | None = None
        self._budget_logged = False

    def _stop(
        self, state: TrainerState, control: TrainerControl, where: str, budget: NoticeBudget | None = None
    ) -> None:
        if not self.run.stop_for_preemption:
            self.run.stop_for_preemption = True
            self.run.stopped_mid_step = where == "micro_batch"
            log(
                "preemption_stop",
                level="warning",
                signal=self.preemption.signal_name,
                step=state.global_step,
                at=where,
                seconds_since_signal=round(self.preemption.seconds_since_request() or 0.0, 3),
                needs_save=self.run.last_commit_step != state.global_step,
                **(_budget_fields(budget) if budget is not None else {}),
            )
        control.should_training_stop = True
        if self.run.last_commit_step != state.global_step:
            control.should_save = True

    def _expected_save_seconds(self, model: Any) -> float:
        run = self.run
        if run.last_save_seconds is not None:
            return run.last_save_seconds
        if run.last_commit is not None and run.last_commit.save_seconds is not None:
            return run.last_commit.save_seconds  # the checkpoint this attempt resumed from
        if self._save_estimate is None:
            self._save_estimate = estimated_save_seconds(
                volume.estimate_checkpoint_bytes(run.last_commit, model)
            )
        return self._save_estimate

    def _notice_budget(self, args: TrainingArguments, model: Any) -> NoticeBudget | None:
        seconds_left = self.preemption.seconds_until_deadline()
        if seconds_left is None or self._step_started is None or self._micro_batches_done == 0:
            return None
        accumulation = max(int(args.gradient_accumulation_steps), 1)
        per_micro_batch = (time.monotonic() - self._step_started) / self._micro_batches_done
        if self._last_step_seconds is not None:
            per_micro_batch = max(per_micro_batch, self._last_step_seconds / accumulation)
        return stop_at_micro_batch(
            micro_batches_left=accumulation - self._micro_batches_done,
            seconds_per_micro_batch=per_micro_batch,
            save_seconds=self._expected_save_seconds(model),
            seconds_left=seconds_left,
        )

    def on_step_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        self._step_started = time.monotonic()
        self._micro_batches_done = 0
        return control

    def on_substep_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        self._micro_batches_done += 1
        budget = None
        stop = False
        if self.preemption.requested and not self.run.stop_for_preemption:
            budget = self._notice_budget(args, kwargs.get("model"))
            stop = budget is not None and budget.stop_now
            if budget is not None and not stop and not self._budget_logged:
                self._budget_logged = True
                log("preemption_finish_step", step=state.global_step + 1, **_budget_fields(budget))
        # Every rank takes part in every check (collectives run in lockstep); any rank out of time stops all.
        if dist.any_rank(stop):
            self._stop(state, control, "micro_batch", budget)
        return control

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        # From here on a signal no longer exits at once: it stops training at a step boundary.
        self.preemption.phase = TRAINING
        if dist.any_rank(self.preemption.requested):
            raise PreemptedBeforeFirstStep()
        return control

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        if self._step_started is not None:
            self._last_step_seconds = time.monotonic() - self._step_started
        if dist.any_rank(self.preemption.requested):
            self._stop(state, control, "step_end")
        return control

    # A signal during logging/evaluation of step N (after on_step_end's check) still saves at step N.
    # Single process only: with several ranks, collectives must run in lockstep, so only on_step_end checks.
    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        if self.run.world_size == 1 and self.preemption.requested:
            self._stop(state, control, "log")
        return control

    def on_evaluate(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        if self.run.world_size == 1 and self.preemption.requested:
            self._stop(state, control, "evaluate")
        return control

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        # A signal that arrived while this checkpoint was being written: it is committed now, stop here.
        if dist.any_rank(self.preemption.requested):
            self.run.wait_for_save()  # a background save: committed (or its error raised) before the stop
            if not self.run.stop_for_preemption:
                self._stop(state, control, "save")
            control.should_training_stop = True
            control.should_save = False
            if self.run.emergency_save_seconds is None and self.run.last_commit_step == state.global_step:
                self.run.emergency_save_seconds = self.run.last_save_seconds
        return control


class VolumeSpaceCallback(TrainerCallback):
    """Warns when the checkpoint volume cannot hold the model cache (when it is there) plus the checkpoints
    the run keeps: status.volumeWarning (cleared when it fits) and one VolumeTooSmall Event per attempt.
    Checked at the start (the resumed checkpoint's size, else an estimate) and after each commit (its
    size)."""

    def __init__(self, run: RunState, reporter: StatusReporter, cache_dir: Path | None):
        self.run = run
        self.reporter = reporter
        self.cache_dir = cache_dir
        self._cache_bytes: int | None = None  # measured once: the cache does not grow while training
        self._reported: str | None = None
        self._checked = False
        self._event_sent = False
        self._checked_commit: ckpt.CommitRecord | None = None

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        self._checked_commit = self.run.last_commit  # the checkpoint resumed from: checked here, not again
        if self.run.is_main:
            estimate = volume.estimate_checkpoint_bytes(self.run.last_commit, kwargs.get("model"))
            try:
                present = len(ckpt.committed_checkpoints(self.run.output_dir))
            except OSError:  # a warning must never stop training; the check below reports the volume
                present = 0
            self.check(args, state, estimate, present)
        return control

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        self._check_new_commit(args, state)
        return control

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        self._check_new_commit(args, state)  # a background save commits between steps
        return control

    def _check_new_commit(self, args: TrainingArguments, state: TrainerState) -> None:
        commit = self.run.last_commit
        if not self.run.is_main or commit is None or commit is self._checked_commit:
            return
        self._checked_commit = commit
        self.check(args, state, commit.bytes, self.run.retained)

    def check(self, args: TrainingArguments, state: TrainerState, checkpoint_bytes: int | None, present: int):
        if not checkpoint_bytes:
            return
        out = self.run.output_dir
        try:
            if self._cache_bytes is None:
                cache = self.cache_dir
                on_volume = cache is not None and cache.is_dir() and volume.same_filesystem(cache, out)
                self._cache_bytes = volume.tree_bytes(cache) if on_volume and cache is not None else 0
            plan = volume.SpacePlan(
                capacity_bytes=volume.capacity_bytes(out),
                free_bytes=volume.free_bytes(out),
                cache_bytes=self._cache_bytes,
                checkpoint_bytes=checkpoint_bytes,
                kept=volume.checkpoints_kept(self.run.save_total_limit, _saves_in_run(args, state)),
                present=present,
            )
        except OSError as error:  # a warning must never stop training
            log("volume_space_unknown", level="warning", error=volume.first_line(error))
            return
        warning = plan.warning()
        if not self._checked or warning != self._reported:
            log(
                "volume_space",
                level="warning" if warning else "info",
                capacity_bytes=plan.capacity_bytes,
                free_bytes=plan.free_bytes,
                cache_bytes=plan.cache_bytes,
                checkpoint_bytes=plan.checkpoint_bytes,
                kept=plan.kept,
                present=plan.present,
                needed_bytes=plan.needed_bytes,
                warning=warning,
            )
            # null clears an earlier attempt's warning
            self.reporter.update(TrainerStatus.patch(volume_warning=warning))
        if warning and not self._event_sent:
            self._event_sent = True
            self.reporter.event("Warning", "VolumeTooSmall", warning)
        self._checked = True
        self._reported = warning


def _saves_in_run(args: TrainingArguments, state: TrainerState) -> int:
    """Checkpoints the whole run writes (what an unlimited save_total_limit keeps)."""
    strategy = getattr(args.save_strategy, "value", args.save_strategy)
    if strategy == "epoch":
        return math.ceil(args.num_train_epochs)
    return math.ceil(max(state.max_steps, 1) / max(int(args.save_steps), 1))


class ProgressCallback(TrainerCallback):
    """step / total / epoch / loss to the log, the job's status and the metrics."""

    def __init__(self, run: RunState, reporter: StatusReporter, metrics: TrainerMetrics | None):
        self.run = run
        self.reporter = reporter
        self.metrics = metrics
        self._step_started: float | None = None
        self._tokens_at_start = 0
        self._step_seconds: float | None = None
        self._tokens_per_second: float | None = None
        self._reported_non_finite = False
        self.throughput = ThroughputMeter()

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        self.run.total_steps = state.max_steps
        self.throughput.add(time.monotonic(), state.global_step, int(state.num_input_tokens_seen or 0))
        if self.run.is_main:
            log(
                "train_begin",
                step=state.global_step,
                total_steps=state.max_steps,
                world_size=self.run.world_size,
            )
            self.reporter.update(
                TrainerStatus.patch(
                    step=state.global_step,
                    total_steps=state.max_steps,
                    progress=f"{state.global_step}/{state.max_steps}",
                )
            )
            if self.metrics is not None:
                self.metrics.total_steps.set(state.max_steps)
                self.metrics.step.set(state.global_step)
        return control

    def on_step_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        self._step_started = time.monotonic()
        self._tokens_at_start = int(state.num_input_tokens_seen or 0)
        return control

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        if self._step_started is not None:
            self._step_seconds = time.monotonic() - self._step_started
            tokens = int(state.num_input_tokens_seen or 0) - self._tokens_at_start
            self._tokens_per_second = (
                tokens / self._step_seconds if self._step_seconds > 0 and tokens else None
            )
            if self.metrics is not None:
                self.metrics.step_seconds.observe(self._step_seconds)
                if self._tokens_per_second is not None:
                    self.metrics.tokens_per_second.set(self._tokens_per_second)
        self.throughput.add(time.monotonic(), state.global_step, int(state.num_input_tokens_seen or 0))
        if self.metrics is not None:
            self.metrics.step.set(state.global_step)
        return control

    def on_log(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, logs=None, **kwargs
    ):
        if not self.run.is_main or not logs:
            return control
        fields: dict[str, Any] = {"step": state.global_step, "total_steps": state.max_steps}
        if state.epoch is not None:
            fields["epoch"] = round(float(state.epoch), 6)
        fields.update({k: v for k, v in logs.items() if isinstance(v, int | float)})
        if "loss" in logs and self._step_seconds is not None:
            fields["step_seconds"] = round(self._step_seconds, 5)
            if self._tokens_per_second is not None:
                fields["tokens_per_second"] = round(self._tokens_per_second, 1)
        log("train_log" if "loss" in logs or "eval_loss" in logs else "train_summary", **fields)
        status: dict[str, Any] = {  # TrainerStatus fields
            "step": state.global_step,
            "total_steps": state.max_steps,
            "progress": f"{state.global_step}/{state.max_steps}",
        }
        if state.epoch is not None:
            status["epoch"] = round(float(state.epoch), 4)
        if "loss" in logs:
            loss = float(logs["loss"])
            # JSON has no NaN: a non-finite loss is reported as null (and once as an Event), so the status
            # patch stays valid and step/lastCheckpoint keep updating.
            status["loss"] = round(loss, 6) if math.isfinite(loss) else None
            if not math.isfinite(loss) and not self._reported_non_finite:
                self._reported_non_finite = True
                log("loss_not_finite", level="warning", step=state.global_step, loss=str(loss))
                self.reporter.event(
                    "Warning", "LossNotFinite", f"loss is {_finite_name(loss)} at step {state.global_step}"
                )
            if self.metrics is not None:
                self.metrics.loss.set(loss)
        patch = TrainerStatus.patch(**status)
        patch.update(self.throughput.status(state.global_step, state.max_steps))
        self.reporter.update(patch)
        return control


def _finite_name(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    return "Inf" if value > 0 else "-Inf"


class FaultInjectionCallback(TrainerCallback):
    def __init__(self, run: RunState, faults: Faults):
        self.run = run
        self.faults = faults

    def on_step_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        first = self.run.first_step_of_run
        self.run.first_step_of_run = False
        self.faults.before_step(state.global_step + 1, args.per_device_train_batch_size, first)
        return control

    def on_substep_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        if not control.should_training_stop:  # stopping at this micro-batch: there is no next one to delay
            self.faults.after_micro_batch()
        return control

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        self.faults.after_micro_batch()  # the step's last micro-batch
        self.faults.after_step()
        return control


class StartupCallback(TrainerCallback):
    """The last start-up phases: the Trainer's set-up (with the checkpoint restore when resuming: adapter,
    optimizer, scheduler, RNG, skipping the batches already trained) until the first step begins."""

    def __init__(self) -> None:
        self.phase = "train_setup"

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        self.phase = "resume_restore" if state.global_step > 0 else "train_setup"
        startup.mark(self.phase)
        return control

    def on_step_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        startup.finish(self.phase, step=state.global_step)
        return control


def trainer_callbacks(
    run: RunState,
    preemption: Preemption,
    reporter: StatusReporter,
    metrics: TrainerMetrics | None,
    faults: Faults,
    cache_dir: Path | None,
) -> list[TrainerCallback]:
    """The callbacks of a training attempt, in the order the Trainer calls them for each event (after its
    own DefaultFlowCallback, which sets should_save/should_log for the step first). Each one after the one
    before because:

    1. CheckpointCommitCallback: first, so that in on_save the checkpoint HF just wrote is committed before
       any callback asks for the newest commit, and in on_step_end a failed background save ends training
       before the others act on that step. It hands each commit to 2 and 3, in that order (their docstrings,
       commit_callbacks.py).
    2. RetentionCallback: after the commit, which it is called with: only a committed checkpoint counts.
    3. CommitReportCallback: after retention, called with the commit: it reports what retention deleted and
       how many checkpoints are kept.
    4. PreemptionCallback: after the commit: in on_save it reads the commit just made (whether the stop
       still needs a save, how long the emergency save took), and it waits for a background save there.
    5. ProgressCallback: needs nothing from the ones before and nothing after needs it.
    6. VolumeSpaceCallback: after the commit and retention: in on_save (and on_step_end, for a background
       save) it checks the new commit's size with the number of checkpoints retention kept.
    7. FaultInjectionCallback: last (tests only): a fault after a step or micro-batch lands after every other
       callback handled it, and in on_substep_end it reads the stop PreemptionCallback decided there.

    With spec.checkpoint.objectStore, attempt.py appends upload.CheckpointUploadCallback last: it hands each
    commit (made by 1) to the uploader, and at the end waits for the last upload after all else is done.

    CommitTrainer adds two of its own after these, which read only the Trainer's state: StartupCallback
    (start-up phases) and StepBoundary (the state where each optimizer step began).
    """
    retention = RetentionCallback(run)
    report = CommitReportCallback(run, reporter, metrics)
    return [
        CheckpointCommitCallback(run, followers=(retention, report)),
        retention,
        report,
        PreemptionCallback(run, preemption),
        ProgressCallback(run, reporter, metrics),
        VolumeSpaceCallback(run, reporter, cache_dir),
        FaultInjectionCallback(run, faults),
    ]
