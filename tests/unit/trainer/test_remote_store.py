"""finetune_trainer.remote / upload against a real S3 server on 127.0.0.1 (no training): what an upload
writes and in which order, remote retention, and a download that does not verify being passed over."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import obstore
import pytest
from finetune_api.trainer_config import ObjectStoreConfig
from finetune_trainer import checkpoints as ckpt
from finetune_trainer import remote, upload

from tests.harness.object_store import ObjectStore

PREFIX = "runs/u1"


@pytest.fixture
def store(object_store: ObjectStore, monkeypatch: pytest.MonkeyPatch) -> object:
    for name, value in object_store.env().items():
        monkeypatch.setenv(name, value)
    return remote.open_store(ObjectStoreConfig(**object_store.config(PREFIX)))


def committed(root: Path, step: int) -> ckpt.CommitRecord:
    """A committed checkpoint-N as the commit protocol leaves it (files, then the version-2 marker)."""
    path = root / f"checkpoint-{step}"
    path.mkdir(parents=True)
    files, checksums = {}, {}
    for name in ("adapter_model.safetensors", "optimizer.pt", "trainer_state.json"):
        data = f"{name} of step {step}".encode() * 100
        (path / name).write_bytes(data)
        files[name], checksums[name] = len(data), f"{zlib.crc32(data):08x}"
    marker = {
        "version": 2,
        "step": step,
        "files": files,
        "checksum": "crc32",
        "checksums": checksums,
        "required": list(files),
    }
    (path / "COMMITTED.json").write_text(json.dumps(marker))
    return ckpt.CommitRecord(path, step, "", files, None, 2, checksums)


def test_upload_puts_every_file_then_the_marker_and_lists_it(
    store: object, object_store: ObjectStore, tmp_path: Path
) -> None:
    record = committed(tmp_path / "local", 5)
    seen: list[str] = []
    result = remote.upload_checkpoint(
        store,
        PREFIX,
        record,
        before_marker=lambda: seen.append(f"marker? {sorted(object_store.objects(PREFIX))}"),
        after_file=seen.append,
    )
    assert result.bytes == record.bytes and result.files == 3
    assert seen[:3] == sorted(record.files)
    assert "COMMITTED.json" not in seen[3]  # every file was in the store before the marker was written
    keys = object_store.objects(PREFIX)
    assert keys == {
        **{f"{PREFIX}/checkpoint-5/{n}": s for n, s in record.files.items()},
        f"{PREFIX}/checkpoint-5/COMMITTED.json": (record.path / "COMMITTED.json").stat().st_size,
    }
    commits, _ = remote.list_remote(store, PREFIX)
    assert [c.step for c in commits] == [5]


def test_a_file_changed_since_its_commit_is_not_uploaded(
    store: object, object_store: ObjectStore, tmp_path: Path
) -> None:
    record = committed(tmp_path / "local", 5)
    data = (record.path / "optimizer.pt").read_bytes()
    (record.path / "optimizer.pt").write_bytes(b"X" + data[1:])  # same size, other bytes
    with pytest.raises(remote.UploadError, match="changed on the volume"):
        remote.upload_checkpoint(store, PREFIX, record)
    assert not any(k.endswith("COMMITTED.json") for k in object_store.objects(PREFIX))


def test_retention_keeps_the_newest_and_clears_torn_uploads_older_than_it(
    store: object, object_store: ObjectStore, tmp_path: Path
) -> None:
    for step in (5, 10, 15, 20):
        remote.upload_checkpoint(store, PREFIX, committed(tmp_path / "local", step))
    torn_old, torn_new = committed(tmp_path / "torn", 12), committed(tmp_path / "torn", 25)
    for record in (torn_old, torn_new):  # files without a marker: a kill mid-upload
        (record.path / "COMMITTED.json").unlink()
        obstore.put(store, f"{PREFIX}/{record.name}/optimizer.pt", b"partial")  # type: ignore[arg-type]
    deleted = remote.apply_remote_retention(store, PREFIX, keep=2)
    assert deleted == [5, 10, 12]
    steps = {k.split("/")[2] for k in object_store.objects(PREFIX)}
    assert steps == {"checkpoint-15", "checkpoint-20", "checkpoint-25"}  # 25: may be an upload in progress
    assert remote.apply_remote_retention(store, PREFIX, keep=1) == [15]  # the newest commit stays


def test_resume_downloads_the_newest_remote_commit_that_verifies(
    store: object, object_store: ObjectStore, tmp_path: Path
) -> None:
    for step in (5, 10):
        remote.upload_checkpoint(store, PREFIX, committed(tmp_path / "local", step))
    # Damage the newest copy in the store (same size): its CRC-32 no longer matches the marker.
    stored = object_store.bucket_dir / PREFIX / "checkpoint-10" / "optimizer.pt"
    stored.write_bytes(b"Y" + stored.read_bytes()[1:])
    out = tmp_path / "new-volume"
    assert upload.fetch_newer_remote(store, PREFIX, out) == "checkpoint-10"
    assert [p.name for p in out.iterdir()] == ["checkpoint-5"]  # 10 passed over, no partial directory left
    record = ckpt.read_commit(out / "checkpoint-5", verify_checksums=True)
    assert record.files == committed(tmp_path / "again", 5).files
    # A local commit as new as the store's: nothing is downloaded.
    assert upload.fetch_newer_remote(store, PREFIX, out) == "checkpoint-10"
    assert [p.name for p in out.iterdir()] == ["checkpoint-5"]


def test_uploader_reports_the_durable_checkpoint_in_status(
    store: object, object_store: ObjectStore, tmp_path: Path
) -> None:
    from finetune_trainer.reporting import StatusReporter
    from finetune_trainer.run_state import RunState

    patches: list[dict[str, object]] = []
    reporter = StatusReporter(patches.append, min_interval=0.0)
    run = RunState(output_dir=tmp_path / "local", save_total_limit=2)
    uploader = upload.Uploader(store, PREFIX, run, reporter=reporter)
    try:
        uploader.offer(committed(tmp_path / "local", 5))
        assert uploader.wait(5, timeout=30)
    finally:
        uploader.stop()
        reporter.close()
    assert run.durable_checkpoint == "checkpoint-5"
    assert {"durableCheckpoint": "checkpoint-5", "durableCheckpointStep": 5}.items() <= patches[-1].items()
