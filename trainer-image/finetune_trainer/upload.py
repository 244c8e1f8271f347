"""Background upload of committed checkpoints to the object store (issue 14), and its TrainerCallback; the
final adapter's upload at the end.

One thread uploads the newest locally committed checkpoint it was offered (an older one still waiting is
dropped: the newer commit supersedes it). A failure (store down, timeout, a file that does not verify) is
logged and retried with backoff (1, 2, 4 … 60 s) for as long as training runs: a store that is down delays
the durable copy, it never fails training. After each remote commit: remote retention.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from finetune_api.contract import FINAL_DIR
from finetune_api.status import TrainerStatus
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from finetune_trainer import checkpoints as ckpt
from finetune_trainer import remote
from finetune_trainer.fence import Superseded
from finetune_trainer.logs import log
from finetune_trainer.preemption import Preemption
from finetune_trainer.reporting import StatusReporter, TrainerMetrics
from finetune_trainer.run_state import RunState

MAX_BACKOFF_SECONDS = 60.0
#: At the end of training: how long the last checkpoint's upload may hold up the exit (final/ is written).
FINISH_WAIT_SECONDS = 600.0


class Uploader:
    def __init__(
        self,
        store: Any,
        prefix: str,
        run: RunState,
        metrics: TrainerMetrics | None = None,
        durable: str | None = None,
        reporter: StatusReporter | None = None,
    ):
        self.store = store
        self.reporter = reporter
        self.prefix = prefix
        self.run = run
        self.metrics = metrics
        self.durable: str | None = durable  # newest checkpoint with a remote marker (this process knows of)
        self.durable_step: int | None = ckpt.checkpoint_step(durable) if durable else None
        self._pending: ckpt.CommitRecord | None = None
        self._cond = threading.Condition()
        self._busy = False
        self._stopped = False
        # Test hook: seconds to sleep after each uploaded file (so a test can kill the process mid-upload).
        self._file_sleep = float(os.environ.get("FTO_TEST_UPLOAD_FILE_SLEEP_SECONDS") or 0)
        # Test hook: SIGKILL this process after the first file of its Nth upload (a kill mid-upload).
        self._kill_on_upload = int(os.environ.get("FTO_TEST_UPLOAD_KILL_ON_UPLOAD") or 0)
        self._uploads = 0
        self._thread = threading.Thread(target=self._loop, name="checkpoint-upload", daemon=True)
        self._thread.start()

    def offer(self, record: ckpt.CommitRecord) -> None:
        with self._cond:
            if self.durable_step is not None and record.step <= self.durable_step:
                return
            if self._pending is None or record.step > self._pending.step:
                self._pending = record
                self._cond.notify_all()

    def caught_up(self, step: int | None) -> bool:
        return step is None or (self.durable_step is not None and self.durable_step >= step)

    def wait(self, step: int | None, timeout: float) -> bool:
        """Wait up to `timeout` s until checkpoint `step` (or a newer one) is durable; True when it is."""
        deadline = time.monotonic() + max(0.0, timeout)
        with self._cond:
            while not self.caught_up(step) and not self._stopped:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.5))
        return self.caught_up(step)

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    def _loop(self) -> None:
        failures = 0
        while True:
            with self._cond:
                while self._pending is None and not self._stopped:
                    self._cond.wait()
                if self._stopped:
                    return
                record = self._pending
                self._busy = True
            assert record is not None
            try:
                self._upload(record)
                failures = 0
                with self._cond:
                    if self._pending is record:
                        self._pending = None
                    self._cond.notify_all()
            except Superseded as error:  # a newer attempt owns the run: it uploads from now on
                log("checkpoint_upload_stopped", level="warning", checkpoint=record.name, reason=str(error))
                self.stop()
                return
            except Exception as error:  # retried: the store being down never fails training
                failures += 1
                delay = min(MAX_BACKOFF_SECONDS, 2.0 ** (failures - 1))
                log(
                    "checkpoint_upload_failed",
                    level="warning",
                    checkpoint=record.name,
                    attempt=failures,
                    retry_in_seconds=delay,
                    error=f"{type(error).__name__}: {error}"[:500],
                )
                if self.metrics is not None:
                    self.metrics.upload_failures.inc()
                with self._cond:
                    if self._pending is record and not record.path.is_dir():
                        self._pending = None  # retention removed it locally: a newer commit replaces it
                    self._cond.wait(delay)  # an offer of a newer checkpoint wakes it early
            finally:
                with self._cond:
                    self._busy = False

    def _upload(self, record: ckpt.CommitRecord) -> None:
        log("checkpoint_upload_started", checkpoint=record.name, bytes=record.bytes, files=len(record.files))
        self._uploads += 1

        def after_file(name: str) -> None:
            log("checkpoint_upload_file", checkpoint=record.name, file=name)
            if self._uploads == self._kill_on_upload:
                log("fault_injection_upload_kill", checkpoint=record.name, file=name)
                os.kill(os.getpid(), signal.SIGKILL)
            if self._file_sleep:
                time.sleep(self._file_sleep)

        result = remote.upload_checkpoint(
            self.store,
            self.prefix,
            record,
            before_marker=lambda: self.run.check_fence(f"uploading the marker of {record.name}"),
            after_file=after_file,
        )
        with self._cond:
            if self.durable_step is None or record.step > self.durable_step:
                self.durable, self.durable_step = record.name, record.step
        self.run.durable_checkpoint = self.durable
        self.run.check_fence("remote retention")
        deleted = remote.apply_remote_retention(self.store, self.prefix, self.run.save_total_limit)
        log(
            "checkpoint_uploaded",
            checkpoint=record.name,
            step=record.step,
            bytes=result.bytes,
            files=result.files,
            seconds=round(result.seconds, 4),
            remote_deleted=[f"checkpoint-{s}" for s in deleted],
        )
        if self.reporter is not None:
            self.reporter.update(
                TrainerStatus.patch(
                    durable_checkpoint=self.durable, durable_checkpoint_step=self.durable_step
                )
            )
        if self.metrics is not None:
            self.metrics.upload_seconds.observe(result.seconds)
            self.metrics.upload_bytes.inc(result.bytes)
            self.metrics.durable_step.set(record.step)


class CheckpointUploadCallback(TrainerCallback):
    """Hands each new local commit to the Uploader; at the end waits for the last one: on SIGTERM within
    what is left of save_deadline_seconds, on completion up to FINISH_WAIT_SECONDS."""

    def __init__(self, run: RunState, uploader: Uploader, preemption: Preemption):
        self.run = run
        self.uploader = uploader
        self.preemption = preemption

    def _offer(self) -> None:
        if self.run.last_commit is not None and self.run.last_commit.files:
            self.uploader.offer(self.run.last_commit)

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ):
        self._offer()  # a background commit lands between steps: picked up at the next step end
        return control

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any):
        self._offer()  # a synchronous commit is done by now
        return control

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        self.run.wait_for_save()  # the last local commit first (the commit callback also waits)
        self._offer()
        step = self.run.last_commit_step
        since = self.preemption.seconds_since_request()
        left = self.preemption.seconds_until_deadline()
        # Under SIGTERM: 1 s of the deadline is kept for the exit (the watchdog ends the process at it).
        timeout = FINISH_WAIT_SECONDS if since is None else (left if left is not None else 0.0) - 1.0
        t0 = time.monotonic()
        done = self.uploader.wait(step, timeout)
        log(
            "checkpoint_upload_wait",
            checkpoint=f"checkpoint-{step}" if step is not None else None,
            durable=self.uploader.durable,
            caught_up=done,
            waited_seconds=round(time.monotonic() - t0, 3),
            preempted=since is not None,
        )
        return control


def upload_final(
    store: Any, prefix: str, output_dir: Path, before_marker: Callable[[], None] | None = None
) -> str | None:
    """DIR/final, once published, to PREFIX/final/ (files verified as a checkpoint's, marker last), so the
    trained adapter outlives the volume too. Retried with backoff for up to FINISH_WAIT_SECONDS; a store
    that stays down leaves final/ on the volume only (a warning: the job still succeeded). `before_marker`:
    the attempt fence. Returns the durable final's name ('final') or None."""
    marker = ckpt.final_complete(output_dir)
    if marker is None:
        return None
    record = ckpt.CommitRecord(
        path=output_dir / FINAL_DIR,
        step=int(marker["step"]),
        committed_at=str(marker.get("committed_at") or ""),
        files={str(k): int(v) for k, v in marker["files"].items()},
        checksums=dict(marker.get("checksums") or {}),
    )
    deadline, delay, attempt = time.monotonic() + FINISH_WAIT_SECONDS, 1.0, 0
    while True:
        attempt += 1
        try:
            result = remote.upload_checkpoint(store, prefix, record, before_marker=before_marker)
        except Superseded:
            raise
        except Exception as error:
            left = deadline - time.monotonic()
            log(
                "final_upload_failed",
                level="warning",
                attempt=attempt,
                retry_in_seconds=min(delay, max(0.0, left)) if left > 0 else None,
                error=f"{type(error).__name__}: {error}"[:500],
            )
            if left <= 0:
                return None
            time.sleep(min(delay, left))
            delay = min(MAX_BACKOFF_SECONDS, delay * 2)
            continue
        log(
            "final_uploaded",
            step=record.step,
            bytes=result.bytes,
            files=result.files,
            seconds=round(result.seconds, 4),
        )
        return record.name


#: At start: how long to keep trying to reach the store before giving up (the newest checkpoint may be there).
START_WAIT_SECONDS = 60.0


class StoreUnreachable(Exception):
    """At start the store did not answer: whether a newer checkpoint is there cannot be known (exit 1)."""


def fetch_newer_remote(store: Any, prefix: str, output_dir: Path) -> str | None:
    """Before the resume choice: when the store holds a committed checkpoint newer than every locally
    committed one (the volume was lost, or this pod runs on a new one), download it into OUTPUT_DIR, verified
    against its marker, so the ordinary resume search picks it. Returns the newest remote commit's name."""
    delay, deadline = 1.0, time.monotonic() + START_WAIT_SECONDS
    while True:
        try:
            commits, _keys = remote.list_remote(store, prefix)
            break
        except Exception as error:
            if time.monotonic() + delay > deadline:
                raise StoreUnreachable(
                    f"object store unreachable at start for {START_WAIT_SECONDS:.0f} s "
                    f"({type(error).__name__}: {str(error)[:300]}): the newest checkpoint may be there"
                ) from error
            log("object_store_unreachable", level="warning", retry_in_seconds=delay, error=str(error)[:300])
            time.sleep(delay)
            delay = min(MAX_BACKOFF_SECONDS, delay * 2)
    local = ckpt.committed_checkpoints(output_dir)
    local_step = local[0].step if local else None
    for candidate in commits:  # newest first; a copy that does not verify is passed over
        if local_step is not None and candidate.step <= local_step:
            break
        t0 = time.monotonic()
        try:
            path = remote.download_checkpoint(store, prefix, candidate, output_dir)
        except (remote.UploadError, OSError) as error:
            log(
                "remote_checkpoint_skipped",
                level="warning",
                checkpoint=candidate.name,
                reason=str(error)[:500],
            )
            continue
        log(
            "remote_checkpoint_downloaded",
            checkpoint=path.name,
            bytes=sum(int(v) for v in candidate.marker["files"].values()),
            seconds=round(time.monotonic() - t0, 3),
            local_newest=f"checkpoint-{local_step}" if local_step is not None else None,
        )
        break
    return commits[0].name if commits else None
