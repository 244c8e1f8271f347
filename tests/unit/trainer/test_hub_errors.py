"""Which hub failures are configuration errors (78) and which are transient (exit 1): the pure classification,
on huggingface_hub's real exceptions built from real responses by its own `hf_raise_for_status`, wrapped the
way transformers wraps them. The same paths run end to end in tests/trainer/test_trainer_hub.py."""

from __future__ import annotations

import httpx2
import pytest
from finetune_trainer.build import ConfigError, HubUnavailable, classify_hub_error
from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled
from huggingface_hub.utils import hf_raise_for_status

URL = "http://127.0.0.1:1/acme/tiny/resolve/main/config.json"


def from_response(status: int, code: str | None = None) -> Exception:
    headers = {"X-Error-Code": code} if code else {}
    response = httpx2.Response(status, headers=headers, request=httpx2.Request("HEAD", URL))
    try:
        hf_raise_for_status(response)
    except Exception as error:
        return error
    raise AssertionError("no error raised")


def wrapped_like_transformers(cause: Exception) -> Exception:
    """transformers: OSError("We couldn't connect…") from LocalEntryNotFoundError(…) from the HEAD error."""
    try:
        try:
            try:
                raise cause
            except Exception as head_error:
                raise LocalEntryNotFoundError("cannot find the requested files") from head_error
        except LocalEntryNotFoundError as missing:
            raise OSError("We couldn't connect to 'http://127.0.0.1:1' to load the files") from missing
    except OSError as error:
        return error


@pytest.mark.parametrize(
    ("status", "code"),
    [(404, "RepoNotFound"), (404, "RevisionNotFound"), (401, "GatedRepo"), (403, "GatedRepo"), (401, None)],
)
def test_not_found_gated_or_unauthorized_is_a_config_error(status: int, code: str | None) -> None:
    error = from_response(status, code)
    for seen in (error, wrapped_like_transformers(error)):
        classified = classify_hub_error(seen, "model.name_or_path", "acme/tiny")
        assert isinstance(classified, ConfigError), (status, code, seen)
        assert str(classified).startswith("model.name_or_path: cannot load 'acme/tiny'")


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
def test_overload_and_server_errors_are_transient(status: int) -> None:
    classified = classify_hub_error(
        wrapped_like_transformers(from_response(status)), "model.name_or_path", "acme/tiny"
    )
    assert isinstance(classified, HubUnavailable) and f"HTTP {status}" in str(classified)


@pytest.mark.parametrize(
    "cause",
    [httpx2.ConnectError("connection refused"), httpx2.ReadTimeout("timed out"), ConnectionResetError()],
)
def test_network_errors_are_transient(cause: Exception) -> None:
    classified = classify_hub_error(wrapped_like_transformers(cause), "dataset.name", "acme/data")
    assert isinstance(classified, HubUnavailable) and type(cause).__name__ in str(classified)


def test_offline_mode_without_a_cached_copy_is_a_config_error() -> None:
    error = wrapped_like_transformers(OfflineModeIsEnabled("offline"))  # a ConnectionError, yet not transient
    assert isinstance(classify_hub_error(error, "model.name_or_path", "acme/tiny"), ConfigError)


def test_other_errors_are_left_alone() -> None:
    error = RuntimeError("something else")
    assert classify_hub_error(error, "model.name_or_path", "acme/tiny") is error
