"""The checkpoint commit protocol without training: fake checkpoint files in the real formats (safetensors
header, torch.save zip archives, JSON), no torch import."""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
from checkpoint_files import make_checkpoint, write_safetensors
from finetune_api.contract import ATTEMPT_MARKER, COMMIT_MARKER
from finetune_trainer import checkpoints as ckpt
from finetune_trainer.fence import AttemptFence, Superseded


def test_commit_writes_marker_with_files_and_sizes(tmp_path: Path) -> None:
    path = make_checkpoint(tmp_path, 10, commit=False)
    record = ckpt.commit_checkpoint(path, started_at=0.0)
    marker = json.loads((path / COMMIT_MARKER).read_text())
    assert marker["step"] == 10 and marker["files"] == record.files
    assert set(marker["required"]) == set(ckpt.required_files(1))
    assert (
        marker["bytes"]
        == record.bytes
        == sum(p.stat().st_size for p in path.iterdir() if p.name != COMMIT_MARKER)
    )
    assert marker["committed_at"].endswith("Z") and record.save_seconds is not None
    assert not list(path.glob(".*.tmp"))
    assert ckpt.read_commit(path).step == 10
    # version 2: a CRC-32 of every recorded file, as 8 hex digits
    assert marker["version"] == 2 and marker["checksum"] == "crc32"
    assert marker["checksums"].keys() == marker["files"].keys()
    for name, crc in marker["checksums"].items():
        assert crc == f"{zlib.crc32((path / name).read_bytes()):08x}"
    assert ckpt.read_commit(path, verify_checksums=True).checksums == marker["checksums"]


def _zero_fill(target: Path) -> None:
    target.write_bytes(b"\0" * target.stat().st_size)


def _flip_bit(target: Path) -> None:
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x10
    target.write_bytes(bytes(data))


@pytest.mark.parametrize("name", ckpt.required_files(1))
@pytest.mark.parametrize("damage", [_zero_fill, _flip_bit], ids=["zero-filled", "bit-flipped"])
def test_same_size_damage_is_caught_by_the_checksum_and_resume_falls_back(
    tmp_path: Path, name: str, damage: Callable[[Path], None]
) -> None:
    make_checkpoint(tmp_path, 5)
    newest = make_checkpoint(tmp_path, 10)
    size = (newest / name).stat().st_size
    damage(newest / name)
    assert (newest / name).stat().st_size == size
    assert ckpt.read_commit(newest).step == 10  # sizes alone (what retention checks) cannot see it
    with pytest.raises(
        ckpt.CheckpointError, match=rf"{name}: CRC-32 [0-9a-f]{{8}} != committed [0-9a-f]{{8}}"
    ):
        ckpt.read_commit(newest, verify_checksums=True)
    search = ckpt.ResumeSearch(tmp_path)
    chosen = search.next()
    assert chosen is not None and chosen.step == 5
    assert [(r.path.name, r.committed) for r in search.rejected] == [("checkpoint-10", True)]
    assert name in search.rejected[0].why


def _as_version_1(path: Path) -> None:
    marker = json.loads((path / COMMIT_MARKER).read_text())
    for key in ("checksum", "checksums"):
        del marker[key]
    marker["version"] = 1
    (path / COMMIT_MARKER).write_text(json.dumps(marker))


def test_version_1_markers_stay_readable_with_sizes_only(tmp_path: Path) -> None:
    path = make_checkpoint(tmp_path, 10)
    _as_version_1(path)
    _zero_fill(path / "optimizer.pt")  # same size: a v1 marker cannot tell (the restore probe does)
    record = ckpt.read_commit(path, verify_checksums=True)
    assert record.version == 1 and record.checksums == {} and record.step == 10
    (path / "scheduler.pt").write_bytes(b"short")
    with pytest.raises(ckpt.CheckpointError, match=r"scheduler\.pt: size 5 != committed size"):
        ckpt.read_commit(path, verify_checksums=True)


