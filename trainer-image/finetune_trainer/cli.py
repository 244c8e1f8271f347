"""`finetune-trainer`: the trainer pod's PID 1.

    finetune-trainer --config FILE --output-dir DIR [--resume auto|never|PATH]
                     [--run-id ID] [--resume-from PATH]
                     [--termination-message-path P] [--nproc-per-node N] [--attempt N]

DIR belongs to one run (DIR/RUN.json, identity.py): a DIR of another run id or another training spec is
refused with exit 78 and left as it was.

Exit codes (finetune_api.contract): 0 finished (DIR/final written), 75 stopped on SIGTERM after committing a
checkpoint, 76 CUDA out of memory, 78 config error, 65 committed checkpoints exist but none is intact
(nothing deleted; unless the config says `on_no_intact_checkpoint: restart`), 73 superseded (a newer
`--attempt` claimed DIR: nothing changed there after that), 1 other error. Every exit path
writes the termination message. Heavy imports (torch, transformers) happen after the signal handler is
installed and after the cheap config checks, so a bad config fails in about a second and a SIGTERM during
start-up exits 75 at once.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
import uuid
from pathlib import Path
from typing import Any

from finetune_api.contract import (
    COMMIT_MARKER,
    DAMAGED_DIR,
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
from finetune_api.status import TrainerStatus
from finetune_api.trainer_config import InvalidManifest, TrainerConfig, load_trainer_config

from finetune_trainer import checkpoints as ckpt
from finetune_trainer import identity
from finetune_trainer.build import ConfigError, check_static, go_offline_when_local
from finetune_trainer.fence import AttemptFence, Superseded
from finetune_trainer.logs import TerminationWriter, default_termination_path, log, set_context, startup
from finetune_trainer.preemption import FINISHING, LOADING, Preemption

EXIT_ERROR = 1


class NoIntactCheckpoint(Exception):
    """Committed checkpoints exist and none can be resumed from (exit 65); the message names each one."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="finetune-trainer", description="Crash-safe LoRA fine-tuning (SFT)."
    )
    parser.add_argument("--config", required=True, help="FineTuneJob manifest or TrainerConfig (YAML/JSON)")
    parser.add_argument("--output-dir", required=True, help="checkpoint-N/ directories and final/ go here")
    parser.add_argument(
        "--resume",
        default="auto",
        help="auto: newest committed checkpoint in the output dir, else start fresh; never; or a checkpoint",
    )
    parser.add_argument(
        "--run-id",
        default=None,
        help="this run's id (the FineTuneJob's uid); DIR must be new or hold this run (default: DIR's own, "
        "else a new one)",
    )
    parser.add_argument(
        "--resume-from",
        default=None,
        help="with --resume auto, while DIR has no committed checkpoint: continue from this committed "
        "checkpoint, or from the newest intact one of this run directory (read only)",
    )
    parser.add_argument(
        "--termination-message-path",
        default=None,
        help="where to write the termination message (default: /dev/termination-log when writable)",
    )
    parser.add_argument(
        "--nproc-per-node",
        type=_positive,
        default=1,
        help="run N processes (one per GPU) under this process, which stays PID 1 and forwards SIGTERM",
    )
    parser.add_argument(
        "--attempt",
        type=_positive,
        default=None,
        help="this attempt's number (the operator's): recorded in DIR/ATTEMPT.json at start; a trainer that "
        "finds a newer one there stops (exit 73) before any commit, retention or deletion. Off when absent",
    )
    return parser.parse_args(argv)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be >= 1")
    return value


def _rank_info() -> tuple[int, int]:
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return rank, world


