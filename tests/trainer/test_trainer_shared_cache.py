"""One Hugging Face cache shared by trainers that start together (issue 13, item 1: spec.cache.location
sharedClaim): real trainer processes with one HF_HOME against the local hub stand-in on 127.0.0.1.

huggingface_hub takes a lock per file (HF_HOME/hub/.locks/<repo>/<etag>.lock, filelock: flock(2)) around the
download, which goes to a process-unique temporary file renamed into place; a process that gets the lock after
another finished finds the blob and fetches nothing. Here the hub holds the model's weights download in flight
until both trainers have asked for that file, so the second one really waits on the lock while the first
downloads: both finish, every file of the model is sent once, and a third start sends no file bytes.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml
from trainer_harness import hub_env, start

from tests.harness import hub_repos
from tests.harness.hub_server import HubServer

WEIGHTS = "model.safetensors"


def tiny_from_hub_config(tiny: Path, work: Path) -> Path:
    config = yaml.safe_load((tiny / "trainer-config.yaml").read_text())
    config["model"]["name_or_path"] = hub_repos.TINY  # from the hub; the dataset stays a local file
    config["training"].update({"max_steps": 1, "save_steps": 1})
    path = work / "shared-cache.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def resolves(hub: HubServer, method: str, filename: str) -> int:
    wanted = (hub_repos.TINY, "resolve", method, filename)
    return sum(1 for r in list(hub.requests) if (r.repo_id, r.action, r.method, r.filename) == wanted)


@pytest.mark.slow
def test_trainers_starting_together_on_one_cache_download_each_file_once(tiny: Path, work: Path) -> None:
    hf_home = work / "shared-hf-home"
    with HubServer(hub_repos.hub_root((hub_repos.TINY,))) as hub:
        sizes = {name: entry.size for name, entry in hub.repo(hub_repos.TINY).files.items()}
        release = hub.hold(hub_repos.TINY, WEIGHTS)
        config = tiny_from_hub_config(tiny, work)
        env = hub_env(hf_home, hub.url)
        first = start(config, work / "a", env=env, tag="a")
        second = start(config, work / "b", env=env, tag="b")
        try:
            # Both asked for the weights (their HEAD comes before the lock) while one download is held.
            deadline = time.monotonic() + 150
            while not (resolves(hub, "GET", WEIGHTS) >= 1 and resolves(hub, "HEAD", WEIGHTS) >= 2):
                assert time.monotonic() < deadline, (first.tail(), second.tail())
                running = first.popen.poll() is None and second.popen.poll() is None
                assert running, (first.tail(), second.tail())
                time.sleep(0.2)
            time.sleep(2.0)  # the later one is now waiting on the lock, not downloading
            overlapped = resolves(hub, "GET", WEIGHTS)
        finally:
            release.set()
        assert first.wait(180) == 0, first.tail()
        assert second.wait(180) == 0, second.tail()
        together = hub.traffic(hub_repos.TINY)

        third = start(config, work / "c", env=env, tag="c")
        assert third.wait(180) == 0, third.tail()
        after_third = hub.traffic(hub_repos.TINY)

    assert overlapped == 1, "the second trainer downloaded the weights while the first one was downloading"
    assert together.by_action["resolve GET"] == len(together.file_bytes), together.summary()  # one GET a file
    once = {name: sizes[name] for name in together.file_bytes}
    assert dict(together.file_bytes) == once, together.summary()
    assert together.file_bytes[WEIGHTS] == sizes[WEIGHTS]
    assert after_third.total_file_bytes == together.total_file_bytes, "the third start downloaded files"
    assert after_third.by_action["resolve GET"] == together.by_action["resolve GET"]
    blobs = list((hf_home / "hub" / "models--acme--tiny-gpt2" / "blobs").iterdir())
    assert not [b for b in blobs if b.name.endswith(".incomplete")], blobs  # no temporary file left behind
    print(
        f"\ntwo trainers together: {together.summary()}"
        f"\nthird start adds: requests {after_third.requests - together.requests}, "
        f"HEADs {after_third.resolve_heads - together.resolve_heads}, file bytes 0"
    )
