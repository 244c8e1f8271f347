"""The base model and the dataset from the object store (issue 14, item 4), against a real S3 server (Versity
Gateway, tests/harness/object_store.py) on 127.0.0.1: real trainer processes, a real SIGTERM, the tiny model.

Which bytes reached the trainer is read from the server's own access log (ObjectStore.requests: one line per
request the server served), not from the trainer's account of itself."""

from __future__ import annotations

import signal
from pathlib import Path

import obstore
import pytest
import yaml
from finetune_api.trainer_config import ObjectStoreConfig
from trainer_harness import MAX_STEPS, Reference, assert_same_adapter, hub_env, run, start

from tests.harness.object_store import ObjectStore

pytestmark = pytest.mark.slow

MODEL_PREFIX = "models/tiny/"
DATA_KEY = "data/train.jsonl"


def upload_inputs(ref: Reference, store: ObjectStore) -> set[str]:
    """The tiny model's directory and its data file, put through the S3 API (the server records ETags)."""
    from obstore.store import S3Store

    settings = ObjectStoreConfig(**store.config(""))
    client = S3Store(
        store.bucket,
        config={
            "access_key_id": store.access_key,
            "secret_access_key": store.secret_key,
            "endpoint": store.endpoint,
            "region": settings.region,
            "virtual_hosted_style_request": False,
        },
        client_options={"allow_http": True},
    )
    keys = set()
    model_dir = ref.tiny / "model"
    for path in sorted(model_dir.rglob("*")):
        if path.is_file():
            key = MODEL_PREFIX + path.relative_to(model_dir).as_posix()
            obstore.put(client, key, path.read_bytes())
            keys.add(key)
    obstore.put(client, DATA_KEY, (ref.tiny / "data.jsonl").read_bytes())
    return keys | {DATA_KEY}


def input_gets(store: ObjectStore, since: int, keys: set[str]) -> list[str]:
    return [
        k for op, k, status in store.requests()[since:] if op == "GetObject" and status == 200 and k in keys
    ]


def test_model_and_dataset_from_the_store_are_fetched_once_and_a_restart_downloads_nothing(
    reference: Reference, work: Path, object_store: ObjectStore
) -> None:
    keys = upload_inputs(reference, object_store)
    config = yaml.safe_load(reference.config.read_text())
    config["model"]["name_or_path"] = f"s3://{object_store.bucket}/{MODEL_PREFIX}"
    config["dataset"]["path"] = f"s3://{object_store.bucket}/{DATA_KEY}"
    config["object_store"] = object_store.config("runs/s3-inputs")
    path = work / "config-s3-inputs.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    # Online as far as the environment goes, with the hub at a closed loopback port: every input is in the
    # store, so the trainer goes offline by itself and never asks it (a request would fail the load).
    env = {**hub_env(work / "hf", "http://127.0.0.1:1"), **object_store.env()}
    out = work / "out"

    proc = start(path, out, env={**env, "FTO_TEST_STEP_SLEEP_SECONDS": "0.05"}, tag="first")
    proc.wait_event(lambda e: e.get("event") == "checkpoint_committed" and e["step"] >= 10)
    proc.signal(signal.SIGTERM)
    assert proc.wait() == 75, proc.tail()
    assert sorted(input_gets(object_store, 0, keys)) == sorted(keys)  # each input object sent once

    seen = len(object_store.requests())
    again = run(path, out, "--resume", "auto", env=env, tag="second")
    assert again.popen.returncode == 0, again.tail()
    assert input_gets(object_store, seen, keys) == [], "the restart downloaded an input again"
    served = [(op, key) for op, key, _ in object_store.requests()[seen:] if key in keys]
    assert ("HeadObject", DATA_KEY) in served  # it did look: the ETags were compared, not assumed
    assert again.termination()["reason"] == "Completed"
    # The same bytes as the local files: the same adapter as the uninterrupted local run.
    assert max(again.losses()) == MAX_STEPS
    assert_same_adapter(reference.output_dir, out)


def test_a_missing_input_is_a_config_error_and_a_store_that_is_down_is_retried(
    work: Path, object_store: ObjectStore
) -> None:
    """Both found at start, before torch is imported (a second or two each): exit 78 naming the field and
    the URI for what no retry fixes; exit 1 (the operator retries with backoff) for a store that is down."""
    config = {
        "kind": "TrainerConfig",
        "model": {"name_or_path": f"s3://{object_store.bucket}/models/never-uploaded/"},
        "dataset": {"examples": [{"text": "hello"}]},
        "object_store": object_store.config("runs/errors"),
    }
    path = work / "config-missing.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    env = {**hub_env(work / "hf", "http://127.0.0.1:1"), **object_store.env()}
    # --resume never: the store is not asked for checkpoints (with auto it is retried for 60 s at start).
    missing = run(path, work / "out", "--resume", "never", env=env, tag="missing")
    assert missing.popen.returncode == 78, missing.tail()
    uri = config["model"]["name_or_path"]
    expected = f"config error: model.name_or_path: {uri}: no objects under this prefix"
    assert expected in missing.tail(), missing.tail()
    assert not (work / "out").exists()  # a config error leaves DIR alone

    object_store.stop()
    down = run(path, work / "out", "--resume", "never", env=env, tag="down")
    assert down.popen.returncode == 1, down.tail()
    term = down.termination()
    assert term["reason"] == "Error" and "unreachable or failing" in term["message"], term
    assert f"model.name_or_path: {uri}" in term["message"], term
