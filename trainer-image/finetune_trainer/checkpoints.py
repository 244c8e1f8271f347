"""The checkpoint commit protocol (design.md §3), without torch: verify, fsync, mark, retain, pick for resume.

A `checkpoint-N/` directory written by the Hugging Face Trainer counts only once `COMMITTED.json` exists in it
and every file it records still has the recorded size. The marker is written last and atomically (tmp file,
fsync, rename, fsync of the directory), after every file needed for exact resume has been checked and fsynced.
Retention runs after a commit and never deletes the newest committed checkpoint (nor the best one).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import struct
import time
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from finetune_api.contract import COMMIT_MARKER, FINAL_DIR

MARKER_VERSION = 1
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
OPTIMIZER = "optimizer.pt"
SCHEDULER = "scheduler.pt"
TRAINER_STATE = "trainer_state.json"
TRAINING_ARGS = "training_args.bin"
BASE_REQUIRED = (ADAPTER_WEIGHTS, ADAPTER_CONFIG, OPTIMIZER, SCHEDULER, TRAINER_STATE, TRAINING_ARGS)


class CheckpointError(Exception):
    """A checkpoint that cannot be committed or resumed from; the message says which file and why."""


def rng_files(world_size: int) -> list[str]:
    """HF writes rng_state.pth with one process and rng_state_<rank>.pth for each of several processes."""
    if world_size <= 1:
        return ["rng_state.pth"]
    return [f"rng_state_{rank}.pth" for rank in range(world_size)]


def required_files(world_size: int = 1, extra: Iterable[str] = ()) -> list[str]:
    return [*BASE_REQUIRED, *rng_files(world_size), *extra]


def checkpoint_step(path: str | Path) -> int | None:
    match = CHECKPOINT_RE.match(Path(path).name)
    return int(match.group(1)) if match else None


def now_rfc3339() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# ------------------------------------------------------------------------------------------------ fsync


def fsync_file(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_json(path: Path, data: dict[str, Any]) -> None:
    """tmp + fsync + rename + fsync(dir): after a crash either the old content or the new one is there."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as fh:
        json.dump(data, fh, indent=1, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


# ----------------------------------------------------------------------------------------- file checks


def check_file(path: Path) -> None:
    """Cheap structural checks that catch a missing, empty or truncated file (no deserialisation)."""
    name = path.name
    if not path.is_file():
        raise CheckpointError(f"{name}: missing")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{name}: empty")
    if name.endswith(".json"):
        try:
            json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError) as error:
            raise CheckpointError(f"{name}: not valid JSON ({error})") from None
    elif name.endswith(".safetensors"):
        with open(path, "rb") as fh:
            head = fh.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{name}: truncated (no header)")
        (header_len,) = struct.unpack("<Q", head)
        if 8 + header_len > size:
            raise CheckpointError(f"{name}: truncated (header says {header_len} bytes, file has {size})")
        with open(path, "rb") as fh:
            fh.seek(8)
            try:
                header = json.loads(fh.read(header_len))
            except ValueError:
                raise CheckpointError(f"{name}: corrupt header") from None
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        if 8 + header_len + end != size:
            raise CheckpointError(f"{name}: truncated (expected {8 + header_len + end} bytes, has {size})")
    elif name.endswith((".pt", ".pth", ".bin")) and not zipfile.is_zipfile(path):
        # torch.save writes a zip archive; a truncated one has no end-of-central-directory record.
        raise CheckpointError(f"{name}: truncated or not a torch.save archive")


def check_trainer_state(path: Path, step: int | None) -> None:
    state = json.loads(path.read_text())
    got = state.get("global_step")
    if step is not None and got != step:
        raise CheckpointError(f"{TRAINER_STATE}: global_step {got} != checkpoint step {step}")


# ------------------------------------------------------------------------------------------------ commit


@dataclass
class CommitRecord:
    path: Path
    step: int
    committed_at: str
    files: dict[str, int]
    save_seconds: float | None = None

    @property
    def bytes(self) -> int:
        return sum(self.files.values())

    @property
    def name(self) -> str:
        return self.path.name


def commit_checkpoint(
    ckpt_dir: str | Path,
    world_size: int = 1,
    started_at: float | None = None,
    extra_required: Iterable[str] = (),
    fsync: bool = True,
) -> CommitRecord:
    """Verify every file needed for exact resume, fsync them and the directory, then write the marker.

    `started_at` (time.monotonic() when the save began) gives the save duration recorded in the marker and
    in the returned record (the latter includes writing the marker).
    """
    ckpt = Path(ckpt_dir)
    step = checkpoint_step(ckpt)
    if step is None:
        raise CheckpointError(f"{ckpt}: not a checkpoint-N directory")
    marker = ckpt / COMMIT_MARKER
    if marker.exists():
        raise CheckpointError(f"{ckpt.name}: already has a commit marker")
    for name in required_files(world_size, extra_required):
        check_file(ckpt / name)
    check_trainer_state(ckpt / TRAINER_STATE, step)
    files: dict[str, int] = {}
    for entry in sorted(ckpt.iterdir()):
        if entry.name == COMMIT_MARKER or entry.name.startswith(".") or not entry.is_file():
            continue
        if fsync:
            fsync_file(entry)
        files[entry.name] = entry.stat().st_size
    if fsync:
        fsync_dir(ckpt)
        fsync_dir(ckpt.parent)  # the checkpoint-N entry itself
    save_seconds = None if started_at is None else time.monotonic() - started_at
    record = CommitRecord(ckpt, step, now_rfc3339(), files, save_seconds)
    data: dict[str, Any] = {
        "version": MARKER_VERSION,
        "step": step,
        "committed_at": record.committed_at,
        "world_size": world_size,
        "required": required_files(world_size, extra_required),
        "files": files,
        "bytes": record.bytes,
    }
    if save_seconds is not None:
        data["save_seconds"] = round(save_seconds, 4)
    atomic_write_json(marker, data)
    if started_at is not None:
        record.save_seconds = time.monotonic() - started_at
    return record