def test_marker_of_unknown_version_or_without_a_checksum_is_refused(tmp_path: Path) -> None:
    path = make_checkpoint(tmp_path, 10)
    marker = json.loads((path / COMMIT_MARKER).read_text())
    (path / COMMIT_MARKER).write_text(json.dumps({**marker, "version": 3}))
    with pytest.raises(ckpt.CheckpointError, match="version 3"):
        ckpt.read_commit(path)
    del marker["checksums"]["optimizer.pt"]
    (path / COMMIT_MARKER).write_text(json.dumps(marker))
    with pytest.raises(ckpt.CheckpointError, match=r"optimizer\.pt: no checksum"):
        ckpt.read_commit(path)


@pytest.mark.parametrize("name", ckpt.required_files(1))
@pytest.mark.parametrize("damage", ["missing", "truncated", "empty"])
def test_commit_refuses_a_damaged_required_file(tmp_path: Path, name: str, damage: str) -> None:
    path = make_checkpoint(tmp_path, 10, commit=False)
    target = path / name
    if damage == "missing":
        target.unlink()
    elif damage == "empty":
        target.write_bytes(b"")
    else:
        data = target.read_bytes()
        target.write_bytes(data[: len(data) - 7])
    with pytest.raises(ckpt.CheckpointError, match=name):
        ckpt.commit_checkpoint(path)
    assert not (path / COMMIT_MARKER).exists()


def test_commit_needs_every_rank_rng_state(tmp_path: Path) -> None:
    path = make_checkpoint(tmp_path, 4, world_size=2, commit=False)
    (path / "rng_state_1.pth").unlink()
    with pytest.raises(ckpt.CheckpointError, match=r"rng_state_1\.pth"):
        ckpt.commit_checkpoint(path, world_size=2)


def test_commit_refuses_trainer_state_of_another_step(tmp_path: Path) -> None:
    path = make_checkpoint(tmp_path, 10, commit=False)
    (path / "trainer_state.json").write_text('{"global_step": 9}')
    with pytest.raises(ckpt.CheckpointError, match="global_step"):
        ckpt.commit_checkpoint(path)


@pytest.mark.parametrize("name", ckpt.required_files(1))
@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_resume_skips_a_torn_newest_checkpoint_and_says_why(tmp_path: Path, name: str, damage: str) -> None:
    make_checkpoint(tmp_path, 5)
    newest = make_checkpoint(tmp_path, 10)
    if damage == "missing":
        (newest / name).unlink()
    else:
        data = (newest / name).read_bytes()
        (newest / name).write_bytes(data[:-3])
    choice = ckpt.find_resume_checkpoint(tmp_path)
    assert choice.checkpoint is not None and choice.checkpoint.step == 5
    assert [(p.name, name in why) for p, why in choice.skipped] == [("checkpoint-10", True)]


def test_resume_never_uses_uncommitted_or_foreign_marker(tmp_path: Path) -> None:
    make_checkpoint(tmp_path, 5)
    make_checkpoint(tmp_path, 15, commit=False)
    odd = make_checkpoint(tmp_path, 10)
    marker = json.loads((odd / COMMIT_MARKER).read_text())
    marker["step"] = 7
    (odd / COMMIT_MARKER).write_text(json.dumps(marker))
    (tmp_path / "checkpoint-20").mkdir()
    (tmp_path / "checkpoint-20" / COMMIT_MARKER).write_text("{not json")
    (tmp_path / "not-a-checkpoint").mkdir()
    choice = ckpt.find_resume_checkpoint(tmp_path)
    assert choice.checkpoint is not None and choice.checkpoint.step == 5
    reasons = {p.name: why for p, why in choice.skipped}
    assert set(reasons) == {"checkpoint-20", "checkpoint-15", "checkpoint-10"}
    assert "unreadable" in reasons["checkpoint-20"]
    assert "not committed" in reasons["checkpoint-15"]
    assert "step 7" in reasons["checkpoint-10"]


