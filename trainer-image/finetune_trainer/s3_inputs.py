"""s3:// datasets and base models (issue 14, item 4): fetched into the Hugging Face cache, once.

`dataset.path: s3://BUCKET/KEY` (one data file), `dataset.path: s3://BUCKET/PREFIX/` (a directory: data files
or a `save_to_disk` directory) and `model.name_or_path: s3://BUCKET/PREFIX` (a saved model directory) are read
with the client, endpoint, region, addressing and key pair of spec.checkpoint.objectStore; the bucket comes
from the URI.

Layout under HF_HOME (kept across attempts with cache.location checkpointVolume or sharedClaim):

    s3/BUCKET/KEY                 the object's bytes (a prefix keeps the bucket's layout below it)
    s3/.records/BUCKET/KEY.json   what was fetched: ETag and size as the store reported them
    s3/.locks/BUCKET/KEY.lock     flock(2) per object, as huggingface_hub locks its downloads (filelock)
    s3/.tmp/<hash>.<pid>.<n>      a download in progress (outside the tree: a torn one is never read)

A start lists the prefix (or HEADs the key) and compares each object's ETag and size with its record: equal
(and the local file of that size) → nothing is downloaded. Otherwise, under the object's lock (checked again:
another trainer on the same cache may just have fetched it), the object is streamed to a temporary file in
chunks (constant memory), its size checked against the size the GET reported, fsynced, renamed into place,
and then its record written. A changed object is fetched again; a file no longer under a prefix is removed
from the local copy (so a dataset directory never reads stale files).

Errors: a missing bucket or key, an empty prefix, 401/403 → ConfigError naming the field and the URI (exit
78); connection failures, timeouts, 408/429/5xx → StoreUnavailable (exit 1: the operator retries with
backoff).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune_api.models import S3_SCHEME, is_s3
from finetune_api.trainer_config import ObjectStoreConfig, TrainerConfig

from finetune_trainer import checkpoints as ckpt
from finetune_trainer.build import _DATA_BUILDERS, ConfigError, check_data_file
from finetune_trainer.logs import log

#: Streamed in chunks of this size: a multi-GB model never sits in memory whole.
CHUNK_BYTES = 8 << 20
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


class StoreUnavailable(Exception):
    """The object store could not be reached or answered 408/429/5xx: transient, exit 1 (retried)."""


@dataclass(frozen=True)
class S3Uri:
    bucket: str
    key: str  # "" (the whole bucket) or a key; a trailing "/" names a prefix

    def __str__(self) -> str:
        return f"{S3_SCHEME}{self.bucket}/{self.key}"

    @property
    def is_prefix(self) -> bool:
        return self.key == "" or self.key.endswith("/")

    def as_prefix(self) -> S3Uri:
        return self if self.is_prefix else S3Uri(self.bucket, self.key + "/")


def parse_uri(uri: str, field: str) -> S3Uri:
    """s3://BUCKET/KEY → S3Uri; ConfigError naming the field for anything else."""
    bucket, _, key = uri.removeprefix(S3_SCHEME).partition("/")
    if not _BUCKET.fullmatch(bucket) or ".." in bucket:
        raise ConfigError(
            f"{field}: {uri}: {bucket!r} is not an S3 bucket name (3-63 lower-case letters, digits, '.', "
            "'-'); write s3://BUCKET/KEY"
        )
    if key.startswith("/") or "//" in key or ".." in key.split("/"):
        raise ConfigError(f"{field}: {uri}: the key must not start with '/' nor hold '//' or '..' segments")
    return S3Uri(bucket, key)


def check_uris(config: TrainerConfig) -> None:
    """Before anything is fetched (no network): the URIs' shape, the store settings they need, the data
    file's type."""
    inputs = s3_inputs(config)
    if inputs and config.object_store is None:
        field, uri = inputs[0]
        raise ConfigError(
            f"{field}: {uri} needs spec.checkpoint.objectStore (TrainerConfig object_store): its endpoint, "
            "region, addressing and credentials are used to read it"
        )
    for field, uri in inputs:
        parsed = parse_uri(uri, field)
        if field == "dataset.path" and not parsed.is_prefix:
            suffix = Path(parsed.key).suffix
            if suffix and suffix not in _DATA_BUILDERS:
                raise ConfigError(
                    f"dataset.path: {uri}: unsupported file type {suffix!r} "
                    f"(use {', '.join(sorted(_DATA_BUILDERS))}, or end the URI with '/' for a directory)"
                )


