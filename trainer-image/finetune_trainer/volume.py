"""The checkpoint volume running out of space: make room before a save, and say so clearly when a save fails.

Without this a full volume surfaces as torch's `RuntimeError: [enforce fail at inline_container.cc:671] .
unexpected pos …` (no "no space" anywhere) and the job burns its error budget retrying. Here a save that
fails for lack of space raises `VolumeFull` (exit 74, reason VolumeFull) naming the free bytes and what the
checkpoint needs; the partial directory of that save is removed (it was never committed); committed
checkpoints are untouched.

`SpacePlan` warns before that: the model cache plus the checkpoints the run keeps against the volume's size
and free space (VolumeSpaceCallback reports it in status.volumeWarning and a VolumeTooSmall Event).
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune_trainer import checkpoints as ckpt

#: Text of out-of-space failures that carry no errno (torch's zip writer, safetensors' Rust error).
_NO_SPACE_TEXT = ("no space left on device", "storagefull", "disk quota exceeded")
#: Write failures that mean "out of space" only when the volume is in fact (nearly) full.
_WRITE_FAILED_TEXT = ("unexpected pos", "file write failed", "failed to write")
_NEARLY_FULL_BYTES = 1 << 20


class VolumeFull(Exception):
    """A checkpoint (or final/) could not be written: the checkpoint volume is full."""

    def __init__(self, what: str, volume: Path, free_bytes: int, needed_bytes: int | None, detail: str):
        self.what = what
        self.volume = volume
        self.free_bytes = free_bytes
        self.needed_bytes = needed_bytes
        self.detail = detail
        need = f"needs about {needed_bytes} bytes" if needed_bytes else "needs more"
        super().__init__(
            f"checkpoint volume full: {what} could not be written: {free_bytes} bytes free on {volume}, "
            f"the checkpoint {need}; make the volume bigger or lower training.save_total_limit ({detail})"
        )


def free_bytes(path: Path) -> int:
    """Free bytes on the filesystem holding `path` (or its nearest existing parent)."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free


def _chain(error: BaseException) -> Iterable[BaseException]:
    seen: BaseException | None = error
    for _ in range(12):
        if seen is None:
            return
        yield seen
        seen = seen.__cause__ or seen.__context__


def is_out_of_space(error: BaseException, volume: Path, needed_bytes: int | None = None) -> bool:
    """Whether `error` (from writing to `volume`) means the volume is full."""
    for seen in _chain(error):
        if isinstance(seen, VolumeFull):
            return True
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(seen).lower()
        if any(marker in text for marker in _NO_SPACE_TEXT):
            return True
        if any(marker in text for marker in _WRITE_FAILED_TEXT):
            try:
                free = free_bytes(volume)
            except OSError:
                return False
            return free < max(needed_bytes or 0, _NEARLY_FULL_BYTES)
    return False


def first_line(error: BaseException) -> str:
    """`Type: first line of the message` (at most 300 characters), for logs and termination messages."""
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"[:300].rstrip(": ")


def estimate_checkpoint_bytes(last_commit: ckpt.CommitRecord | None, model: Any) -> int | None:
    """What the next checkpoint needs: the last committed one's size, else 3 x the trainable weights (the
    adapter and Adam's two moments) — a floor, the rest is small."""
    if last_commit is not None and last_commit.files:
        return last_commit.bytes
    try:
        trainable = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    except (AttributeError, TypeError):
        return None
    return int(trainable * 3) or None


