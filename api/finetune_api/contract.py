"""The trainer ↔ operator contract: exit codes, the termination message, names on the volume.

Both sides import these names; README.md documents them for people who write their own trainer image.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

# Exit codes (design.md §3). 75 and 78 are sysexits' EX_TEMPFAIL and EX_CONFIG.
EXIT_SUCCEEDED = 0
EXIT_PREEMPTED = 75  # stopped on SIGTERM after committing a checkpoint: resumable
EXIT_CUDA_OOM = 76  # CUDA out of memory: the operator halves the micro-batch and doubles accumulation
EXIT_CONFIG_ERROR = 78  # the config cannot work (bad model path, missing dataset field): retrying won't help
# Reserved for the trainer-integrity work (issue 10); sysexits' EX_DATAERR and EX_IOERR.
EXIT_NO_INTACT_CHECKPOINT = 65  # checkpoints exist but none is intact; nothing was deleted (see the message)
EXIT_VOLUME_FULL = 74  # a checkpoint could not be written: the checkpoint volume is full
# sysexits' EX_CANTCREAT: a newer attempt claimed the output directory (ATTEMPT_MARKER).
EXIT_SUPERSEDED = 73
EXIT_KILLED = 137  # SIGKILL: the kernel's OOM killer, or the grace period ran out

TERMINATION_MESSAGE_PATH = "/dev/termination-log"

#: Where the trainer pod mounts spec.dataset.volume (read-only); dataset.path names a file or directory there.
DATASET_MOUNT = "/data"
#: Where the trainer pod mounts spec.cache.claimName (cache.location sharedClaim); HF_HOME is this directory.
CACHE_MOUNT = "/cache"

# Layout of the checkpoint volume, mounted at CHECKPOINT_MOUNT in the trainer pod.
CHECKPOINT_MOUNT = "/checkpoints"
#: Each job's run directory is RUNS_DIR/<job uid> on the claim (--output-dir /checkpoints/runs/<uid>):
#: its checkpoint-N/ directories, final/ and RUN_MARKER. Keyed by the uid, so a job re-created under the
#: same name, or another job on the same existingClaimName, never resumes from or retains another run's
#: checkpoints.
RUNS_DIR = "runs"
#: Where jobs started before run directories existed keep writing (only those: new jobs use RUNS_DIR/<uid>).
LEGACY_RUN_DIR = "run"
RUN_MARKER = "RUN.json"  # in the run directory, written once at the first start: whose run this is
FINAL_DIR = "final"  # the finished adapter, written only at the end
COMMIT_MARKER = "COMMITTED.json"  # inside checkpoint-N/, written last, atomically
DAMAGED_DIR = "damaged"  # damaged committed checkpoints are moved here, never deleted: damaged/checkpoint-40
#: In the output directory: the attempt that last claimed it (`--attempt N`, pod name, time), written
#: atomically at start. A trainer that finds a newer attempt there stops before any commit, retention or
#: deletion.
ATTEMPT_MARKER = "ATTEMPT.json"

#: spec.checkpoint.objectStore: the store's key pair reaches the trainer in these variables (from the Secret).
S3_ACCESS_KEY_ID_ENV = "FTO_S3_ACCESS_KEY_ID"
S3_SECRET_ACCESS_KEY_ENV = "FTO_S3_SECRET_ACCESS_KEY"

TerminationReason = Literal[
    "Completed",
    "Preempted",
    "CudaOOM",
    "ConfigError",
    "NoIntactCheckpoint",
    "VolumeFull",
    "Superseded",
    "Error",
]


class TerminationMessage(BaseModel):
    """JSON the trainer writes to the container's terminationMessagePath before it exits (≤ 4 KiB)."""

    model_config = ConfigDict(extra="allow")
    reason: TerminationReason
    step: int | None = None  # the last completed optimizer step
    checkpoint: str | None = None  # newest committed checkpoint directory name, e.g. checkpoint-40
    checkpoint_step: int | None = None
    per_device_train_batch_size: int | None = None  # the batch that ran out of memory (CudaOOM)
    gradient_accumulation_steps: int | None = None
    save_seconds: float | None = None  # how long the emergency save took (Preempted)
    # Preempted after training began: whether the emergency checkpoint was committed within the deadline
    # (false: the watchdog gave up on it; `checkpoint` is then the newest older one), and that deadline.
    save_in_time: bool | None = None
    save_deadline_seconds: float | None = None
    free_bytes: int | None = None  # free bytes on the checkpoint volume when a save failed (VolumeFull)
    needed_bytes: int | None = None  # what that checkpoint needs, estimated from the last committed one
    message: str | None = None  # one human line (errors)
    # spec.checkpoint.objectStore: the newest checkpoint whose remote commit marker is written (it survives
    # the loss of the volume), e.g. checkpoint-35; absent when nothing is in the store yet.
    durable_checkpoint: str | None = None
    # spec.checkpoint.objectStore, on success: "final" when DIR/final was uploaded to PREFIX/final/ (marker
    # last); absent when the store could not take it within the trainer's wait (final/ is on the volume).
    durable_final: str | None = None

    def to_json(self) -> str:
        text = self.model_dump_json(exclude_none=True)
        if len(text) > 4000:  # the kubelet truncates at 4096 bytes; keep it parseable
            clipped = self.model_copy(update={"message": (self.message or "")[:2000]})
            text = clipped.model_dump_json(exclude_none=True)
        return text
