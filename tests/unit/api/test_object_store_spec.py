"""spec.checkpoint.objectStore (issue 14): validation messages and what the trainer config gets."""

from __future__ import annotations

from typing import Any

import pytest
from finetune_api import InvalidManifest, parse_job, trainer_config_from_job


def job(store: dict[str, Any], uid: str | None = "u-1") -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": "demo", "namespace": "ml"}
    if uid:
        metadata["uid"] = uid
    return {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": metadata,
        "spec": {
            "model": {"name_or_path": "/m"},
            "dataset": {"path": "/d.jsonl"},
            "checkpoint": {"objectStore": store},
        },
    }


STORE = {"bucket": "ckpts", "credentials": {"secretName": "s3-keys"}}


def test_store_renders_into_the_trainer_config_with_the_run_prefix() -> None:
    parsed = parse_job(
        job({**STORE, "prefix": "teams/nlp", "endpoint": "http://10.0.0.5:7070", "pathStyle": True})
    )
    config = trainer_config_from_job(parsed)
    assert config.object_store is not None
    assert config.object_store.model_dump() == {
        "bucket": "ckpts",
        "prefix": "teams/nlp/runs/u-1",
        "endpoint": "http://10.0.0.5:7070",
        "region": "us-east-1",
        "path_style": True,
    }
    creds = parsed.spec.checkpoint.object_store.credentials  # type: ignore[union-attr]
    assert (creds.access_key_id_key, creds.secret_access_key_key) == ("accessKeyId", "secretAccessKey")


def test_without_a_store_the_trainer_config_has_none() -> None:
    parsed = parse_job(job(STORE))
    parsed.spec.checkpoint.object_store = None
    assert trainer_config_from_job(parsed).object_store is None


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"bucket": "My_Bucket"}, "bucket", "S3 bucket name"),
        ({"bucket": "ab"}, "bucket", "S3 bucket name"),
        ({"prefix": "/abs"}, "prefix", "without a leading or trailing '/'"),
        ({"prefix": "a/../b"}, "prefix", "'..'"),
        ({"endpoint": "s3.example.com"}, "endpoint", "http:// or https:// URL"),
        ({"endpoint": "http://host:9000/path"}, "endpoint", "no path"),
        ({"credentials": {"secretName": "Bad_Name"}}, "credentials.secretName", "DNS subdomain"),
    ],
)
def test_bad_store_fields_name_the_field_and_say_why(change: dict[str, Any], field: str, words: str) -> None:
    with pytest.raises(InvalidManifest) as raised:
        parse_job(job({**STORE, **change}))
    lines = [e for e in raised.value.errors if e.startswith(f"spec.checkpoint.objectStore.{field}:")]
    assert lines and words in lines[0], raised.value.errors


def test_credentials_are_required() -> None:
    with pytest.raises(InvalidManifest) as raised:
        parse_job(job({"bucket": "ckpts"}))
    assert any(e.startswith("spec.checkpoint.objectStore.credentials:") for e in raised.value.errors)


@pytest.mark.parametrize(
    ("section", "key", "value", "field"),
    [
        ("model", "name_or_path", "s3://models/tiny/", "spec.model.name_or_path"),
        ("dataset", "path", "s3://data/train.jsonl", "spec.dataset.path"),
    ],
)
def test_s3_inputs_need_the_object_store_and_reach_the_trainer_as_given(
    section: str, key: str, value: str, field: str
) -> None:
    """An s3:// model or dataset is read with checkpoint.objectStore's endpoint and key pair: without one the
    job is refused naming the field; with one the URI reaches the trainer config unchanged."""
    document = job(STORE)
    document["spec"][section][key] = value
    config = trainer_config_from_job(parse_job(document))
    assert getattr(getattr(config, section), key) == value
    del document["spec"]["checkpoint"]
    with pytest.raises(InvalidManifest) as raised:
        parse_job(document)
    assert [e for e in raised.value.errors if e.startswith(f"{field}: an s3:// ")], raised.value.errors
