"""finetune_trainer.s3_inputs against a real S3 server on 127.0.0.1 (no training): s3:// datasets and models
fetched into the Hugging Face cache once, verified, renamed into place, and classified when they fail.

What reached the client is read from the server's own access log (ObjectStore.requests), not from the code's
account of itself: "nothing downloaded" means the server saw no GetObject."""

from __future__ import annotations

import http.server
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import obstore
import pytest
from finetune_api import TrainerConfig
from finetune_api.trainer_config import ObjectStoreConfig
from finetune_trainer import s3_inputs
from finetune_trainer.build import ConfigError, go_offline_when_local, needs_hub

from tests.harness.object_store import ObjectStore


@pytest.fixture
def store(object_store: ObjectStore, monkeypatch: pytest.MonkeyPatch) -> Any:
    for name, value in object_store.env().items():
        monkeypatch.setenv(name, value)
    return s3_inputs.open_input_store(ObjectStoreConfig(**object_store.config("")), object_store.bucket)


def gets(server: ObjectStore, since: int = 0) -> list[str]:
    """Keys the server sent (GetObject 200) after the first `since` requests."""
    return [key for op, key, status in server.requests()[since:] if op == "GetObject" and status == 200]


def uri(server: ObjectStore, key: str) -> s3_inputs.S3Uri:
    return s3_inputs.S3Uri(server.bucket, key)


def test_first_fetch_downloads_a_restart_downloads_nothing_a_changed_object_again(
    store: Any, object_store: ObjectStore, tmp_path: Path
) -> None:
    rows = b"".join(json.dumps({"text": f"row {i}"}).encode() + b"\n" for i in range(2000))
    obstore.put(store, "data/train.jsonl", rows)
    cache = s3_inputs.S3Cache(tmp_path / "hf")

    first = cache.fetch(store, "dataset.path", uri(object_store, "data/train.jsonl"))
    assert first.local == tmp_path / "hf" / "s3" / object_store.bucket / "data" / "train.jsonl"
    assert first.local.read_bytes() == rows
    assert (first.downloaded_files, first.downloaded_bytes) == (1, len(rows))
    assert gets(object_store) == ["data/train.jsonl"]

    seen = len(object_store.requests())
    again = s3_inputs.S3Cache(tmp_path / "hf").fetch(
        store, "dataset.path", uri(object_store, "data/train.jsonl")
    )
    assert (again.downloaded_files, again.downloaded_bytes) == (0, 0)
    assert [op for op, _, _ in object_store.requests()[seen:]] == ["HeadObject"]  # one HEAD, no bytes

    changed = rows.replace(b'row 1"', b'row X"')  # same size, other bytes: only the ETag tells
    assert len(changed) == len(rows)
    obstore.put(store, "data/train.jsonl", changed)
    seen = len(object_store.requests())
    third = cache.fetch(store, "dataset.path", uri(object_store, "data/train.jsonl"))
    assert third.local.read_bytes() == changed and third.downloaded_files == 1
    assert gets(object_store, seen) == ["data/train.jsonl"]


def test_a_prefix_is_mirrored_and_files_gone_from_the_store_are_removed_locally(
    store: Any, object_store: ObjectStore, tmp_path: Path
) -> None:
    for name in ("config.json", "model.safetensors", "tokenizer/vocab.json"):
        obstore.put(store, f"models/tiny/{name}", f"{name} bytes".encode())
    obstore.put(store, "models/tiny-other/config.json", b"{}")  # shares the prefix's first characters only
    cache = s3_inputs.S3Cache(tmp_path / "hf")
    fetched = cache.fetch(store, "model.name_or_path", uri(object_store, "models/tiny"), directory=True)
    local = fetched.local
    files = sorted(str(p.relative_to(local)) for p in local.rglob("*") if p.is_file())
    assert files == ["config.json", "model.safetensors", "tokenizer/vocab.json"]
    assert (fetched.files, fetched.downloaded_files) == (3, 3)

    obstore.delete(store, "models/tiny/tokenizer/vocab.json")
    seen = len(object_store.requests())
    again = cache.fetch(store, "model.name_or_path", uri(object_store, "models/tiny/"), directory=True)
    assert (again.downloaded_files, again.removed_files) == (0, 1)
    assert not (local / "tokenizer" / "vocab.json").exists()
    assert gets(object_store, seen) == []  # a listing only


def test_a_torn_download_is_never_used_and_is_cleared_by_the_next_fetch(
    store: Any, object_store: ObjectStore, tmp_path: Path
) -> None:
    data = b"x" * (3 * 1024 * 1024 + 7)
    obstore.put(store, "data/big.jsonl", data)
    cache = s3_inputs.S3Cache(tmp_path / "hf")
    # What a kill mid-download leaves: part of the bytes under the temporary name, nothing in place.
    stem = cache._tmp_stem(object_store.bucket, "data/big.jsonl")
    torn = cache.root / ".tmp" / f"{stem}.999999.1"
    torn.parent.mkdir(parents=True)
    torn.write_bytes(data[:1000])
    # The same for an earlier version in place whose record was never written (killed before the record).
    target = cache.local(object_store.bucket, "data/big.jsonl")
    target.parent.mkdir(parents=True)
    target.write_bytes(b"y" * len(data))  # right size, wrong bytes, no record: not trusted

    fetched = cache.fetch(store, "dataset.path", uri(object_store, "data/big.jsonl"))
    assert fetched.downloaded_bytes == len(data) and target.read_bytes() == data
    assert list((cache.root / ".tmp").iterdir()) == []


