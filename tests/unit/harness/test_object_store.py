"""The S3 test server (tests/harness/object_store.py): a real Versity Gateway on 127.0.0.1, stoppable."""

from __future__ import annotations

import os

import obstore
import pytest
from finetune_api.trainer_config import ObjectStoreConfig
from finetune_trainer import remote

from tests.harness.object_store import ObjectStore


def test_server_stores_objects_with_their_checksum_and_can_be_down(
    object_store: ObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in object_store.env().items():
        monkeypatch.setenv(name, value)
    store = remote.open_store(ObjectStoreConfig(**object_store.config("p")))
    put = obstore.put(store, "p/a.bin", b"hello")
    head = obstore.head(store, "p/a.bin")
    assert head["size"] == 5 and head["e_tag"] == put["e_tag"]
    assert object_store.objects() == {"p/a.bin": 5}  # what reached the server's disk
    # The SHA-256 the client sent was checked and kept by the server.
    assert b'"SHA256":"LPJNul' in os.getxattr(object_store.bucket_dir / "p" / "a.bin", "user.checksums")
    object_store.stop()
    with pytest.raises(Exception, match="error sending request"):
        obstore.head(store, "p/a.bin")
    object_store.start()
    assert bytes(obstore.get(store, "p/a.bin").bytes()) == b"hello"


def test_wrong_credentials_are_refused(object_store: ObjectStore, monkeypatch: pytest.MonkeyPatch) -> None:
    env = object_store.env()
    monkeypatch.setenv(remote.S3_ACCESS_KEY_ID_ENV, env[remote.S3_ACCESS_KEY_ID_ENV])
    monkeypatch.setenv(remote.S3_SECRET_ACCESS_KEY_ENV, "wrong")
    store = remote.open_store(ObjectStoreConfig(**object_store.config("p")))
    with pytest.raises(Exception, match=r"403|SignatureDoesNotMatch|Forbidden"):
        obstore.put(store, "p/a.bin", b"x")