def test_empty_or_missing_dir_resumes_nothing(tmp_path: Path) -> None:
    assert ckpt.find_resume_checkpoint(tmp_path / "nope").checkpoint is None
    assert ckpt.find_resume_checkpoint(tmp_path).checkpoint is None


def test_retention_keeps_newest_committed_and_best(tmp_path: Path) -> None:
    for step in (5, 10, 15, 20):
        make_checkpoint(tmp_path, step)
    make_checkpoint(tmp_path, 3, commit=False)  # torn leftover, older than the newest commit: deleted
    make_checkpoint(tmp_path, 25, commit=False)  # newer and uncommitted: maybe a save in progress, kept
    deleted = ckpt.apply_retention(tmp_path, 2, keep=[tmp_path / "checkpoint-5"])
    assert sorted(p.name for p in deleted) == ["checkpoint-10", "checkpoint-3"]
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == ["checkpoint-15", "checkpoint-20", "checkpoint-25", "checkpoint-5"]


def test_retention_never_deletes_the_only_committed_checkpoint(tmp_path: Path) -> None:
    make_checkpoint(tmp_path, 5)
    torn = make_checkpoint(tmp_path, 10)
    (torn / "optimizer.pt").unlink()  # newest is damaged: checkpoint-5 is the newest *intact* one
    ckpt.apply_retention(tmp_path, 1)
    assert (tmp_path / "checkpoint-5" / COMMIT_MARKER).exists()


def test_retention_without_limit_keeps_all(tmp_path: Path) -> None:
    for step in (1, 2, 3):
        make_checkpoint(tmp_path, step)
    assert ckpt.apply_retention(tmp_path, None) == []


def test_set_aside_moves_a_damaged_checkpoint_out_of_sight_and_keeps_every_byte(tmp_path: Path) -> None:
    path = make_checkpoint(tmp_path, 10)
    before = {p.name: p.read_bytes() for p in path.iterdir()}
    moved = ckpt.set_aside(path, "optimizer.pt: CRC-32 mismatch")
    assert moved == tmp_path / "damaged" / "checkpoint-10" and not path.exists()
    assert {p.name: p.read_bytes() for p in moved.iterdir() if p.name != "SET_ASIDE.json"} == before
    note = json.loads((moved / "SET_ASIDE.json").read_text())
    assert note["checkpoint"] == "checkpoint-10" and "CRC-32" in note["reason"] and note["set_aside_at"]
    assert ckpt.list_checkpoints(tmp_path) == []
    # the same step damaged again later gets its own place; nothing is overwritten
    again = ckpt.set_aside(make_checkpoint(tmp_path, 10), "again")
    assert again == tmp_path / "damaged" / "checkpoint-10.1" and moved.is_dir()
    # retention and the stale-checkpoint clean-up never see it
    make_checkpoint(tmp_path, 20)
    ckpt.apply_retention(tmp_path, 1)
    ckpt.remove_newer_than(tmp_path, None)
    assert sorted(p.name for p in (tmp_path / "damaged").iterdir()) == ["checkpoint-10", "checkpoint-10.1"]


def test_retention_sets_a_damaged_committed_checkpoint_aside_instead_of_deleting(tmp_path: Path) -> None:
    for step in (5, 10, 15):
        make_checkpoint(tmp_path, step)
    (tmp_path / "checkpoint-5" / "optimizer.pt").write_bytes(b"short")  # damaged after its commit
    told = []
    deleted = ckpt.apply_retention(
        tmp_path, 1, on_set_aside=lambda src, dst, why: told.append((src.name, why))
    )
    assert [p.name for p in deleted] == ["checkpoint-10"]
    assert [p.name for _s, p in ckpt.list_checkpoints(tmp_path)] == ["checkpoint-15"]
    assert (tmp_path / "damaged" / "checkpoint-5" / "optimizer.pt").read_bytes() == b"short"
    assert len(told) == 1 and told[0][0] == "checkpoint-5"
    assert told[0][1].startswith("optimizer.pt: size 5 != committed size ")


