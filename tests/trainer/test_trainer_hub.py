"""The trainer against a hub: the local hub stand-in (tests/harness/hub_server.py) on 127.0.0.1, serving the
repos tests/harness/hub_repos.py builds, or failing on demand, or a closed loopback port. Real processes,
HF_HUB_OFFLINE unset, HF_HOME in the test's folder.

- Loading (issue 13, item 2): the ~500 MB `gpt2` and `Abirate/english_quotes` (examples/job.yaml's names)
  are downloaded through HF_ENDPOINT; a second start with the same HF_HOME downloads no file again (only
  revalidation HEADs); `model.revision` pinned to a commit resolves, an unknown one is a configuration error.
- Failures (issue 10, item 6): not found, revision not found and gated/unauthorized are configuration errors
  (78: the job fails at once); refused connections, 429 and 5xx are transient (exit 1: the operator retries
  with backoff).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from trainer_harness import hub_env, run

from tests.harness import hub_repos
from tests.harness.hub_server import Failure, HubServer, closed_loopback_port

REPO_ID = "acme/tiny-gpt2"


def hub_model_config(tiny: Path, work: Path) -> Path:
    config = yaml.safe_load((tiny / "trainer-config.yaml").read_text())
    config["model"]["name_or_path"] = REPO_ID  # a hub id; the dataset stays a local file
    config["training"].update({"max_steps": 2, "save_steps": 1})
    path = work / "hub.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.slow
@pytest.mark.parametrize(
    "failure",
    [Failure.repo_not_found(), Failure.revision_not_found(), Failure.gated(401)],
    ids=["repo-not-found", "revision-not-found", "gated-401"],  # 403 and 401 without a code: unit tests
)
def test_repo_or_revision_not_found_or_gated_is_a_config_error(tiny: Path, work: Path, failure: Failure):
    with HubServer() as hub:
        hub.fail(REPO_ID, failure)
        proc = run(
            hub_model_config(tiny, work),
            work / "out",
            env=hub_env(work / "hf-home", hub.url),
            tag="permanent",
        )
        asked = hub.requests_for(REPO_ID)
    assert proc.popen.returncode == 78, proc.tail()
    term = proc.termination()
    assert term["reason"] == "ConfigError" and term["message"].startswith("model.name_or_path: "), term
    assert REPO_ID in term["message"]
    assert asked >= 1  # it really asked the hub
    assert not (work / "out").exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    "failure",
    [Failure.rate_limited(), Failure.server_error(503)],
    ids=["429", "503"],  # 408, 500, 502, 504: tests/unit/trainer/test_hub_errors.py
)
def test_hub_failing_with_429_or_5xx_is_transient(tiny: Path, work: Path, failure: Failure) -> None:
    with HubServer() as hub:
        hub.fail(REPO_ID, failure)
        proc = run(
            hub_model_config(tiny, work),
            work / "out",
            env=hub_env(work / "hf-home", hub.url),
            tag="transient",
        )
        asked = hub.requests_for(REPO_ID)
    assert proc.popen.returncode == 1, proc.tail()
    term = proc.termination()
    assert term["reason"] == "Error", term
    assert f"HTTP {failure.status}" in term["message"] and "model.name_or_path" in term["message"], term
    assert asked > 1  # huggingface_hub retried before giving up; the operator's backoff comes on top


@pytest.mark.slow
def test_unreachable_hub_is_transient(tiny: Path, work: Path) -> None:
    endpoint = f"http://127.0.0.1:{closed_loopback_port()}"
    proc = run(
        hub_model_config(tiny, work), work / "out", env=hub_env(work / "hf-home", endpoint), tag="closed"
    )
    assert proc.popen.returncode == 1, proc.tail()
    term = proc.termination()
    assert term["reason"] == "Error" and "unreachable" in term["message"], term
    assert "ConnectError" in term["message"], term


# ----------------------------------------------------------------------- serving real repos (issue 13)


@pytest.fixture(scope="module")
def hub_tree() -> Path:
    """gpt2, Abirate/english_quotes and acme/tiny-gpt2, built once per machine (cached; ~20 s cold)."""
    return hub_repos.hub_root()


def job_yaml_config(work: Path, output_name: str, max_steps: int) -> Path:
    """examples/job.yaml's model, dataset and LoRA (hub_repos.example_trainer_config) as a file."""
    config = hub_repos.example_trainer_config(max_steps)
    path = work / f"{output_name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.slow
