"""The local hub stand-in (tests/harness/hub_server.py) as huggingface_hub itself reads it: a real server on
127.0.0.1 serving a small repo from a temporary folder, asked through HfApi and hf_hub_download (no torch)."""

from __future__ import annotations

import os
import urllib.request
from pathlib import Path
from unittest import mock

import pytest
from huggingface_hub import HfApi, get_hf_file_metadata, hf_hub_download, hf_hub_url
from huggingface_hub.errors import (
    GatedRepoError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from tests.harness.hub_server import Failure, HubServer, parse_request

REPO = "acme/small"


@pytest.fixture
def repo_dir(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    (root / "sub").mkdir(parents=True)
    (root / "config.json").write_text('{"model_type": "gpt2"}')
    (root / "sub" / "notes.txt").write_text("hello\n")
    (root / "model.safetensors").write_bytes(bytes(range(256)) * 64)  # an "LFS" file by its suffix
    return root


@pytest.fixture
def hub(repo_dir: Path, tmp_path: Path):
    with (
        HubServer() as server,
        mock.patch.dict(os.environ, {"HF_HUB_DISABLE_TELEMETRY": "1", "NO_PROXY": "127.0.0.1"}),
    ):
        server.add_repo(repo_dir, REPO)
        server.add_repo(repo_dir / "sub", "acme/data", "dataset")
        yield server


def api(hub: HubServer) -> HfApi:
    return HfApi(endpoint=hub.url, token=False)


def test_requests_are_parsed_with_quoted_revisions() -> None:
    r = parse_request("GET", "/api/models/gpt2/tree/refs%2Fpr%2F1/a%20b?recursive=true")
    assert (r.repo_type, r.repo_id, r.action, r.revision, r.filename) == (
        "model",
        "gpt2",
        "tree",
        "refs/pr/1",
        "a b",
    )
    r = parse_request("HEAD", "/datasets/Abirate/english_quotes/resolve/main/data/x.jsonl")
    assert (r.repo_type, r.repo_id, r.action, r.revision, r.filename) == (
        "dataset",
        "Abirate/english_quotes",
        "resolve",
        "main",
        "data/x.jsonl",
    )
    assert parse_request("GET", "/api/datasets/acme/d").action == "info"
    assert parse_request("GET", "/api/whoami-v2").repo_id is None


def test_info_tree_and_paths_info(hub: HubServer, repo_dir: Path) -> None:
    repo = hub.repo(REPO)
    info = api(hub).model_info(REPO)
    assert info.sha == repo.commit and len(repo.commit) == 40
    assert sorted(s.rfilename for s in info.siblings or []) == [
        "config.json",
        "model.safetensors",
        "sub/notes.txt",
    ]
    (weights,) = [s for s in info.siblings or [] if s.rfilename == "model.safetensors"]
    assert weights.lfs is not None and weights.lfs.size == 256 * 64
    assert api(hub).model_info(REPO, revision=repo.commit).sha == repo.commit
    top = {e.path: type(e).__name__ for e in api(hub).list_repo_tree(REPO)}
    assert top == {"sub": "RepoFolder", "config.json": "RepoFile", "model.safetensors": "RepoFile"}
    assert [
        e.path for e in api(hub).list_repo_tree(REPO, recursive=True) if type(e).__name__ == "RepoFile"
    ] == [
        "config.json",
        "model.safetensors",
        "sub/notes.txt",
    ]
    assert [e.path for e in api(hub).list_repo_tree(REPO, "sub")] == ["sub/notes.txt"]
    with pytest.raises(RemoteEntryNotFoundError):
        list(api(hub).list_repo_tree(REPO, "nope"))
    found = api(hub).get_paths_info(REPO, ["config.json", "sub", "missing.txt"])
    assert [(e.path, type(e).__name__) for e in found] == [("config.json", "RepoFile"), ("sub", "RepoFolder")]
    assert api(hub).dataset_info("acme/data").siblings[0].rfilename == "notes.txt"  # type: ignore[index]


def test_resolve_headers_download_range_and_counters(hub: HubServer, tmp_path: Path) -> None:
    repo = hub.repo(REPO)
    meta = get_hf_file_metadata(hf_hub_url(REPO, "model.safetensors", endpoint=hub.url), token=False)
    assert meta.commit_hash == repo.commit and meta.size == 256 * 64
    assert meta.etag == repo.files["model.safetensors"].sha256  # X-Linked-Etag: the LFS sha256
    small = get_hf_file_metadata(hf_hub_url(REPO, "config.json", endpoint=hub.url), token=False)
    assert small.etag == repo.files["config.json"].blob_id  # git blob id, as the hub's ETag
    assert meta.xet_file_data is None  # plain HTTP downloads

    cache = tmp_path / "cache"
    path = hf_hub_download(REPO, "model.safetensors", cache_dir=cache, endpoint=hub.url, token=False)
    assert Path(path).read_bytes() == bytes(range(256)) * 64
    traffic = hub.traffic(REPO)
    assert traffic.file_bytes["model.safetensors"] == 256 * 64 and traffic.by_action["resolve GET"] == 1

    again = hf_hub_download(REPO, "model.safetensors", cache_dir=cache, endpoint=hub.url, token=False)
    assert again == path and hub.traffic(REPO).total_file_bytes == 256 * 64  # a HEAD, no new bytes

    request = urllib.request.Request(
        f"{hub.url}/{REPO}/resolve/main/model.safetensors", headers={"Range": "bytes=10-19"}
    )
    with urllib.request.urlopen(request) as response:
        assert response.status == 206 and response.read() == (bytes(range(256)) * 64)[10:20]
        assert response.headers["Content-Range"] == f"bytes 10-19/{256 * 64}"
    assert hub.traffic(REPO).file_bytes["model.safetensors"] == 256 * 64 + 10


def test_revisions_and_missing_things(hub: HubServer, tmp_path: Path) -> None:
    commit = hub.repo(REPO).commit
    path = hf_hub_download(
        REPO, "config.json", revision=commit, cache_dir=tmp_path, endpoint=hub.url, token=False
    )
    assert f"snapshots/{commit}/" in path
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(REPO, "config.json", revision="v9", cache_dir=tmp_path, endpoint=hub.url, token=False)
    with pytest.raises(RemoteEntryNotFoundError):
        hf_hub_download(REPO, "nope.json", cache_dir=tmp_path, endpoint=hub.url, token=False)
    with pytest.raises(RepositoryNotFoundError):
        api(hub).model_info("acme/unknown")


def test_failures_switch_on_and_off_while_running(hub: HubServer, tmp_path: Path) -> None:
    hub.fail(REPO, Failure.gated(403))
    with pytest.raises(GatedRepoError):
        api(hub).model_info(REPO)
    hub.clear(REPO)
    assert api(hub).model_info(REPO).sha == hub.repo(REPO).commit


def test_a_held_download_stays_in_flight_until_released(hub: HubServer, repo_dir: Path) -> None:
    import threading
    import time

    release = hub.hold(REPO, "model.safetensors")
    url = f"{hub.url}/{REPO}/resolve/main/model.safetensors"
    got: dict[str, object] = {}

    def download() -> None:
        with urllib.request.urlopen(url, timeout=30) as response:
            got["first"] = response.read(1)  # the trickle: a byte a second while held
            got["first_at"] = time.monotonic()
            got["rest"] = response.read()
            got["done_at"] = time.monotonic()

    client = threading.Thread(target=download)
    client.start()
    time.sleep(2.5)
    assert "first" in got and "rest" not in got  # headers and a byte came, the rest waits
    released_at = time.monotonic()
    release.set()
    client.join(10)
    data = (repo_dir / "model.safetensors").read_bytes()
    assert got["first"] + got["rest"] == data  # type: ignore[operator]
    assert got["done_at"] >= released_at  # type: ignore[operator]
    assert hub.traffic(REPO).file_bytes["model.safetensors"] == len(data)  # counted once, whole
    # other files are not held
    with urllib.request.urlopen(f"{hub.url}/{REPO}/resolve/main/config.json", timeout=5) as response:
        assert response.read() == b'{"model_type": "gpt2"}'
