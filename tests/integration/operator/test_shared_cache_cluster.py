"""spec.cache.location sharedClaim and status.volumeWarning on the real cluster (issue 13, item 1). Two jobs
name one cache claim; the first job's pod downloads the model from the local hub stand-in (on the node
address, which pods reach), the second job's pod finds it in the shared cache and downloads no model file:

    FTO_CLUSTER=existing .venv/bin/python -m pytest tests/integration/operator/test_shared_cache_cluster.py

The model is `acme/tiny-gpt2` from the hub (the tiny model, so each job takes seconds); the dataset is the
tiny image's local file.
"""

from __future__ import annotations

import pytest

from tests.harness import hub_repos
from tests.harness.hub_server import HubServer
from tests.harness.kube import wait_for
from tests.integration.operator.conftest import LocalProvider, OperatorProcess
from tests.scenarios import operator_scenarios as sc

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.timeout(600)]

NODE_ADDRESS = "10.89.0.1"  # hack/cluster/node.sh NODE_IP: the host's end of the node's veth, pods reach it
CACHE_CLAIM = "hf-cache"


def job_on_shared_cache(name: str, image: str, hub_url: str) -> dict[str, object]:
    job = sc.tiny_job(
        name,
        image,
        steps=2,
        save_steps=1,
        step_sleep=0,
        env={"HF_ENDPOINT": hub_url},
        cache={"location": "sharedClaim", "claimName": CACHE_CLAIM},
    )
    job["spec"]["model"]["name_or_path"] = hub_repos.TINY  # type: ignore[index]
    return job


def test_second_job_on_a_shared_cache_claim_downloads_no_model_bytes(
    provider: LocalProvider, operator: OperatorProcess
) -> None:
    provider.kube.core.create_namespaced_persistent_volume_claim(
        provider.namespace,
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": CACHE_CLAIM},
            # one node here: ReadWriteOnce is shared by pods on it; across nodes it would be ReadWriteMany
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "256Mi"}}},
        },
    )
    with HubServer(hub_repos.hub_root((hub_repos.TINY,)), host=NODE_ADDRESS) as hub:
        weights = hub.repo(hub_repos.TINY).files["model.safetensors"].size

        sc.apply_job(provider, job_on_shared_cache("first", provider.trainer_image, hub.url))
        pod = wait_for(lambda: next(iter(sc.pods(provider, "first")), None), 60, what="first's pod")
        mounts = {m.name: m.mount_path for m in pod.spec.containers[0].volume_mounts}
        hf_home = {e.name: e.value for e in pod.spec.containers[0].env}["HF_HOME"]
        claims = {
            v.name: v.persistent_volume_claim.claim_name
            for v in pod.spec.volumes
            if v.persistent_volume_claim
        }
        first = sc.wait_phase(provider, "first", "Succeeded", timeout=300)
        after_first = hub.traffic(hub_repos.TINY)

        sc.apply_job(provider, job_on_shared_cache("second", provider.trainer_image, hub.url))
        second = sc.wait_phase(provider, "second", "Succeeded", timeout=300)
        after_second = hub.traffic(hub_repos.TINY)

    print(
        f"\nhub traffic after the first job: {after_first.summary()}; "
        f"after the second: {after_second.summary()}"
    )
    assert mounts["cache"] == "/cache" and hf_home == "/cache" and claims["cache"] == CACHE_CLAIM, (
        mounts,
        claims,
    )
    assert first["attempt"] == 1 and second["attempt"] == 1, (sc.summary(first), sc.summary(second))
    assert after_first.file_bytes["model.safetensors"] == weights, after_first.summary()  # downloaded, whole
    assert after_second.total_file_bytes == after_first.total_file_bytes, (
        "the second job downloaded model files"
    )
    assert after_second.by_action["resolve GET"] == after_first.by_action["resolve GET"]
    assert after_second.requests > after_first.requests  # it did ask the hub (revalidation), and got no file
    assert first["runDirectory"] != second["runDirectory"]  # each job's checkpoints on its own volume


def test_a_run_that_cannot_fit_its_volume_warns_in_status_and_with_an_event(
    provider: LocalProvider, operator: OperatorProcess
) -> None:
    """status.volumeWarning and the VolumeTooSmall Event through the real apiserver (the CRD keeps the field,
    the trainer's Role allows the Event). The local cluster's volumes are host paths whose size is the host's
    disk, so "too small" is made by the other side: keeping 10^8 checkpoints of ≈100 KiB (≈10 TB)."""
    job = sc.tiny_job("keeps-everything", provider.trainer_image, steps=2, save_steps=1, step_sleep=0)
    job["spec"]["training"]["save_total_limit"] = 100_000_000  # type: ignore[index]
    sc.apply_job(provider, job)
    s = sc.wait_phase(provider, "keeps-everything", "Succeeded", timeout=300)
    warning = s.get("volumeWarning") or ""
    assert warning.startswith("checkpoint volume too small: it holds "), sc.summary(s)
    assert "100000001 checkpoints of " in warning and "training.save_total_limit" in warning, warning
    warned = [e for e in sc.events(provider, "keeps-everything") if e.reason == "VolumeTooSmall"]
    # one Event per attempt, from the first check (the estimated checkpoint size; the status has the latest)
    assert len(warned) == 1 and warned[0].type == "Warning", warned
    assert warned[0].message.startswith("checkpoint volume too small: it holds "), warned