def test_gpt2_and_quotes_come_from_the_hub_once(work: Path, hub_tree: Path) -> None:
    """First start downloads every file of gpt2 (≥ 100 MB) and the quotes; a second start with the same
    HF_HOME (what a restarted pod with the cache on its volume does) sends no file bytes again."""
    with HubServer(hub_tree) as hub:
        env = hub_env(work / "hf-home", hub.url)
        model_files = hub.repo(hub_repos.GPT2).files
        model_size = sum(entry.size for entry in model_files.values())
        assert model_files["model.safetensors"].size >= 100_000_000

        first = run(job_yaml_config(work, "first", 1), work / "first", env=env, tag="first")
        assert first.popen.returncode == 0, first.tail()
        model, data = hub.traffic(hub_repos.GPT2), hub.traffic(hub_repos.ENGLISH_QUOTES)
        assert model.file_bytes["model.safetensors"] == model_files["model.safetensors"].size
        assert model_size >= model.total_file_bytes >= model_files["model.safetensors"].size
        assert (
            data.file_bytes["quotes.jsonl"]
            == hub.repo(hub_repos.ENGLISH_QUOTES, "dataset").files["quotes.jsonl"].size
        )
        assert (work / "first" / "final" / "adapter_model.safetensors").is_file()

        second = run(job_yaml_config(work, "second", 1), work / "second", env=env, tag="second")
        assert second.popen.returncode == 0, second.tail()
        model_again, data_again = hub.traffic(hub_repos.GPT2), hub.traffic(hub_repos.ENGLISH_QUOTES)
    assert model_again.total_file_bytes == model.total_file_bytes, "the second start downloaded model files"
    assert data_again.total_file_bytes == data.total_file_bytes, "the second start downloaded dataset files"
    assert model_again.by_action["resolve GET"] == model.by_action["resolve GET"]
    print(
        f"\nfirst start: model {model.summary()}, dataset {data.summary()}"
        f"\nsecond start adds: model HEADs {model_again.resolve_heads - model.resolve_heads}, "
        f"requests {model_again.requests - model.requests}; dataset HEADs "
        f"{data_again.resolve_heads - data.resolve_heads}, requests {data_again.requests - data.requests}"
    )


@pytest.mark.slow
def test_model_revision_pinned_to_a_commit_resolves(tiny: Path, work: Path, hub_tree: Path) -> None:
    with HubServer(hub_tree) as hub:
        commit = hub.repo(REPO_ID).commit
        config = yaml.safe_load(hub_model_config(tiny, work).read_text())
        config["model"]["revision"] = commit
        config["training"].update({"max_steps": 1})
        path = work / "pinned.yaml"
        path.write_text(yaml.safe_dump(config))
        proc = run(path, work / "out", env=hub_env(work / "hf-home", hub.url), tag="pinned")
        asked = [r for r in hub.requests if r.repo_id == REPO_ID and r.action == "resolve"]
    assert proc.popen.returncode == 0, proc.tail()
    downloads = [r for r in asked if r.method == "GET"]
    assert downloads and {r.revision for r in downloads} == {commit}, downloads
    # Nothing at another revision: peft's save_pretrained would ask, on every save, whether config.json exists
    # at the base model's default revision (to detect a resized vocabulary), ignoring the pin; the trainer
    # decides that once, without the network, so saves (and final/) never touch the hub.
    unpinned = {(r.method, r.filename) for r in asked if r.revision != commit}
    assert not unpinned, unpinned


@pytest.mark.slow
def test_unknown_model_revision_is_a_config_error(tiny: Path, work: Path, hub_tree: Path) -> None:
    """The server's own revision check (not a configured failure): `v9` is neither main nor the commit."""
    with HubServer(hub_tree) as hub:
        config = yaml.safe_load(hub_model_config(tiny, work).read_text())
        config["model"]["revision"] = "v9"
        path = work / "unknown.yaml"
        path.write_text(yaml.safe_dump(config))
        proc = run(path, work / "out", env=hub_env(work / "hf-home", hub.url), tag="unknown-revision")
    assert proc.popen.returncode == 78, proc.tail()
    term = proc.termination()
    assert term["reason"] == "ConfigError" and term["message"].startswith("model.name_or_path: "), term