def s3_inputs(config: TrainerConfig) -> list[tuple[str, str]]:
    out = []
    if is_s3(config.model.name_or_path):
        out.append(("model.name_or_path", config.model.name_or_path))
    if is_s3(config.dataset.path):
        assert config.dataset.path is not None
        out.append(("dataset.path", config.dataset.path))
    return out


# ------------------------------------------------------------------------------------------ errors


_STATUS = re.compile(r"status code: (\d{3})")
_CODE = re.compile(r"<Code>([A-Za-z]+)</Code>")


def classify(error: BaseException, field: str, uri: str | S3Uri) -> Exception:
    """ConfigError (78) for what no retry fixes, StoreUnavailable (exit 1, retried) for a store that is down
    or failing."""
    from obstore import exceptions as ox

    text = str(error)
    match = _STATUS.search(text)
    status = int(match.group(1)) if match else None
    code = _CODE.search(text)
    why = f"HTTP {status}" if status is not None else type(error).__name__
    if code:
        why += f" {code.group(1)}"
    if isinstance(error, FileNotFoundError) or status == 404:
        return ConfigError(f"{field}: {uri}: not found in the object store ({why}: no such bucket or key)")
    if isinstance(error, ox.PermissionDeniedError | ox.UnauthenticatedError) or status in (401, 403):
        return ConfigError(
            f"{field}: {uri}: access denied ({why}): spec.checkpoint.objectStore.credentials' key pair "
            "cannot read it"
        )
    if status is not None and 400 <= status < 500 and status not in (408, 429):
        return ConfigError(f"{field}: {uri}: the object store refused the request ({why})")
    if status is None and not isinstance(error, ox.GenericError | OSError):
        return ConfigError(f"{field}: {uri}: {type(error).__name__}: {text.splitlines()[0] if text else ''}")
    first = text.splitlines()[0][:300] if text else type(error).__name__
    return StoreUnavailable(f"{field}: {uri}: the object store is unreachable or failing ({why}): {first}")


# ------------------------------------------------------------------------------------------ fetch


@dataclass
class Fetched:
    """One input in the cache: `local` is what the loaders read (a file or a directory)."""

    field: str
    uri: str
    local: Path
    files: int = 0
    bytes: int = 0
    downloaded_files: int = 0
    downloaded_bytes: int = 0
    removed_files: int = 0


@dataclass(frozen=True)
class _Object:
    key: str
    size: int
    etag: str | None


