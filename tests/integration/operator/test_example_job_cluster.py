"""examples/job.yaml runs here as written (issue 12's must-show), its hub model and dataset served by the
local hub stand-in (issue 13, item 2) on the node address, which the pods reach:

    FTO_CLUSTER=existing .venv/bin/python -m pytest tests/integration/operator/test_example_job_cluster.py

Only what this machine forces is changed, each override below says why. The job must reach Succeeded with a
LoRA adapter for GPT-2's attention (768 wide) on its volume, and the hub's counters must show that the pod
downloaded the ~500 MB `gpt2` weights and the quotes.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.harness import hub_repos
from tests.harness.hub_server import HubServer
from tests.integration.operator.conftest import LocalProvider, OperatorProcess
from tests.scenarios import operator_scenarios as sc

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.timeout(900)]

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "job.yaml"
NODE_ADDRESS = "10.89.0.1"  # hack/cluster/node.sh NODE_IP: the host's end of the node's veth, pods reach it
MAX_STEPS = 4


def example_as_run_here(hub_url: str, image: str) -> dict[str, Any]:
    job = yaml.safe_load(EXAMPLE.read_text())
    original = copy.deepcopy(job)
    spec = job["spec"]
    # No GPU on this machine: train on the CPU.
    spec["resources"]["gpus"] = 0
    # The node has 2 CPUs and 24 GiB, shared with other tests' pods: 1 CPU and 4 GiB fit, and hold GPT-2 (124M
    # parameters, float32) with LoRA at batch 2 x 128 tokens.
    spec["resources"]["cpu"] = "1"
    spec["resources"]["memory"] = "4Gi"
    # Two epochs of the quotes are 3000 steps, hours on one CPU: a few steps (two checkpoints) end in minutes.
    spec["training"]["max_steps"] = MAX_STEPS
    # No internet: the hub is the local stand-in on the node address.
    spec["env"] = [{"name": "HF_ENDPOINT", "value": hub_url}]
    # No registry: the trainer image built from this checkout is already in the node.
    spec["image"] = image
    spec["imagePullPolicy"] = "Never"
    # The volume holds the 500 MB hub cache: remove it with the job on this shared disk.
    spec["checkpoint"]["deleteWithJob"] = True
    # Nothing else differs from the example: model, dataset, LoRA and the rest of training as written.
    for section in ("model", "dataset", "lora"):
        assert spec[section] == original["spec"][section]
    assert {k: v for k, v in spec["training"].items() if k != "max_steps"} == original["spec"]["training"]
    return job


def test_example_job_runs_with_the_local_hub(provider: LocalProvider, operator: OperatorProcess) -> None:
    from safetensors.numpy import load

    root = hub_repos.hub_root((hub_repos.GPT2, hub_repos.ENGLISH_QUOTES))
    with HubServer(root, host=NODE_ADDRESS) as hub:
        job = example_as_run_here(hub.url, provider.trainer_image)
        name = job["metadata"]["name"]
        sc.apply_job(provider, job)
        s = sc.wait_phase(provider, name, "Succeeded", timeout=780)
        model, data = hub.traffic(hub_repos.GPT2), hub.traffic(hub_repos.ENGLISH_QUOTES)
        weights = hub.repo(hub_repos.GPT2).files["model.safetensors"].size
        quotes = hub.repo(hub_repos.ENGLISH_QUOTES, "dataset").files["quotes.jsonl"].size
    print(f"\nhub traffic: gpt2 {model.summary()}; english_quotes {data.summary()}")
    assert s["step"] == MAX_STEPS and s.get("progress") == f"{MAX_STEPS}/{MAX_STEPS}", sc.summary(s)
    assert s["attempt"] == 1 and s["restartsTotal"] == 0, sc.summary(s)
    assert weights >= 100_000_000
    assert model.file_bytes["model.safetensors"] == weights, model.summary()  # the pod downloaded it whole
    assert data.file_bytes["quotes.jsonl"] == quotes, data.summary()

    adapter = load(
        provider.read_volume_file(
            provider.namespace, f"{name}-checkpoints", f"{s['runDirectory']}/final/adapter_model.safetensors"
        )
    )
    c_attn = {key: value.shape for key, value in adapter.items() if "c_attn" in key}
    assert len(c_attn) == 2 * 12, sorted(adapter)  # lora_A and lora_B in each of GPT-2's 12 blocks
    assert {shape for key, shape in c_attn.items() if "lora_A" in key} == {(8, 768)}, c_attn  # r=8
    assert {shape for key, shape in c_attn.items() if "lora_B" in key} == {(3 * 768, 8)}, c_attn
    assert any(
        abs(value).max() > 0 for key, value in adapter.items() if "lora_B" in key
    )  # trained (B starts at 0)
