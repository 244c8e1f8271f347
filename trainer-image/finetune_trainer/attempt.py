"""One attempt of a run, start to exit: the wiring of config, run directory, resume policy, reporting, the
Trainer and its callbacks. Which checkpoint to resume from is resume.py's; which exit code for which ending is
exits.py's; what happens during training is the callbacks' (callbacks.trainer_callbacks gives their order).

Phases: `start` (no torch: the config, the run directory's identity, a final/ already complete, the resume
candidate; a bad config fails in about a second) → `train` (heavy imports; loading; the Trainer; DIR created
and claimed only once loading worked) → `finish` (final/) or the preempted exit.
"""

from __future__ import annotations

import argparse
import time
import uuid
from pathlib import Path
from typing import Any

from finetune_api.contract import FINAL_DIR
from finetune_api.status import TrainerStatus
from finetune_api.trainer_config import TrainerConfig, load_trainer_config

from finetune_trainer import checkpoints as ckpt
from finetune_trainer import identity, s3_inputs
from finetune_trainer.build import ConfigError, check_static, go_offline_when_local
from finetune_trainer.exits import ExitProtocol
from finetune_trainer.fence import AttemptFence
from finetune_trainer.logs import log, set_context, startup
from finetune_trainer.preemption import FINISHING, LOADING, Preemption
from finetune_trainer.resume import ResumePolicy