def test_two_caches_on_one_directory_download_once(
    store: Any, object_store: ObjectStore, tmp_path: Path
) -> None:
    """Two trainers on one shared cache: the second takes the object's lock after the first and finds it."""
    obstore.put(store, "data/d.jsonl", b'{"text": "a"}\n' * 1000)
    first, second = s3_inputs.S3Cache(tmp_path / "hf"), s3_inputs.S3Cache(tmp_path / "hf")
    obj = s3_inputs._Object("data/d.jsonl", 14000, obstore.head(store, "data/d.jsonl")["e_tag"])
    results: list[s3_inputs.Fetched] = []
    with first.lock(object_store.bucket, obj.key):  # the first trainer is downloading this object
        other = threading.Thread(
            target=lambda: results.append(second.fetch(store, "dataset.path", uri(object_store, obj.key)))
        )
        other.start()
        other.join(0.5)
        assert other.is_alive()  # waits on the lock
        first.download(store, object_store.bucket, obj)
    other.join(10)
    assert results and results[0].downloaded_files == 0
    assert gets(object_store) == ["data/d.jsonl"]


@pytest.mark.parametrize(
    ("key", "words"),
    [
        ("data/missing.jsonl", "not found in the object store"),
        ("empty-prefix/", "no objects under this prefix"),
    ],
)
def test_missing_key_or_empty_prefix_is_a_config_error_naming_field_and_uri(
    store: Any, object_store: ObjectStore, tmp_path: Path, key: str, words: str
) -> None:
    cache = s3_inputs.S3Cache(tmp_path / "hf")
    with pytest.raises(ConfigError) as raised:
        cache.fetch(store, "dataset.path", uri(object_store, key))
    message = str(raised.value)
    assert message.startswith(f"dataset.path: s3://{object_store.bucket}/") and words in message, message


def test_missing_bucket_and_wrong_keys_are_config_errors(
    object_store: ObjectStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in object_store.env().items():
        monkeypatch.setenv(name, value)
    settings = ObjectStoreConfig(**object_store.config(""))
    cache = s3_inputs.S3Cache(tmp_path / "hf")
    missing = s3_inputs.open_input_store(settings, "no-such-bucket")
    with pytest.raises(
        ConfigError, match=r"model.name_or_path: s3://no-such-bucket/m/: not found.*NoSuchBucket"
    ):
        cache.fetch(missing, "model.name_or_path", s3_inputs.S3Uri("no-such-bucket", "m/"), directory=True)
    monkeypatch.setenv("FTO_S3_SECRET_ACCESS_KEY", "not-the-secret")
    denied = s3_inputs.open_input_store(settings, object_store.bucket)
    with pytest.raises(ConfigError, match=r"dataset.path: s3://.*access denied \(HTTP 403"):
        cache.fetch(denied, "dataset.path", uri(object_store, "data/"))


class _Failing(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(503)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_HEAD = do_GET

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def failing_server() -> Iterator[str]:
    """A real HTTP server on 127.0.0.1 that answers every request 503 (a store that is failing)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Failing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_unreachable_or_failing_store_is_transient(
    object_store: ObjectStore, failing_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in object_store.env().items():
        monkeypatch.setenv(name, value)
    cache = s3_inputs.S3Cache(tmp_path / "hf")
    settings = ObjectStoreConfig(**{**object_store.config(""), "endpoint": failing_server})
    failing = s3_inputs.open_input_store(settings, "b-1")
    with pytest.raises(s3_inputs.StoreUnavailable, match=r"dataset.path: s3://b-1/d.jsonl: .*HTTP 503"):
        cache.fetch(failing, "dataset.path", s3_inputs.S3Uri("b-1", "d.jsonl"))
    down = s3_inputs.open_input_store(ObjectStoreConfig(**object_store.config("")), object_store.bucket)
    object_store.stop()  # connection refused
    with pytest.raises(s3_inputs.StoreUnavailable, match="unreachable or failing"):
        cache.fetch(down, "model.name_or_path", uri(object_store, "m/"), directory=True)
    assert not (cache.root / object_store.bucket).exists()  # nothing half-made in the cache


def config(model: str, dataset: str, store: bool = True) -> TrainerConfig:
    document: dict[str, Any] = {"model": {"name_or_path": model}, "dataset": {"path": dataset}}
    if store:
        document["object_store"] = {"bucket": "ckpts", "endpoint": "http://127.0.0.1:1", "path_style": True}
    return TrainerConfig.model_validate(document)


def test_uri_checks_before_any_request() -> None:
    s3_inputs.check_uris(config("s3://models/tiny/", "s3://data/train.jsonl"))
    s3_inputs.check_uris(config("/m", "s3://data/dir/"))
    bad = [
        (config("s3://models/tiny/", "/d.jsonl", store=False), "model.name_or_path: s3://models/tiny/ needs"),
        (config("/m", "s3://data/d.jsonl", store=False), "dataset.path: s3://data/d.jsonl needs"),
        (config("/m", "s3://Bad_Bucket/d.jsonl"), "is not an S3 bucket name"),
        (config("/m", "s3://data/a/../d.jsonl"), "'..'"),
        (config("/m", "s3://data/d.xlsx"), "unsupported file type '.xlsx'"),
    ]
    for cfg, words in bad:
        with pytest.raises(ConfigError) as raised:
            s3_inputs.check_uris(cfg)
        assert words in str(raised.value)


def test_s3_inputs_are_not_the_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    only_s3 = config("s3://models/tiny/", "s3://data/train.jsonl")
    assert not needs_hub(only_s3)
    go_offline_when_local(only_s3)
    assert os.environ["HF_HUB_OFFLINE"] == "1"