def make_room(
    output_dir: Path, save_total_limit: int | None, needed_bytes: int, keep: Iterable[str | Path] = ()
) -> list[Path]:
    """Before a save, when free space is short: delete, oldest first, the committed checkpoints that retention
    would delete right after this save anyway (all but the newest save_total_limit - 1, never the newest one
    nor those in `keep`), until the checkpoint fits. Returns what was deleted."""
    needed_bytes = int(needed_bytes * 1.05) + 64 * 1024  # block rounding, directory entries, the marker
    if not save_total_limit or free_bytes(output_dir) >= needed_bytes:
        return []
    committed = ckpt.committed_checkpoints(output_dir)  # newest first
    keep_names = {Path(k).name for k in keep}
    survivors = max(save_total_limit - 1, 1)
    doomed = [r for r in committed[survivors:] if r.name not in keep_names]
    deleted = []
    for record in reversed(doomed):  # oldest first
        if free_bytes(output_dir) >= needed_bytes:
            break
        ckpt.remove_checkpoint(record.path)
        deleted.append(record.path)
    return deleted


# ------------------------------------------------------------------- is the volume big enough for the run?


def capacity_bytes(path: Path) -> int:
    """Size of the filesystem holding `path` (or its nearest existing parent)."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).total


def same_filesystem(a: Path, b: Path) -> bool:
    """Whether `a` and `b` (or their nearest existing parents) are on one filesystem (st_dev)."""

    def device(path: Path) -> int:
        while not path.exists() and path != path.parent:
            path = path.parent
        return path.stat().st_dev

    return device(a) == device(b)


def tree_bytes(root: Path) -> int:
    """Bytes of the regular files under `root`, symlinks not followed (the hub cache's snapshots/ are links
    to its blobs/: each file counts once)."""
    total = 0
    for folder, _dirs, files in os.walk(root):
        for name in files:
            try:
                info = os.lstat(os.path.join(folder, name))
            except OSError:  # removed meanwhile (another job's temporary download)
                continue
            if stat.S_ISREG(info.st_mode):
                total += info.st_size
    return total


def checkpoints_kept(save_total_limit: int | None, saves_in_run: int) -> int:
    """How many committed checkpoints the volume holds at most: save_total_limit, or every save of the run."""
    return save_total_limit if save_total_limit else max(saves_in_run, 1)


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover


@dataclass(frozen=True)
class SpacePlan:
    """The checkpoint volume against what this run will put on it.

    Peak use: the cache (when it is on this volume), `kept` committed checkpoints, and one more being
    written (retention deletes the oldest only after the new one commits; final/ at the end is smaller
    than a checkpoint: the adapter without optimizer state).
    """

    capacity_bytes: int
    free_bytes: int
    cache_bytes: int  # the Hugging Face cache on this volume; 0 when it is elsewhere
    checkpoint_bytes: int  # one checkpoint (the last committed one, or an estimate before the first)
    kept: int  # checkpoints_kept()
    present: int  # committed checkpoints of this run on the volume now

    @property
    def needed_bytes(self) -> int:
        return self.cache_bytes + self.checkpoint_bytes * (self.kept + 1)

    @property
    def still_to_write_bytes(self) -> int:
        """What the run's checkpoints will still add before retention keeps the volume's use flat."""
        return self.checkpoint_bytes * max(self.kept + 1 - self.present, 0)

    def warning(self) -> str | None:
        """A sentence for the user when the run will not fit, else None."""
        checkpoints = (
            f"{self.kept + 1} checkpoints of {_size(self.checkpoint_bytes)} "
            f"(the {self.kept} kept and the one being written)"
        )
        cache = f"the model cache ({_size(self.cache_bytes)}) and " if self.cache_bytes else ""
        advice = "make checkpoint.volumeSize bigger or lower training.save_total_limit" + (
            ", or move the cache off this volume (spec.cache)" if self.cache_bytes else ""
        )
        if self.needed_bytes > self.capacity_bytes:
            return (
                f"checkpoint volume too small: it holds {_size(self.capacity_bytes)}, the run needs "
                f"{_size(self.needed_bytes)} for {cache}{checkpoints}; {advice}"
            )
        if self.still_to_write_bytes > self.free_bytes:
            return (
                f"checkpoint volume nearly full: {_size(self.free_bytes)} free, the run's checkpoints still "
                f"need {_size(self.still_to_write_bytes)} ({checkpoints}, {self.present} already there); "
                f"{advice}, or free space on the claim"
            )
        return None