class Attempt:
    """One process's attempt; `rank`/`world_size` from the launcher's environment (1 process: 0/1)."""

    def __init__(
        self,
        args: argparse.Namespace,
        preemption: Preemption,
        exits: ExitProtocol,
        rank: int,
        world_size: int,
    ):
        self.args = args
        self.preemption = preemption
        self.exits = exits
        self.rank, self.world_size = rank, world_size
        self.is_main = rank == 0
        self.output_dir = Path(args.output_dir)
        self.fence = AttemptFence(self.output_dir, args.attempt)  # only the main rank claims
        self.sections: dict[str, Any] = {}  # the training-defining spec as the config gives it
        self.identity: identity.RunIdentity | None = None  # DIR/RUN.json when it exists
        self.run_id: str = args.run_id or ""
        self.resume: ResumePolicy | None = None
        self.store: Any = None  # spec.checkpoint.objectStore: the S3 client (main rank)
        # The checkpoint this start downloaded from the store (name, s3:// URL): a lost volume's resume point.
        self.fetched: tuple[str, str] | None = None

    def main(self) -> int:
        started = time.monotonic()
        set_context(rank=self.rank if self.world_size > 1 else None)
        startup.mark("python")  # from process start: the interpreter and this module's imports
        try:
            config, final = self.start()
            if final is not None:
                log("already_complete", final=str(self.output_dir / FINAL_DIR))
                return self.exits.completed(final)
            assert self.resume is not None
            candidate = self.resume.choose()
        except Exception as error:  # config, fence, no intact checkpoint, the store unreachable, ...
            return self.exits.failed(error)  # each its exit code (ExitProtocol.failed), with its message
        startup.mark("config")
        log(
            "config_loaded",
            seconds=round(time.monotonic() - started, 3),
            resume=candidate.name if candidate else None,
        )
        try:
            return self.train(config)
        except BaseException as error:
            return self.exits.failed(error)

    def start(self) -> tuple[TrainerConfig, dict[str, Any] | None]:
        """The cheap checks: the config, whose directory DIR is, DIR/final's marker when already complete."""
        # The config carries the operator's OOM adaptations (batch, accumulation): their only route.
        config = load_trainer_config(self.args.config)
        self.sections = identity.spec_sections(config)  # batch x accumulation as one product
        self.exits.config = config
        check_static(config)
        s3_inputs.check_uris(config)
        go_offline_when_local(config)  # before transformers/datasets are imported (they read it once)
        # Whose directory is this? Before anything is read as ours (final/, checkpoints): another run's
        # final adapter or optimizer state must never pass for this run's.
        self.identity = identity.check_run_directory(self.output_dir, self.args.run_id, self.sections)
        self.run_id = self.args.run_id or identity.run_id_of(self.output_dir) or uuid.uuid4().hex
        # DIR is created only once the config proved workable (train()): a config error leaves it alone.
        final = ckpt.final_complete(self.output_dir)  # read once: done already, or --resume never refuses
        self.resume = self.exits.resume = ResumePolicy(
            self.output_dir, self.args.resume, self.args.resume_from, self.world_size, self.sections, final
        )
        if final is not None and self.args.resume != "never":
            return config, final
        if self.is_main:
            # Before the resume choice: from here on an older attempt changes nothing (DIR exists;
            # otherwise the claim comes when train() creates it).
            self.fence.claim()
        self.fetch_from_object_store(config)
        return self.fetch_inputs(config), None

    def fetch_inputs(self, config: TrainerConfig) -> TrainerConfig:
        """s3:// dataset and model into the Hugging Face cache (every rank: a lock per object lets one
        download it, the others find it there); the config that loads them from there. The run's identity
        (`self.sections`) keeps the URIs."""
        if not s3_inputs.s3_inputs(config):
            return config
        startup.mark("config")
        local, fetched = s3_inputs.fetch_inputs(config, hf_home())
        startup.mark("s3_inputs", downloaded_bytes=sum(f.downloaded_bytes for f in fetched))
        return local

    # --- spec.checkpoint.objectStore (finetune_trainer.remote / upload): the durable copy ---------------

    def fetch_from_object_store(self, config: TrainerConfig) -> None:
        """Before the resume choice: a newer remote commit than any local one is downloaded (main rank)."""
        if config.object_store is None or not self.is_main:
            return
        from finetune_trainer import remote

        self.store = remote.open_store(config.object_store)
        self.exits.object_store = True
        if self.args.resume == "auto":  # never / PATH: the user chose; the store only receives uploads
            from finetune_trainer import upload  # transformers: only when it is needed here

            store = config.object_store
            before = ckpt.committed_checkpoints(self.output_dir)
            self.exits.durable_at_start = upload.fetch_newer_remote(self.store, store.prefix, self.output_dir)
            after = ckpt.committed_checkpoints(self.output_dir)
            if after and (not before or after[0].step > before[0].step):
                key = "/".join(part for part in (store.prefix, after[0].name) if part)
                self.fetched = (after[0].name, f"s3://{store.bucket}/{key}")

    def upload_callbacks(self, config: TrainerConfig, run: Any, metrics: Any, reporter: Any) -> list[Any]:
        """CheckpointUploadCallback, after every other (callbacks.trainer_callbacks): it hands the newest
        commit to the uploader and, at the end, waits for the last upload once all else is done."""
        if self.store is None or config.object_store is None:
            return []
        from finetune_trainer.upload import CheckpointUploadCallback, Uploader

        uploader = Uploader(
            self.store, config.object_store.prefix, run, metrics, self.exits.durable_at_start, reporter
        )
        return [CheckpointUploadCallback(run, uploader, self.preemption)]

    def train(self, config: TrainerConfig) -> int:
        import torch  # heavy imports from here on

        from finetune_trainer.faults import Faults
        from finetune_trainer.reporting import (
            StatusReporter,
            TrainerMetrics,
            kubernetes_event_poster,
            kubernetes_patcher,
        )

        assert self.resume is not None
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
        self.preemption.start_watchdog(config.save_deadline_seconds, self.exits.on_save_deadline)
        try:
            while True:
                try:
                    return self.train_from(config, use_cuda, faults, reporter, metrics)
                except ckpt.RestoreFailed as error:
                    # The Trainer could not restore it after all (e.g. a state that does not fit the model):
                    # set it aside and go on from the next older one in this process, spending no attempt.
                    # With several ranks they could not agree on that: exit 1 as any error.
                    if self.world_size > 1 or self.resume.chosen is None:
                        raise
                    why = str(error)
                    failed = self.resume.chosen
                # Outside the except block: the traceback (and the failed trainer and model) is released.
                self.release_trainer(use_cuda)
                self.resume.reject(failed, why)
        finally:
            reporter.close()

    def release_trainer(self, use_cuda: bool) -> None:
        """Drop the trainer and model of a failed restore before building them again."""
        import gc

        self.preemption.phase = LOADING  # nothing is being written: a signal may end the process at once
        self.exits.trainer = None
        self.exits.run_state = None
        gc.collect()
        if use_cuda:
            import torch

            torch.cuda.empty_cache()

    def train_from(
        self, config: TrainerConfig, use_cuda: bool, faults: Any, reporter: Any, metrics: Any
    ) -> int:
        import torch

        from finetune_trainer import build
        from finetune_trainer.background import BackgroundSaver
        from finetune_trainer.callbacks import trainer_callbacks
        from finetune_trainer.run_state import RunState
        from finetune_trainer.trainer import CommitTrainer

        assert self.resume is not None
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
        resume = self.resume.settle(config.on_no_intact_checkpoint)
        startup.mark("resume_restore")  # the restore probe (the Trainer's restore is counted later)
        run = RunState(
            output_dir=self.output_dir,
            world_size=self.world_size,
            is_main=self.is_main,
            save_total_limit=config.training.save_total_limit,
            extra_required=("scaler.pt",) if (use_cuda and args.fp16) else (),
            last_commit=resume,
            fence=self.fence,
            identity=self.identity_fields(),
            saver=BackgroundSaver() if background else None,
        )
        run.durable_checkpoint = self.exits.durable_at_start
        self.exits.run_state = run
        callbacks = [
            *trainer_callbacks(run, self.preemption, reporter, metrics, faults, hf_home()),
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
        if self.is_main:  # only now that loading worked: a config error must leave DIR untouched
            self.output_dir.mkdir(parents=True, exist_ok=True)
            self.fence.claim()  # already claimed when DIR existed at start: then only a check
            self.claim_directory(config, resume)
            reporter.update(
                TrainerStatus.patch(started_from=self.identity.started_from if self.identity else None)
            )
            self.resume.tidy(self.fence, resume)
        self.exits.trainer = trainer
        try:
            trainer.train(resume_from_checkpoint=str(resume.path) if resume else None)
        except BaseException:
            if run.saver is not None:
                run.saver.drain()  # a save in flight finishes (its commit keeps work) before the process ends
            raise
        run.wait_for_save()  # normally done in on_train_end already
        state = trainer.state
        if run.stop_for_preemption and state.global_step < state.max_steps:
            return self.exits.preempted(run)
        self.preemption.phase = FINISHING
        return self.finish(trainer, config, state.global_step, faults)

    def identity_fields(self) -> dict[str, str]:
        return {"run_id": self.run_id, "fingerprint": identity.fingerprint(self.sections)}

    def claim_directory(self, config: TrainerConfig, resume: ckpt.CommitRecord | None) -> None:
        """Write DIR/RUN.json at the run's first start (never rewritten): whose run, what spec, from where."""
        if self.identity is not None:
            return
        source = self.resume.source if self.resume is not None else None
        started = identity.claim_relative(resume.path) if resume is not None and source else identity.FRESH
        if resume is not None and source is None:
            if self.fetched is not None and self.fetched[0] == resume.path.name:
                started = self.fetched[1]  # the volume was lost: the store's copy is where this run resumes
            else:
                started = "(a run directory without RUN.json, adopted)"  # from before run identities
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
            if self.store is not None and config.object_store is not None:  # the result outlives the volume
                from finetune_trainer import upload

                self.exits.durable_final = upload.upload_final(
                    self.store,
                    config.object_store.prefix,
                    self.output_dir,
                    before_marker=lambda: self.fence.check("uploading final/'s marker"),
                )
        dist.barrier()
        log(
            "final_written",
            path=str(final_path),
            step=step,
            seconds=round(time.monotonic() - t0, 3),
            bytes=ckpt.dir_bytes(final_path) if self.is_main else None,
        )
        return self.exits.completed()


def hf_home() -> Path:
    """The Hugging Face cache (HF_HOME, as huggingface_hub resolved it)."""
    from huggingface_hub import constants

    return Path(constants.HF_HOME)
