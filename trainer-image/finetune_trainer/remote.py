"""The object store as the durable copy of committed checkpoints (issue 14): upload, list, download, retain.

Layout: s3://BUCKET/PREFIX/checkpoint-N/<file> for every file the local commit marker records, then
s3://BUCKET/PREFIX/checkpoint-N/COMMITTED.json, the local marker's bytes, uploaded last. A remote
checkpoint counts only once its marker is there: a kill mid-upload leaves files without a marker, which
nothing lists as committed (and the next upload of that step overwrites them).

What an upload verifies, per file, before the marker goes up:
- the bytes read from the volume have the marker's size and CRC-32 (unchanged since the commit);
- the PUT carries their SHA-256 (x-amz-checksum-sha256) and the server refuses the object when what it
  received has another one (a corrupted transfer never becomes an object);
- a HEAD afterwards shows the object with that size and the ETag the PUT returned (it is there, whole, and
  it is the one this upload wrote, not an older object under the same key).
A download checks every file's size and CRC-32 against the marker before the checkpoint is renamed into place,
so the comparison that decides "intact" is the same end to end: local commit → store → another volume.

The client is obstore (Rust object_store): no Python dependencies (boto3's botocore pins python-dateutil<3,
the kubernetes client the trainer uses needs >=3), retries with backoff inside a request, multipart uploads.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from finetune_api.contract import COMMIT_MARKER, S3_ACCESS_KEY_ID_ENV, S3_SECRET_ACCESS_KEY_ENV
from finetune_api.trainer_config import ObjectStoreConfig

from finetune_trainer import checkpoints as ckpt
from finetune_trainer.build import ConfigError

if TYPE_CHECKING:
    from obstore.store import S3Store

# One multipart part; also the largest file sent in one PUT.
PART_BYTES = 64 << 20


class UploadError(Exception):
    """An upload that did not verify; the message says which file and why (retried by the uploader)."""


class MissingCredentials(ConfigError):
    """spec.checkpoint.objectStore is set but the key pair is not in the environment."""


@dataclass
class RemoteCommit:
    step: int
    marker: dict[str, Any]

    @property
    def name(self) -> str:
        return f"checkpoint-{self.step}"


@dataclass
class UploadResult:
    step: int
    bytes: int
    seconds: float
    files: int


def open_store(config: ObjectStoreConfig, request_timeout_seconds: float = 30.0) -> S3Store:
    """An S3 client for the configured bucket. Requests retry briefly inside obstore (a blip); a store that
    stays down surfaces as an error quickly, and the Uploader's own backoff takes over."""
    from obstore.store import S3Store

    access = os.environ.get(S3_ACCESS_KEY_ID_ENV)
    secret = os.environ.get(S3_SECRET_ACCESS_KEY_ENV)
    if not access or not secret:
        raise MissingCredentials(
            f"object store: {S3_ACCESS_KEY_ID_ENV} and {S3_SECRET_ACCESS_KEY_ENV} must be set "
            "(in a pod: from spec.checkpoint.objectStore.credentials' Secret)"
        )
    s3: dict[str, Any] = {
        "access_key_id": access,
        "secret_access_key": secret,
        "region": config.region,
        "virtual_hosted_style_request": not config.path_style,
        "checksum_algorithm": "sha256",
    }
    if config.endpoint:
        s3["endpoint"] = config.endpoint
    client: dict[str, Any] = {
        "timeout": timedelta(seconds=request_timeout_seconds),
        "connect_timeout": timedelta(seconds=5),
    }
    if config.endpoint and config.endpoint.startswith("http://"):
        client["allow_http"] = True
    retry: dict[str, Any] = {
        "max_retries": 2,
        "retry_timeout": timedelta(seconds=10),
        "backoff": {"init_backoff": timedelta(milliseconds=200), "max_backoff": timedelta(seconds=2)},
    }
    return S3Store(config.bucket, config=s3, client_options=client, retry_config=retry)  # type: ignore[arg-type]


def _key(prefix: str, *parts: str) -> str:
    return "/".join(p for p in (prefix, *parts) if p)