class Run:
    """One attempt: the state every exit path needs for its termination message."""

    def __init__(self, args: argparse.Namespace, preemption: Preemption):
        self.args = args
        self.preemption = preemption
        self.rank, self.world_size = _rank_info()
        self.is_main = self.rank == 0
        path = args.termination_message_path or default_termination_path()
        self.term = TerminationWriter(path if self.is_main else None)
        self.output_dir = Path(args.output_dir)
        self.fence = AttemptFence(self.output_dir, args.attempt)  # only the main rank claims
        self.config: TrainerConfig | None = None
        self.newest_commit: ckpt.CommitRecord | None = None
        self.search: ckpt.ResumeSearch | None = None  # --resume auto: the candidates, newest first
        self.resume: ckpt.CommitRecord | None = None  # the checkpoint this build resumes from
        self.sections: dict[str, Any] = {}  # the training-defining spec as the config gives it
        self.identity: identity.RunIdentity | None = None  # DIR/RUN.json when it exists
        self.run_id: str = args.run_id or ""
        self.source: Path | None = None  # --resume-from in use: the other run's directory or checkpoint
        self.source_differences: list[str] = []
        self.step: int | None = None
        self.run_state: Any = None  # callbacks.RunState once training is set up
        self.trainer: Any = None
        self.store: Any = None  # spec.checkpoint.objectStore: the S3 client (object_store())
        self.durable_at_start: str | None = None  # the newest remote committed checkpoint at start

    # -------------------------------------------------------------------------------- exit messages

    def _commit_fields(self) -> dict[str, Any]:
        record = self.run_state.last_commit if self.run_state is not None else None
        record = record or self.newest_commit
        durable = self.run_state.durable_checkpoint if self.run_state is not None else None
        durable = {"durable_checkpoint": durable or self.durable_at_start} if self.store is not None else {}
        if record is None:
            return durable
        return {"checkpoint": record.name, "checkpoint_step": record.step, **durable}

    def _current_step(self) -> int | None:
        if self.trainer is not None:
            return int(self.trainer.state.global_step)
        return self.newest_commit.step if self.newest_commit else None

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

    def early_exit_message(self) -> None:
        """From the signal handler during start-up: no locks, no allocation-heavy work."""
        self.term.write_raw_unlocked(
            TerminationMessage(
                reason="Preempted",
                step=self.newest_commit.step if self.newest_commit else None,
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

    # ------------------------------------------------------------------------------------- phases

    def resolve_resume(self) -> ckpt.CommitRecord | None:
        mode = self.args.resume  # main() has already finished at once when DIR/final is complete (not never)
        if mode == "never":
            # Any commit marker counts, intact or damaged: starting over would delete it (and with it,
            # evidence of the damage).
            existing = [p for _s, p in ckpt.list_checkpoints(self.output_dir) if (p / COMMIT_MARKER).exists()]
            if existing or ckpt.final_complete(self.output_dir):
                raise ConfigError(
                    f"--resume never: {self.output_dir} already holds committed checkpoints "
                    f"({', '.join(p.name for p in existing) or FINAL_DIR}); "
                    "use --resume auto or an empty directory"
                )
            return None
        if mode == "auto":
            self.search = ckpt.ResumeSearch(self.output_dir)
            found = self.next_candidate()
            if found is None and not self.search.damaged and self.args.resume_from:
                return self.resolve_resume_from(Path(self.args.resume_from))
            return found
        path = Path(mode)
        try:
            record = ckpt.read_commit(path, verify_checksums=True)
        except ckpt.NotCommitted as error:
            raise ConfigError(f"--resume {mode}: not a committed checkpoint: {error}") from None
        except ckpt.CheckpointError as error:
            raise NoIntactCheckpoint(f"--resume {mode}: damaged: {error}; nothing was moved") from None
        log("resume_from", checkpoint=str(path), step=record.step, reason="--resume PATH")
        self.newest_commit = record
        return record

    def resolve_resume_from(self, source: Path) -> ckpt.CommitRecord:
        """DIR has no committed checkpoint yet: continue from another run's. Read only: nothing there is set
        aside, deleted or retained; this run's own checkpoints go to DIR."""
        self.source = source
        if not source.is_dir():
            raise ConfigError(f"--resume-from {source}: no such directory on the checkpoint volume")
        if ckpt.checkpoint_step(source) is not None or (source / COMMIT_MARKER).exists():
            self.search = None  # one checkpoint named: no fallback to another, as --resume PATH
            try:
                record = ckpt.read_commit(source, verify_checksums=True)
            except ckpt.NotCommitted as error:
                raise ConfigError(f"--resume-from {source}: not a committed checkpoint: {error}") from None
            except ckpt.CheckpointError as error:
                raise NoIntactCheckpoint(
                    f"--resume-from {source}: damaged: {error}; nothing was moved"
                ) from None
        else:
            self.search = ckpt.ResumeSearch(source)
            found = self.next_candidate()
            if found is None:
                if self.search.damaged:
                    raise NoIntactCheckpoint(self.no_intact_message(self.search, source))
                raise ConfigError(
                    f"--resume-from {source}: no committed checkpoint there (a run directory's final/ is not "
                    "a checkpoint: it has no optimizer, scheduler or data position)"
                )
            record = found
        _, self.source_differences = identity.check_continuation(source, record, self.sections)
        log(
            "resume_from",
            checkpoint=str(record.path),
            step=record.step,
            reason="--resume-from: this run's directory has no committed checkpoint yet",
            same_spec=not self.source_differences,
            differences=self.source_differences or None,
        )
        self.newest_commit = record
        return record

    def next_candidate(self) -> ckpt.CommitRecord | None:
        """The next older committed checkpoint whose files match its marker (sizes and checksums), or None."""
        search = self.search
        assert search is not None
        seen = len(search.rejected)
        record = search.next()
        for item in search.rejected[seen:]:
            log(
                "checkpoint_skipped",
                level="warning",
                checkpoint=item.path.name,
                reason=item.why,
                damaged=item.committed,
            )
        if record is not None:
            log(
                "resume_from",
                checkpoint=record.name,
                step=record.step,
                marker_version=record.version,
                reason="newest committed checkpoint whose files match its marker"
                + (" (sizes and checksums)" if record.checksums else " (sizes: version-1 marker)"),
            )
            self.newest_commit = record
            return record
        self.newest_commit = None
        return None

    def settle_resume(self, resume: ckpt.CommitRecord | None) -> ckpt.CommitRecord | None:
        """Once the config has proven loadable (a config error comes first): pass over candidates that cannot
        be read back (restore probe), then decide what no intact checkpoint means. NoIntactCheckpoint when
        committed ones exist, none is usable and the config does not allow starting over."""
        from finetune_trainer.trainer import probe_restore

        while resume is not None:
            self.check_world_size(resume)  # a different process count is a config error, not damage
            try:
                # A checkpoint that matches its marker but cannot be deserialised (a version-1 marker has no
                # checksums; a writer bug) is passed over here, before the Trainer is built.
                probe_restore(resume.path, self.world_size)
                return resume
            except ckpt.RestoreFailed as error:
                resume = self.reject(resume, f"restore probe: {error}")
        search = self.search
        if search is None or not search.damaged:
            log("resume_none", reason="no committed checkpoint")
            return None
        assert self.config is not None
        if self.source is not None:  # the other run's checkpoints are never set aside: fail, nothing moved
            raise NoIntactCheckpoint(self.no_intact_message(search, self.source))
        if self.config.on_no_intact_checkpoint != "restart":
            raise NoIntactCheckpoint(self.no_intact_message(search))
        log(
            "resume_none",
            level="warning",
            reason="none intact; on_no_intact_checkpoint is restart: starting over, damaged ones set aside",
            damaged=[item.path.name for item in search.damaged],
        )
        return None

    def no_intact_message(self, search: ckpt.ResumeSearch, source: Path | None = None) -> str:
        problems = "; ".join(f"{item.path.name}: {item.why}" for item in search.rejected)
        if source is not None:
            return f"--resume-from {source}: no intact checkpoint: {problems}. Nothing was deleted or moved"
        return (
            f"no intact checkpoint in {self.output_dir}: {problems}. Nothing was deleted or moved. "
            "To start over instead, set spec.checkpoint.onNoIntactCheckpoint: restart "
            f"(damaged checkpoints are then moved to {self.output_dir / DAMAGED_DIR}/)"
        )

    def reject(self, record: ckpt.CommitRecord, why: str) -> ckpt.CommitRecord | None:
        """Restoring `record` failed: note it and take the next older candidate (None when there is none)."""
        log("checkpoint_restore_failed", level="error", checkpoint=record.name, reason=why)
        if self.search is None:  # --resume PATH: the user chose this one; no silent fallback, nothing moved
            chosen = f"--resume-from {self.source}" if self.source else f"--resume {self.args.resume}"
            raise NoIntactCheckpoint(f"{chosen}: damaged: {why}; nothing was moved")
        self.search.reject(record, why)
        return self.next_candidate()

    def check_world_size(self, record: ckpt.CommitRecord) -> None:
        missing = [name for name in ckpt.rng_files(self.world_size) if name not in record.files]
        if missing:
            raise ConfigError(
                f"--resume: {record.name} was written by a different number of processes (it lacks "
                f"{', '.join(missing)}); exact resume needs the same number ({self.world_size} now)"
            )

    def main(self) -> int:
        started = time.monotonic()
        set_context(rank=self.rank if self.world_size > 1 else None)
        startup.mark("python")  # from process start: the interpreter and this module's imports
        try:
            # The config carries the operator's OOM adaptations (batch, accumulation): their only route.
            config = load_trainer_config(self.args.config)
            self.sections = identity.spec_sections(config)  # batch x accumulation as one product
            self.config = config
            check_static(config)
            go_offline_when_local(config)  # before transformers/datasets are imported (they read it once)
            # Whose directory is this? Before anything is read as ours (final/, checkpoints): another run's
            # final adapter or optimizer state must never pass for this run's.
            self.identity = identity.check_run_directory(self.output_dir, self.args.run_id, self.sections)
            self.run_id = self.args.run_id or identity.run_id_of(self.output_dir) or uuid.uuid4().hex
            # DIR is created only once the config proved workable (train()): a config error leaves it alone.
            final = ckpt.final_complete(self.output_dir) if self.args.resume != "never" else None
            if final is not None:
                log("already_complete", final=str(self.output_dir / FINAL_DIR))
                self.newest_commit = None
                return self.exit_with(
                    EXIT_SUCCEEDED,
                    "Completed",
                    final=str(self.output_dir / FINAL_DIR),
                    final_step=final.get("step"),
                )
            if self.is_main:
                # Before the resume choice: from here on an older attempt changes nothing (DIR exists;
                # otherwise the claim comes when train() creates it).
                self.fence.claim()
            self.fetch_from_object_store(config)
            resume = self.resolve_resume()
            if resume is not None:
                self.check_world_size(resume)
        except Superseded as error:
            return self.exit_superseded(error)
        except InvalidManifest as error:
            for line in error.errors:
                print(f"config error: {line}", file=sys.stderr, flush=True)
            return self.exit_with(EXIT_CONFIG_ERROR, "ConfigError", message="; ".join(error.errors))
        except ConfigError as error:
            print(f"config error: {error}", file=sys.stderr, flush=True)
            return self.exit_with(EXIT_CONFIG_ERROR, "ConfigError", message=str(error))
        except NoIntactCheckpoint as error:
            return self.exit_no_intact(error)
        startup.mark("config")
        log(
            "config_loaded",
            seconds=round(time.monotonic() - started, 3),
            resume=resume.name if resume else None,
        )
        try:
            return self.train(config, resume)
        except ConfigError as error:
            print(f"config error: {error}", file=sys.stderr, flush=True)
            return self.exit_with(EXIT_CONFIG_ERROR, "ConfigError", message=str(error))
        except NoIntactCheckpoint as error:
            return self.exit_no_intact(error)
        except BaseException as error:
            return self.classify_failure(error)

    def exit_superseded(self, error: Superseded) -> int:
        log("superseded", level="error", message=str(error), attempt=error.attempt, newer=error.newer)
        return self.exit_with(EXIT_SUPERSEDED, "Superseded", message=str(error))

    def exit_no_intact(self, error: NoIntactCheckpoint) -> int:
        print(f"no intact checkpoint: {error}", file=sys.stderr, flush=True)
        self.newest_commit = None
        return self.exit_with(EXIT_NO_INTACT_CHECKPOINT, "NoIntactCheckpoint", message=str(error))

    def classify_failure(self, error: BaseException) -> int:
        from finetune_trainer.callbacks import PreemptedBeforeFirstStep

        if isinstance(error, Superseded):
            return self.exit_superseded(error)
        if isinstance(error, PreemptedBeforeFirstStep):
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

    def train(self, config: TrainerConfig, resume: ckpt.CommitRecord | None) -> int:
        import torch  # heavy imports from here on

        from finetune_trainer.faults import Faults
        from finetune_trainer.reporting import (
            StatusReporter,
            TrainerMetrics,
            kubernetes_event_poster,
            kubernetes_patcher,
        )

        use_cuda = torch.cuda.is_available()
        faults = Faults.from_env()
        patcher = post_event = None
        if config.job is not None and self.is_main:
            try:
                patcher = kubernetes_patcher(config.job)
                post_event = kubernetes_event_poster(config.job)
            except Exception as error:  # not in a cluster: log only
                log("status_reporting_off", level="warning", error=f"{type(error).__name__}: {error}"[:300])
        reporter = StatusReporter(patcher, post_event=post_event)
        metrics = None
        if self.is_main:
            try:
                metrics = TrainerMetrics(config.metrics_port)
            except OSError as error:
                log("metrics_off", level="warning", error=str(error))
        self.preemption.start_watchdog(config.save_deadline_seconds, self.on_save_deadline)
        try:
            while True:
                self.resume = resume
                try:
                    return self.train_from(config, use_cuda, faults, reporter, metrics)
                except ckpt.RestoreFailed as error:
                    # The Trainer could not restore it after all (e.g. a state that does not fit the model):
                    # set it aside and go on from the next older one in this process, spending no attempt.
                    # With several ranks they could not agree on that: exit 1 as any error.
                    if self.world_size > 1 or self.resume is None:
                        raise
                    why = str(error)
                # Outside the except block: the traceback (and the failed trainer and model) is released.
                self.release_trainer(use_cuda)
                resume = self.reject(self.resume, why)
        finally:
            reporter.close()

    def release_trainer(self, use_cuda: bool) -> None:
        """Drop the trainer and model of a failed restore before building them again."""
        import gc

        self.preemption.phase = LOADING  # nothing is being written: a signal may end the process at once
        self.trainer = None
        self.run_state = None
        gc.collect()
        if use_cuda:
            import torch

            torch.cuda.empty_cache()

    def set_aside_damaged(self) -> None:
        """Damaged committed checkpoints passed over by the search move to DIR/damaged/ (never deleted)."""
        if self.search is None or not self.search.damaged or self.source is not None:  # source: read only
            return
        self.fence.check("setting damaged checkpoints aside")
        for item, moved in ckpt.set_aside_all(self.search.damaged):
            log(
                "checkpoint_set_aside",
                level="warning",
                checkpoint=item.path.name,
                to=str(moved.relative_to(self.output_dir)),
                reason=item.why,
            )

    def train_from(
        self,
        config: TrainerConfig,
        use_cuda: bool,
        faults: Any,
        reporter: Any,
        metrics: Any,
    ) -> int:
        import torch

        from finetune_trainer import build
        from finetune_trainer.background import BackgroundSaver
        from finetune_trainer.callbacks import (
            CheckpointCommitCallback,
            FaultInjectionCallback,
            PreemptionCallback,
            ProgressCallback,
            RunState,
            VolumeSpaceCallback,
        )
        from finetune_trainer.trainer import CommitTrainer

        startup.mark("imports")  # torch, transformers, trl, peft, datasets
        t0 = time.monotonic()
        train_ds, eval_ds = build.load_datasets(config)  # first: its config errors need no model load
        startup.mark("dataset_load")
        tokenizer, model = build.load_tokenizer_and_model(config, use_cuda)
        build.check_lora_targets(config, model)
        if config.dataset.format == "messages" and not getattr(tokenizer, "chat_template", None):
            raise ConfigError("dataset.format: 'messages' needs a tokenizer with a chat template")
        args = build.sft_config(config, self.output_dir, use_cuda, self.world_size)
        # With several processes every rank writes its RNG file and all agree at barriers: synchronous.
        background = config.background_save and self.world_size == 1
        log(
            "loaded",
            seconds=round(time.monotonic() - t0, 3),
            train_examples=len(train_ds),
            eval_examples=len(eval_ds) if eval_ds is not None else None,
            cuda=use_cuda,
            threads=torch.get_num_threads(),
            world_size=self.world_size,
            background_save=background,
        )
        resume = self.resume = self.settle_resume(self.resume)
        startup.mark("resume_restore")  # the restore probe (the Trainer's restore is counted later)
        extra = ("scaler.pt",) if (use_cuda and args.fp16) else ()
        run = RunState(
            output_dir=self.output_dir,
            world_size=self.world_size,
            is_main=self.is_main,
            save_total_limit=config.training.save_total_limit,
            extra_required=extra,
            last_commit=resume,
            fence=self.fence,
            identity=self.identity_fields(),
            saver=BackgroundSaver() if background else None,
        )
        self.run_state = run
        run.durable_checkpoint = self.durable_at_start
        callbacks = [
            CheckpointCommitCallback(run, reporter, metrics),
            PreemptionCallback(run, self.preemption),
            ProgressCallback(run, reporter, metrics),
            VolumeSpaceCallback(run, reporter, hf_home()),  # after the commit callback: reads its record
            FaultInjectionCallback(run, faults),
            *self.upload_callbacks(config, run, metrics, reporter),
        ]
        try:
            trainer = CommitTrainer(
                model=model,
                args=args,
                train_dataset=train_ds,
                eval_dataset=eval_ds,
                processing_class=tokenizer,
                peft_config=build.lora_config(config),
                callbacks=callbacks,
                run=run,
                faults=faults,
            )
        except ValueError as error:
            if type(error).__name__ == "NoMatchingPeftModuleError":  # e.g. a regex that matches nothing
                raise ConfigError(f"lora.target_modules: {str(error).splitlines()[0]}") from error
            raise
        from transformers.trainer_callback import PrinterCallback

        if self.is_main:  # only now that loading worked: a config error must leave DIR untouched
            self.output_dir.mkdir(parents=True, exist_ok=True)
            self.fence.claim()  # already claimed when DIR existed at start: then only a check
            self.claim_directory(config, resume)
            reporter.update(
                TrainerStatus.patch(started_from=self.identity.started_from if self.identity else None)
            )
            self.set_aside_damaged()
            self.fence.check("removing checkpoints newer than the resume point")
            # Resuming from another run: DIR has no committed checkpoint, only torn saves (if any) to clear.
            own_step = resume.step if resume and self.source is None else None
            stale = ckpt.remove_newer_than(self.output_dir, own_step)
            if stale:
                log(
                    "removed_stale_checkpoints",
                    checkpoints=[p.name for p in stale],
                    resume_point=resume.name if resume else "fresh start",
                    reason="newer than the resume point and not committed"
                    + (" (or not chosen by --resume PATH)" if self.search is None else ""),
                )

        trainer.remove_callback(PrinterCallback)  # prints python dicts to stdout; our logs are JSON lines
        self.trainer = trainer
        try:
            trainer.train(resume_from_checkpoint=str(resume.path) if resume else None)
        except BaseException:
            if run.saver is not None:
                run.saver.drain()  # a save in flight finishes (its commit keeps work) before the process ends
            raise
        run.wait_for_save()  # normally done in on_train_end already
        state = trainer.state
        if run.stop_for_preemption and state.global_step < state.max_steps:
            return self.finish_preempted(run)
        self.preemption.phase = FINISHING
        return self.finish(trainer, config, state.global_step, faults)

    # --- spec.checkpoint.objectStore (finetune_trainer.remote / upload): the durable copy ---------------

    def fetch_from_object_store(self, config: TrainerConfig) -> None:
        """Before the resume choice: a newer remote commit than any local one is downloaded (main rank)."""
        if config.object_store is None or not self.is_main:
            return
        from finetune_trainer import remote, upload

        self.store = remote.open_store(config.object_store)
        if self.args.resume == "auto":  # never / PATH: the user chose; the store only receives uploads
            self.durable_at_start = upload.fetch_newer_remote(
                self.store, config.object_store.prefix, self.output_dir
            )

    def upload_callbacks(self, config: TrainerConfig, run: Any, metrics: Any, reporter: Any) -> list[Any]:
        if self.store is None or config.object_store is None:
            return []
        from finetune_trainer.upload import CheckpointUploadCallback, Uploader

        uploader = Uploader(
            self.store, config.object_store.prefix, run, metrics, self.durable_at_start, reporter
        )
        return [CheckpointUploadCallback(run, uploader, self.preemption)]

    def identity_fields(self) -> dict[str, str]:
        return {"run_id": self.run_id, "fingerprint": identity.fingerprint(self.sections)}

    def claim_directory(self, config: TrainerConfig, resume: ckpt.CommitRecord | None) -> None:
        """Write DIR/RUN.json at the run's first start (never rewritten): whose run, what spec, from where."""
        if self.identity is not None:
            return
        started = (
            identity.claim_relative(resume.path) if resume is not None and self.source else identity.FRESH
        )
        if resume is not None and self.source is None:
            started = "(a run directory without RUN.json, adopted)"  # written before run identities existed
        job = config.job.model_dump() if config.job is not None else None
        self.identity = identity.RunIdentity(
            run_id=self.run_id,
            fingerprint=identity.fingerprint(self.sections),
            sections=self.sections,
            job=job,
            created_at=ckpt.now_rfc3339(),
            started_from=started,
        )
        identity.write_identity(self.output_dir, self.identity)
        log(
            "run_directory_claimed",
            run_id=self.run_id,
            fingerprint=self.identity.fingerprint,
            started_from=started,
        )

    def finish_preempted(self, run: Any) -> int:
        seconds = run.emergency_save_seconds
        if (
            seconds is None
            and run.last_commit is not None
            and run.last_commit.step == self.trainer.state.global_step
        ):
            seconds = 0.0  # the newest committed checkpoint was already at this step
        since = self.preemption.seconds_since_request()
        log(
            "preempted",
            step=self.trainer.state.global_step,
            save_seconds=seconds,
            seconds_since_signal=round(since or 0.0, 3),
        )
        return self.exit_with(
            EXIT_PREEMPTED,
            "Preempted",
            save_seconds=None if seconds is None else round(seconds, 4),
            save_in_time=seconds is not None,  # committed (or already there) before the watchdog's deadline
            save_deadline_seconds=self.config.save_deadline_seconds if self.config is not None else None,
        )

    def finish(self, trainer: Any, config: TrainerConfig, step: int, faults: Any) -> int:
        from finetune_trainer import dist

        faults.before_final(step)  # test hook: a SIGKILL here lands after the last commit, before final/
        t0 = time.monotonic()
        final_path = self.output_dir / FINAL_DIR
        if self.is_main:

            def write(tmp: Path) -> None:
                trainer.save_model(str(tmp))
                if config.model.merge_adapter:
                    merged = trainer.accelerator.unwrap_model(trainer.model).merge_and_unload()
                    merged.save_pretrained(str(tmp / "merged"))
                    if trainer.processing_class is not None:
                        trainer.processing_class.save_pretrained(str(tmp / "merged"))

            self.fence.check("writing final/")
            ckpt.publish_final(
                self.output_dir,
                write,
                step,
                before_replace=lambda: self.fence.check("publishing final/"),
                identity=self.identity_fields(),
            )
        dist.barrier()
        log(
            "final_written",
            path=str(final_path),
            step=step,
            seconds=round(time.monotonic() - t0, 3),
            bytes=ckpt.dir_bytes(final_path) if self.is_main else None,
        )
        return self.exit_with(EXIT_SUCCEEDED, "Completed", final=str(final_path))


def hf_home() -> Path:
    """The Hugging Face cache (HF_HOME, as huggingface_hub resolved it)."""
    from huggingface_hub import constants

    return Path(constants.HF_HOME)


def _is_cuda_oom(error: BaseException) -> bool:
    try:
        import torch

        if isinstance(error, torch.OutOfMemoryError):
            return True
    except ImportError:  # pragma: no cover
        pass
    return isinstance(error, RuntimeError) and "CUDA out of memory" in str(error)


def main(argv: list[str] | None = None) -> int:
    preemption = Preemption()
    preemption.install()  # first: a SIGTERM during the imports below must already exit 75
    args = parse_args(argv)
    if args.nproc_per_node > 1 and "RANK" not in os.environ:
        from finetune_trainer.launcher import launch

        return launch(args.nproc_per_node, sys.argv[1:] if argv is None else argv, preemption)
    run = Run(args, preemption)
    preemption.on_early_exit = run.early_exit_message
    code = run.main()
    sys.stdout.flush()
    sys.stderr.flush()
    if code == EXIT_PREEMPTED:
        # Inside the notice every second counts and all is written: the checkpoint committed, the
        # termination message and the log flushed. The interpreter's teardown of a loaded model took 3-12 s
        # (2-core CPU VM, 85M-parameter GPT-2), during which the kubelet's SIGKILL would turn 75 into 137.
        os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