def test_resume_search_hands_out_older_candidates_after_a_failed_restore(tmp_path: Path) -> None:
    for step in (5, 10, 15):
        make_checkpoint(tmp_path, step)
    make_checkpoint(tmp_path, 20, commit=False)  # a torn save: not damage
    search = ckpt.ResumeSearch(tmp_path)
    first = search.next()
    assert first is not None and first.step == 15
    search.reject(first, "restore probe: optimizer.pt: cannot be restored")
    second = search.next()
    assert second is not None and second.step == 10
    assert [(r.path.name, r.committed) for r in search.rejected] == [
        ("checkpoint-20", False),
        ("checkpoint-15", True),
    ]
    assert [r.path.name for r in search.damaged] == ["checkpoint-15"]
    moved = ckpt.set_aside_all(search.rejected)
    assert [(r.path.name, p.name) for r, p in moved] == [("checkpoint-15", "checkpoint-15")]
    assert (tmp_path / "checkpoint-20").is_dir(), "torn saves are not set aside (resume deletes them)"


def test_remove_newer_than_and_remove_uncommits_first(tmp_path: Path) -> None:
    for step in (5, 10, 15):
        make_checkpoint(tmp_path, step)
    removed = ckpt.remove_newer_than(tmp_path, 5)
    assert sorted(p.name for p in removed) == ["checkpoint-10", "checkpoint-15"]
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint-5"]


def test_publish_final_is_atomic_and_verifiable(tmp_path: Path) -> None:
    def write(tmp: Path) -> None:
        write_safetensors(tmp / "adapter_model.safetensors")
        (tmp / "merged").mkdir()
        (tmp / "merged" / "config.json").write_text("{}")

    assert ckpt.final_complete(tmp_path) is None
    final = ckpt.publish_final(tmp_path, write, step=40)
    assert final == tmp_path / "final" and not (tmp_path / ".final.partial").exists()
    marker = ckpt.final_complete(tmp_path)
    assert marker is not None and marker["step"] == 40 and "merged/config.json" in marker["files"]
    (final / "adapter_model.safetensors").write_bytes(b"short")
    assert ckpt.final_complete(tmp_path) is None


def test_atomic_write_json_replaces(tmp_path: Path) -> None:
    target = tmp_path / "m.json"
    ckpt.atomic_write_json(target, {"a": 1})
    ckpt.atomic_write_json(target, {"a": 2})
    assert json.loads(target.read_text()) == {"a": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]


def test_a_fenced_commit_leaves_the_checkpoint_uncommitted(tmp_path: Path) -> None:
    path = make_checkpoint(tmp_path, 10, commit=False)
    fence = AttemptFence(tmp_path, 1, pod="job-1")
    fence.claim()
    AttemptFence(tmp_path, 2, pod="job-2").claim()
    with pytest.raises(Superseded):
        ckpt.commit_checkpoint(path, before_marker=lambda: fence.check("committing checkpoint-10"))
    assert not (path / COMMIT_MARKER).exists()
    assert ckpt.committed_checkpoints(tmp_path) == []


def test_a_fenced_final_leaves_the_newer_final_in_place(tmp_path: Path) -> None:
    ckpt.publish_final(tmp_path, lambda tmp: (tmp / "adapter.bin").write_bytes(b"newer"), step=40)
    fence = AttemptFence(tmp_path, 1, pod="job-1")
    (tmp_path / ATTEMPT_MARKER).write_text(json.dumps({"attempt": 2, "pod": "job-2", "time": "t"}))
    with pytest.raises(Superseded):
        ckpt.publish_final(
            tmp_path,
            lambda tmp: (tmp / "adapter.bin").write_bytes(b"older"),
            step=30,
            before_replace=lambda: fence.check("publishing final/"),
        )
    assert (tmp_path / "final" / "adapter.bin").read_bytes() == b"newer"
    assert ckpt.final_complete(tmp_path) is not None