def _b64_sha256(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def upload_checkpoint(
    store: S3Store,
    prefix: str,
    record: ckpt.CommitRecord,
    before_marker: Callable[[], None] | None = None,
    after_file: Callable[[str], None] | None = None,
) -> UploadResult:
    """Upload a locally committed checkpoint: every file verified (module docstring), then the marker, last.
    `before_marker` runs right before the marker is written (the attempt fence); `after_file(name)` after each
    verified file (logging, test hooks)."""
    import obstore

    t0 = time.monotonic()
    marker_bytes = (record.path / COMMIT_MARKER).read_bytes()
    marker = json.loads(marker_bytes)
    if int(marker["step"]) != record.step:
        raise UploadError(f"{record.name}: its marker changed since the commit")
    sent = 0
    for name, size in sorted(record.files.items()):
        data = (record.path / name).read_bytes()
        crc = ckpt.bytes_crc32(data)
        if len(data) != size or (record.checksums and crc != record.checksums.get(name)):
            raise UploadError(f"{record.name}/{name}: changed on the volume since its commit")
        key = _key(prefix, record.name, name)
        put = obstore.put(store, key, data, chunk_size=PART_BYTES, use_multipart=len(data) > PART_BYTES)
        head = obstore.head(store, key)
        if head["size"] != size:
            raise UploadError(f"{key}: the store holds {head['size']} bytes, {size} were sent")
        if put.get("e_tag") and head.get("e_tag") != put.get("e_tag"):
            raise UploadError(f"{key}: ETag {head.get('e_tag')} is not the uploaded {put.get('e_tag')}")
        sent += size
        if after_file is not None:
            after_file(name)
    if before_marker is not None:
        before_marker()
    obstore.put(store, _key(prefix, record.name, COMMIT_MARKER), marker_bytes)
    return UploadResult(record.step, sent, time.monotonic() - t0, len(record.files))


def list_remote(store: S3Store, prefix: str) -> tuple[list[RemoteCommit], dict[int, list[str]]]:
    """Remote committed checkpoints (marker present and readable), newest first; and every key by step
    (committed or not), for retention."""
    import obstore

    keys: dict[int, list[str]] = {}
    markers: list[int] = []
    base = _key(prefix, "")
    for batch in obstore.list(store, prefix=base or None):
        for meta in batch:
            rel = meta["path"][len(base) + 1 :] if base else meta["path"]
            directory, _, leaf = rel.partition("/")
            step = ckpt.checkpoint_step(directory)
            if step is None or not leaf:
                continue
            keys.setdefault(step, []).append(meta["path"])
            if leaf == COMMIT_MARKER:
                markers.append(step)
    commits = []
    for step in sorted(markers, reverse=True):
        try:
            data = json.loads(
                bytes(obstore.get(store, _key(prefix, f"checkpoint-{step}", COMMIT_MARKER)).bytes())
            )
            if int(data["step"]) == step and isinstance(data["files"], dict):
                commits.append(RemoteCommit(step, data))
        except (ValueError, KeyError, TypeError):
            continue  # an unreadable marker is not a commit
    return commits, keys


def download_checkpoint(store: S3Store, prefix: str, remote: RemoteCommit, output_dir: Path) -> Path:
    """Fetch a remote committed checkpoint into OUTPUT_DIR/checkpoint-N: each file checked against the
    marker (size, CRC-32) in a hidden directory, the marker written last, then one rename. UploadError on a
    mismatch."""
    import obstore

    output_dir.mkdir(parents=True, exist_ok=True)
    target = output_dir / remote.name
    tmp = output_dir / f".{remote.name}.download"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    checksums = remote.marker.get("checksums") or {}
    for name, size in remote.marker["files"].items():
        key = _key(prefix, remote.name, name)
        data = bytes(obstore.get(store, key).bytes())
        crc = ckpt.bytes_crc32(data)
        if len(data) != int(size) or (name in checksums and crc != checksums[name]):
            shutil.rmtree(tmp, ignore_errors=True)
            raise UploadError(
                f"{key}: {len(data)} bytes, CRC-32 {crc}; the marker says {size}, {checksums.get(name)}"
            )
        with open(tmp / name, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    ckpt.atomic_write_json(tmp / COMMIT_MARKER, remote.marker)
    if target.exists():
        ckpt.remove_checkpoint(target)  # a torn local save of the same step: the remote commit replaces it
    os.replace(tmp, target)
    ckpt.fsync_dir(output_dir)
    return target


def apply_remote_retention(
    store: S3Store,
    prefix: str,
    keep: int | None,
    keep_steps: set[int] = frozenset(),  # type: ignore[assignment]
) -> list[int]:
    """Keep the newest `keep` remote committed checkpoints (+ `keep_steps`); delete older ones, marker first
    (so a half-deleted one is no longer committed), and uploads older than the newest commit that never got a
    marker (a kill mid-upload). Never deletes the newest remote committed checkpoint."""
    import obstore

    commits, keys = list_remote(store, prefix)
    if not commits:
        return []
    newest = commits[0].step
    kept = {c.step for c in commits[: max(1, keep or len(commits))]} | set(keep_steps) | {newest}
    deleted = []
    for step in sorted(keys):
        if step in kept or step > newest:
            continue  # newer than the newest commit: an upload that may be in progress
        names = keys[step]
        marker = [k for k in names if k.endswith("/" + COMMIT_MARKER)]
        for key in marker + [k for k in names if k not in marker]:
            obstore.delete(store, key)
        deleted.append(step)
    return deleted