class S3Cache:
    """HF_HOME/s3: the local copy of s3:// inputs (module docstring)."""

    def __init__(self, hf_home: Path):
        self.root = hf_home / "s3"
        self._counter = 0

    def local(self, bucket: str, key: str) -> Path:
        return self.root / bucket / key.rstrip("/")

    def _record_path(self, bucket: str, key: str) -> Path:
        return self.root / ".records" / bucket / f"{key}.json"

    def _lock_path(self, bucket: str, key: str) -> Path:
        return self.root / ".locks" / bucket / f"{key}.lock"

    def _tmp_stem(self, bucket: str, key: str) -> str:
        return hashlib.sha256(f"{bucket}/{key}".encode()).hexdigest()[:32]

    def read_record(self, bucket: str, key: str) -> dict[str, Any] | None:
        try:
            data = json.loads(self._record_path(bucket, key).read_text())
            return data if isinstance(data, dict) else None
        except (OSError, ValueError):
            return None

    def is_current(self, bucket: str, obj: _Object) -> bool:
        """The local copy is this version of the object: same ETag and size recorded, file of that size."""
        record = self.read_record(bucket, obj.key)
        if record is None or record.get("size") != obj.size or record.get("etag") != obj.etag:
            return False
        try:
            return self.local(bucket, obj.key).stat().st_size == obj.size
        except OSError:
            return False

    @contextmanager
    def lock(self, bucket: str, key: str) -> Iterator[None]:
        """flock(2) on the object's lock file: one download per object among every process on this cache
        (also across nodes on NFSv4, where flock is a POSIX lock); released when the process dies."""
        path = self._lock_path(bucket, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    def download(self, store: Any, bucket: str, obj: _Object) -> int:
        """Stream the object into place (caller holds its lock); returns the bytes written."""
        import obstore

        tmp_dir = self.root / ".tmp"
        tmp_dir.mkdir(parents=True, exist_ok=True)
        stem = self._tmp_stem(bucket, obj.key)
        for stale in tmp_dir.glob(f"{stem}.*"):  # a download killed midway (we hold the lock: not in use)
            stale.unlink(missing_ok=True)
        self._counter += 1
        tmp = tmp_dir / f"{stem}.{os.getpid()}.{self._counter}"
        result = obstore.get(store, obj.key)
        meta = result.meta
        size, etag = int(meta["size"]), meta.get("e_tag")
        written = 0
        try:
            with open(tmp, "wb") as fh:
                for chunk in result.stream(min_chunk_size=CHUNK_BYTES):
                    written += fh.write(memoryview(chunk))
                fh.flush()
                os.fsync(fh.fileno())
            if written != size:
                raise StoreUnavailable(
                    f"s3://{bucket}/{obj.key}: {written} bytes received, the store reported {size}"
                )
            target = self.local(bucket, obj.key)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, target)
            ckpt.fsync_dir(target.parent)
        finally:
            tmp.unlink(missing_ok=True)
        # Last: a record names only bytes that are in place. The GET's own ETag: the bytes are that version
        # (if the object changed since the listing, the next start sees the listing agree with it).
        record = self._record_path(bucket, obj.key)
        record.parent.mkdir(parents=True, exist_ok=True)
        ckpt.atomic_write_json(
            record,
            {"uri": f"s3://{bucket}/{obj.key}", "etag": etag, "size": size, "fetched_at": ckpt.now_rfc3339()},
        )
        return written

    def remove(self, bucket: str, key: str) -> None:
        with self.lock(bucket, key):
            self._record_path(bucket, key).unlink(missing_ok=True)
            self.local(bucket, key).unlink(missing_ok=True)

    def fetch(self, store: Any, field: str, uri: S3Uri, directory: bool | None = None) -> Fetched:
        """Bring URI (a key, or every object under a prefix) up to date in the cache. `directory`: True for a
        model (always a prefix), None for a dataset (a key without an object there may still be a prefix)."""
        import obstore

        objects: list[_Object] = []
        as_dir = bool(directory) or uri.is_prefix
        guessed_dir = False
        try:
            if not as_dir:
                try:
                    head = obstore.head(store, uri.key)
                    objects = [_Object(uri.key, int(head["size"]), head.get("e_tag"))]
                except FileNotFoundError:
                    # s3://b/data written without the '/': a prefix, if anything is under it
                    as_dir = guessed_dir = True
            if as_dir:
                prefix = uri.as_prefix()
                objects = [
                    _Object(meta["path"], int(meta["size"]), meta.get("e_tag"))
                    for batch in obstore.list(store, prefix=prefix.key.rstrip("/") or None)
                    for meta in batch
                    if not meta["path"].endswith("/")  # "folder" placeholder objects some tools create
                ]
                if not objects and guessed_dir:
                    raise ConfigError(
                        f"{field}: {uri}: not found in the object store (no such key, and no objects under "
                        f"{prefix})"
                    )
                if not objects:
                    raise ConfigError(f"{field}: {prefix}: no objects under this prefix (empty or missing)")
        except ConfigError:
            raise
        except Exception as error:
            raise classify(error, field, uri) from error
        base = uri.as_prefix().key if as_dir else uri.key
        result = Fetched(field, str(uri), self.local(uri.bucket, base))
        for obj in sorted(objects, key=lambda o: o.key):
            result.files += 1
            result.bytes += obj.size
            if self.is_current(uri.bucket, obj):
                continue
            with self.lock(uri.bucket, obj.key):
                if self.is_current(uri.bucket, obj):  # another trainer on this cache fetched it meanwhile
                    continue
                try:
                    result.downloaded_bytes += self.download(store, uri.bucket, obj)
                except (ConfigError, StoreUnavailable):
                    raise
                except OSError as error:
                    if error.errno is not None:
                        raise  # the local volume (full, read-only): the exit protocol names it
                    raise self._while_fetching(error, field, uri.bucket, obj) from error
                except Exception as error:
                    raise self._while_fetching(error, field, uri.bucket, obj) from error
                result.downloaded_files += 1
        if as_dir:
            result.removed_files = self._prune(uri.bucket, base, {o.key for o in objects})
        return result

    @staticmethod
    def _while_fetching(error: BaseException, field: str, bucket: str, obj: _Object) -> Exception:
        """An object listed a moment ago that is gone now was replaced or deleted meanwhile: a retry lists
        again (transient), unlike a URI that names nothing (ConfigError at the listing)."""
        where = f"s3://{bucket}/{obj.key}"
        classified = classify(error, field, where)
        if isinstance(error, FileNotFoundError):
            return StoreUnavailable(f"{field}: {where}: deleted or replaced while it was being fetched")
        return classified

    def _prune(self, bucket: str, base: str, keep: set[str]) -> int:
        """Files under the prefix's local copy that the store no longer has (a dataset directory must not
        read them)."""
        local_base = self.local(bucket, base)
        removed = 0
        if not local_base.is_dir():
            return 0
        for path in sorted(local_base.rglob("*")):
            if not path.is_file():
                continue
            key = f"{base}{path.relative_to(local_base).as_posix()}"
            if key not in keep:
                self.remove(bucket, key)
                removed += 1
        return removed


