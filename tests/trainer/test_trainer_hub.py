"""A hub that cannot be reached is not a configuration error (issue 10, item 6).

The trainer runs in a real process with HF_ENDPOINT pointing at a local hub stand-in on 127.0.0.1
(tests/harness/hub_server.py) or at a closed loopback port, HF_HUB_OFFLINE unset and an empty cache. Not
found, revision not found and gated/unauthorized are configuration errors (78: the job fails at once);
refused connections, 429 and 5xx are transient (exit 1: the operator retries with backoff).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from trainer_harness import base_env, run

from tests.harness.hub_server import Failure, HubServer, closed_loopback_port

REPO_ID = "acme/tiny-gpt2"


def hub_env(work: Path, endpoint: str) -> dict[str, str]:
    env = base_env(HF_ENDPOINT=endpoint, HF_HOME=str(work / "hf-home"), NO_PROXY="127.0.0.1,localhost")
    for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN"):
        env.pop(key, None)
    for key in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        env.pop(key, None)
    return env


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
        proc = run(hub_model_config(tiny, work), work / "out", env=hub_env(work, hub.url), tag="permanent")
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
        proc = run(hub_model_config(tiny, work), work / "out", env=hub_env(work, hub.url), tag="transient")
        asked = hub.requests_for(REPO_ID)
    assert proc.popen.returncode == 1, proc.tail()
    term = proc.termination()
    assert term["reason"] == "Error", term
    assert f"HTTP {failure.status}" in term["message"] and "model.name_or_path" in term["message"], term
    assert asked > 1  # huggingface_hub retried before giving up; the operator's backoff comes on top


@pytest.mark.slow
def test_unreachable_hub_is_transient(tiny: Path, work: Path) -> None:
    endpoint = f"http://127.0.0.1:{closed_loopback_port()}"
    proc = run(hub_model_config(tiny, work), work / "out", env=hub_env(work, endpoint), tag="closed")
    assert proc.popen.returncode == 1, proc.tail()
    term = proc.termination()
    assert term["reason"] == "Error" and "unreachable" in term["message"], term
    assert "ConnectError" in term["message"], term