def read_commit(ckpt_dir: str | Path) -> CommitRecord:
    """The commit record of a checkpoint whose files still match its marker; CheckpointError otherwise."""
    ckpt = Path(ckpt_dir)
    step = checkpoint_step(ckpt)
    marker = ckpt / COMMIT_MARKER
    if not marker.is_file():
        raise CheckpointError("not committed (no commit marker)")
    try:
        data = json.loads(marker.read_text())
        files = {str(k): int(v) for k, v in data["files"].items()}
        required = [str(x) for x in data["required"]]
        marker_step = int(data["step"])
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise CheckpointError(f"commit marker unreadable ({error})") from None
    if marker_step != step:
        raise CheckpointError(f"commit marker is for step {marker_step}")
    for name in required:
        if name not in files:
            raise CheckpointError(f"{name}: required but not recorded in the marker")
    for name, size in files.items():
        path = ckpt / name
        if not path.is_file():
            raise CheckpointError(f"{name}: missing")
        actual = path.stat().st_size
        if actual != size:
            raise CheckpointError(f"{name}: size {actual} != committed size {size}")
    return CommitRecord(ckpt, marker_step, str(data.get("committed_at", "")), files, data.get("save_seconds"))


def list_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """checkpoint-N directories, newest (highest step) first."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = []
    for entry in root.iterdir():
        step = checkpoint_step(entry)
        if step is not None and entry.is_dir():
            found.append((step, entry))
    return sorted(found, key=lambda item: item[0], reverse=True)


@dataclass
class ResumeChoice:
    checkpoint: CommitRecord | None
    skipped: list[tuple[Path, str]] = field(default_factory=list)


def find_resume_checkpoint(output_dir: str | Path) -> ResumeChoice:
    """The newest committed checkpoint whose files still match the marker, and why newer ones were skipped."""
    choice = ResumeChoice(None)
    for _step, path in list_checkpoints(output_dir):
        try:
            choice.checkpoint = read_commit(path)
            return choice
        except CheckpointError as error:
            choice.skipped.append((path, str(error)))
    return choice


def committed_checkpoints(output_dir: str | Path) -> list[CommitRecord]:
    """Committed and intact checkpoints, newest first."""
    out = []
    for _step, path in list_checkpoints(output_dir):
        with contextlib.suppress(CheckpointError):
            out.append(read_commit(path))
    return out


def remove_checkpoint(path: Path) -> None:
    """Un-commit (marker removed, fsynced), then delete: a crash mid-delete leaves no 'committed' torso."""
    marker = path / COMMIT_MARKER
    if marker.exists():
        marker.unlink()
        with contextlib.suppress(OSError):
            fsync_dir(path)
    shutil.rmtree(path, ignore_errors=True)


def apply_retention(
    output_dir: str | Path, save_total_limit: int | None, keep: Iterable[str | Path] = ()
) -> list[Path]:
    """Keep the newest `save_total_limit` committed checkpoints (+ `keep`, e.g. the best); delete the rest.

    Uncommitted or torn directories older than the newest committed one are leftovers of earlier crashes and
    are deleted too; newer uncommitted ones are left alone (they may be a save in progress).
    """
    committed = committed_checkpoints(output_dir)
    if not committed:
        return []
    keep_names = {Path(k).name for k in keep}
    newest_step = committed[0].step
    kept = {record.name for record in committed[: save_total_limit or len(committed)]} | keep_names
    deleted = []
    for step, path in list_checkpoints(output_dir):
        if path.name in kept:
            continue
        if step > newest_step:
            continue
        remove_checkpoint(path)
        deleted.append(path)
    return deleted


def remove_newer_than(output_dir: str | Path, step: int | None) -> list[Path]:
    """Delete checkpoint dirs above `step` (uncommitted or torn, left by a crash) before training resumes."""
    deleted = []
    for ckpt_step, path in list_checkpoints(output_dir):
        if step is None or ckpt_step > step:
            remove_checkpoint(path)
            deleted.append(path)
    return deleted


# ------------------------------------------------------------------------------------------- final dir


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def publish_final(output_dir: str | Path, write: Callable[[Path], None], step: int) -> Path:
    """Write the final adapter into a temp dir, fsync it, mark it and rename it to DIR/final atomically."""
    root = Path(output_dir)
    final = root / FINAL_DIR
    tmp = root / f".{FINAL_DIR}.partial"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    write(tmp)
    files = {}
    for entry in sorted(tmp.rglob("*")):
        if entry.is_file():
            fsync_file(entry)
            files[str(entry.relative_to(tmp))] = entry.stat().st_size
    for sub in sorted({p.parent for p in tmp.rglob("*")} | {tmp}):
        fsync_dir(sub)
    atomic_write_json(
        tmp / COMMIT_MARKER,
        {"version": MARKER_VERSION, "step": step, "committed_at": now_rfc3339(), "files": files},
    )
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    fsync_dir(root)
    return final


def final_complete(output_dir: str | Path) -> dict[str, Any] | None:
    """The marker of DIR/final when it exists and its files match; None otherwise."""
    final = Path(output_dir) / FINAL_DIR
    try:
        data = json.loads((final / COMMIT_MARKER).read_text())
        for name, size in data["files"].items():
            if (final / name).stat().st_size != size:
                return None
        return dict(data)
    except (OSError, ValueError, KeyError, AttributeError):
        return None