def open_input_store(config: ObjectStoreConfig, bucket: str) -> Any:
    """The checkpoint store's client settings and key pair, for another bucket."""
    from finetune_trainer import remote

    return remote.open_store(config.model_copy(update={"bucket": bucket, "prefix": ""}))


def fetch_inputs(config: TrainerConfig, hf_home: Path) -> tuple[TrainerConfig, list[Fetched]]:
    """Fetch every s3:// input into HF_HOME/s3; the config with those inputs replaced by their local copies
    (the caller keeps the original for the run's identity: the URI, not where the cache is)."""
    inputs = s3_inputs(config)
    if not inputs:
        return config, []
    assert config.object_store is not None  # check_uris
    cache = S3Cache(hf_home)
    stores: dict[str, Any] = {}
    fetched: list[Fetched] = []
    model, dataset = config.model, config.dataset
    for field, raw in inputs:
        uri = parse_uri(raw, field)
        if uri.bucket not in stores:
            stores[uri.bucket] = open_input_store(config.object_store, uri.bucket)
        t0 = time.monotonic()
        is_model = field == "model.name_or_path"
        done = cache.fetch(stores[uri.bucket], field, uri, directory=True if is_model else None)
        log(
            "s3_input_fetched",
            field=field,
            uri=raw,
            local=str(done.local),
            files=done.files,
            bytes=done.bytes,
            downloaded_files=done.downloaded_files,
            downloaded_bytes=done.downloaded_bytes,
            removed_files=done.removed_files,
            seconds=round(time.monotonic() - t0, 3),
        )
        fetched.append(done)
        if is_model:
            if not (done.local / "config.json").is_file():
                raise ConfigError(f"model.name_or_path: {raw}: no config.json under it (not a saved model)")
            model = model.model_copy(update={"name_or_path": str(done.local)})
        else:
            if done.local.is_file():
                check_data_file(done.local, raw)
            dataset = dataset.model_copy(update={"path": str(done.local)})
    return config.model_copy(update={"model": model, "dataset": dataset}), fetched
