"""volume.SpacePlan and its helpers: is the checkpoint volume big enough for the model cache plus the
checkpoints the run keeps (status.volumeWarning, issue 13 item 1)? The arithmetic, and the measurements on
real files."""

from __future__ import annotations

import os
from pathlib import Path

from finetune_trainer import volume
from finetune_trainer.volume import SpacePlan

MiB = 1 << 20
GiB = 1 << 30


def plan(**overrides: int) -> SpacePlan:
    values = dict(
        capacity_bytes=10 * GiB,
        free_bytes=5 * GiB,
        cache_bytes=2 * GiB,
        checkpoint_bytes=500 * MiB,
        kept=2,
        present=0,
    )
    values.update(overrides)
    return SpacePlan(**values)


def test_needed_is_the_cache_plus_kept_checkpoints_plus_the_one_being_written() -> None:
    p = plan()
    assert p.needed_bytes == 2 * GiB + 3 * 500 * MiB
    assert p.still_to_write_bytes == 3 * 500 * MiB
    assert plan(present=2).still_to_write_bytes == 500 * MiB
    assert plan(present=5).still_to_write_bytes == 0  # retention keeps the use flat from here on
    assert p.warning() is None


def test_a_volume_smaller_than_cache_plus_checkpoints_is_too_small() -> None:
    p = plan(capacity_bytes=3 * GiB, free_bytes=3 * GiB)  # 2 GiB + 1.5 GiB > 3 GiB
    warning = p.warning()
    assert warning is not None and warning.startswith("checkpoint volume too small: it holds 3.0 GiB")
    assert "3.5 GiB" in warning and "model cache (2.0 GiB)" in warning
    assert "3 checkpoints of 500.0 MiB (the 2 kept and the one being written)" in warning
    assert "checkpoint.volumeSize" in warning and "spec.cache" in warning
    # exactly enough fits
    assert plan(capacity_bytes=2 * GiB + 1500 * MiB, free_bytes=2 * GiB).warning() is None


def test_without_the_cache_on_the_volume_only_the_checkpoints_count() -> None:
    p = plan(capacity_bytes=3 * GiB, free_bytes=3 * GiB, cache_bytes=0)
    assert p.needed_bytes == 1500 * MiB and p.warning() is None
    small = plan(capacity_bytes=1 * GiB, free_bytes=1 * GiB, cache_bytes=0).warning()
    assert small is not None and "model cache" not in small and "spec.cache" not in small


def test_big_enough_but_too_little_free_is_nearly_full() -> None:
    # the claim is shared (existingClaimName): other runs use most of it
    p = plan(free_bytes=1 * GiB, present=1)  # 2 more checkpoints of 500 MiB still to come: 1000 MiB < 1 GiB
    assert p.warning() is None
    short = plan(free_bytes=900 * MiB, present=1).warning()
    assert short is not None and short.startswith("checkpoint volume nearly full: 900.0 MiB free")
    assert "still need 1000.0 MiB" in short and "1 already there" in short


def test_unlimited_retention_keeps_every_save_of_the_run() -> None:
    assert volume.checkpoints_kept(2, saves_in_run=100) == 2
    assert volume.checkpoints_kept(None, saves_in_run=100) == 100
    assert volume.checkpoints_kept(None, saves_in_run=0) == 1
    assert plan(kept=100).needed_bytes == 2 * GiB + 101 * 500 * MiB


def test_tree_bytes_counts_files_once_not_the_links_to_them(tmp_path: Path) -> None:
    blobs, snapshot = tmp_path / "blobs", tmp_path / "snapshots" / "abc"
    blobs.mkdir()
    snapshot.mkdir(parents=True)
    (blobs / "x").write_bytes(b"a" * 1000)
    (blobs / "y").write_bytes(b"b" * 24)
    os.symlink(blobs / "x", snapshot / "model.safetensors")  # as the hub cache links snapshots to blobs
    assert volume.tree_bytes(tmp_path) == 1024
    assert volume.tree_bytes(tmp_path / "missing") == 0


def test_capacity_and_filesystem_of_real_paths(tmp_path: Path) -> None:
    stats = os.statvfs(tmp_path)
    assert volume.capacity_bytes(tmp_path / "not" / "yet") == stats.f_blocks * stats.f_frsize
    assert volume.same_filesystem(tmp_path, tmp_path / "a" / "b")
    assert not volume.same_filesystem(tmp_path, Path("/proc"))
