"""spec.checkpoint.objectStore on the real local cluster (issue 14): a real S3 server (Versity Gateway,
tests/harness/object_store.py) on the node address 10.89.0.1, which pods reach; the tiny trainer image.

    FTO_CLUSTER=existing .venv/bin/python -m pytest tests/integration/operator/test_object_store_cluster.py

- The checkpoint claim deleted with the trainer pod mid-run (the volume is lost): the operator waits for the
  claim to go, creates a new one, and the next attempt resumes from the store's copy; the adapter is the one
  an undisturbed run of the same job (run beside it) produces.
- The store stopped for a minute mid-run: training goes on, the uploads catch up, every checkpoint retention
  keeps is in the store, the job succeeds; the shipped FineTuneJobCheckpointUploadsFailing rule (its window
  and `for` shortened) fires and clears in a real Prometheus scraping the trainer pod.
- checkpoint.ephemeralVolume: every pod gets a fresh volume; a pod deleted mid-run, the next resumes from
  the store, and the final adapter (in the store) is the undisturbed run's.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from finetune_observability import alerts

from tests.harness.object_store import NODE_ADDRESS, ObjectStore
from tests.harness.prometheus import INSTALL_HINT, LocalPrometheus, TrainerDiscovery, trainer_scrape_config
from tests.integration.operator.conftest import LocalProvider, OperatorProcess
from tests.scenarios import operator_scenarios as sc

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.timeout(600)]

SECRET = "s3-keys"
PREFIX = "fto-tests"
UPLOAD_ALERT = "FineTuneJobCheckpointUploadsFailing"
#: The shipped rule fires after 2m of failures in a 5m window; here after 10 s in a 20 s window.
FAST_UPLOAD_WINDOW, FAST_UPLOAD_FOR = "20s", "10s"
OUTAGE_SECONDS = 60.0


@pytest.fixture
def store(provider: LocalProvider, tmp_path: Path) -> Iterator[ObjectStore]:
    """A fresh S3 server on the node address (the pods' way to the host) and its key pair as a Secret."""
    with ObjectStore(tmp_path / "s3", host=NODE_ADDRESS) as server:
        provider.kube.core.create_namespaced_secret(provider.namespace, server.secret(SECRET))
        yield server
    shutil.rmtree(tmp_path / "s3", ignore_errors=True)


def store_job(name: str, image: str, store: ObjectStore, **spec: Any) -> dict[str, Any]:
    job = sc.tiny_job(name, image, **spec)
    job["spec"]["checkpoint"]["objectStore"] = store.job_spec(SECRET, PREFIX)
    return job


def run_prefix(p: LocalProvider, name: str) -> str:
    return f"{PREFIX}/runs/{sc.get_job(p, name)['metadata']['uid']}"


def claim_dir(p: LocalProvider, claim: str) -> Path:
    """The host directory behind a claim (the local cluster's volumes are host paths)."""
    pvc = p.kube.core.read_namespaced_persistent_volume_claim(claim, p.namespace)
    pv = p.kube.core.read_persistent_volume(pvc.spec.volume_name)
    return Path(pv.spec.host_path.path)


def local_committed(p: LocalProvider, name: str) -> list[int]:
    run = claim_dir(p, f"{name}-checkpoints") / sc.status(p, name)["runDirectory"]
    return sorted(int(m.parent.name.split("-")[1]) for m in run.glob("checkpoint-*/COMMITTED.json"))


def trainer_events(p: LocalProvider, pod: str, event: str) -> list[dict[str, Any]]:
    out = []
    for line in p.kube.logs(p.namespace, pod, container="trainer").splitlines():
        if line.startswith("{") and f'"{event}"' in line:
            record = json.loads(line)
            if record.get("event") == event:
                out.append(record)
    return out


def test_claim_deleted_mid_run_resumes_from_the_object_store(
    provider: LocalProvider, operator: OperatorProcess, store: ObjectStore
) -> None:
    p, t0 = provider, time.monotonic()
    # The same job twice: one undisturbed (the reference), one whose volume is lost mid-run.
    sc.apply_job(p, store_job("undisturbed", p.trainer_image, store))
    sc.apply_job(p, store_job("lost", p.trainer_image, store))
    before = sc.wait_status(
        p,
        "lost",
        lambda s: (s.get("durableCheckpointStep") or 0) >= 8 and s.get("phase") == "Running",
        180,
        "lost: a checkpoint durable in the store",
    )
    victim, durable = before["podName"], before["durableCheckpointStep"]
    claim = p.kube.core.read_namespaced_persistent_volume_claim("lost-checkpoints", p.namespace)
    # The volume is lost: its claim deleted (it goes once the pod is gone), and the pod with it.
    p.kube.core.delete_namespaced_persistent_volume_claim("lost-checkpoints", p.namespace)
    p.kube.core.delete_namespaced_pod(victim, p.namespace)
    lost_at = time.monotonic()

    s = sc.assert_succeeded(p, "lost", 24)
    recovered = time.monotonic() - lost_at
    assert s["attempt"] == 2, sc.summary(s)
    assert s["restarts"]["preemption"] == 1 and s["restarts"]["error"] == 0, sc.summary(s)
    # A new claim on a new volume.
    new_claim = p.kube.core.read_namespaced_persistent_volume_claim("lost-checkpoints", p.namespace)
    assert new_claim.metadata.uid != claim.metadata.uid
    assert new_claim.spec.volume_name != claim.spec.volume_name
    # Said once, as a Warning, with the durable step the next attempt resumes from.
    lost_events = [e for e in sc.events(p, "lost") if e.reason == "VolumeLost"]
    assert len(lost_events) == 1 and lost_events[0].type == "Warning", lost_events
    assert "checkpoint volume lost (claim lost-checkpoints was deleted)" in lost_events[0].message
    # The second attempt downloaded the store's newest commit (at least what was durable before the loss:
    # the emergency checkpoint of the SIGTERM, uploaded within the deadline) and resumed from it.
    prefix = run_prefix(p, "lost")
    downloaded = trainer_events(p, s["podName"], "remote_checkpoint_downloaded")
    assert len(downloaded) == 1, downloaded
    resumed = downloaded[0]["checkpoint"]
    assert int(resumed.split("-")[1]) >= durable, (resumed, durable)
    assert s["startedFrom"] == f"s3://{store.bucket}/{prefix}/{resumed}", sc.summary(s)
    chosen = trainer_events(p, s["podName"], "resume_from")
    assert chosen and chosen[0]["checkpoint"] == resumed, chosen
    assert s["durableCheckpointStep"] == 24 and store.committed_steps(prefix)[-1] == 24
    assert sc.printer_columns(p, "lost").get("DURABLE") == "24"  # kubectl get ftj: the Durable column

    reference = sc.assert_succeeded(p, "undisturbed", 24)
    assert reference["attempt"] == 1, sc.summary(reference)
    assert sc.final_adapter_sha256(p, "lost") == sc.final_adapter_sha256(p, "undisturbed")
    print(
        f"\nvolume lost at durable step {durable}; resumed from {resumed}; succeeded {recovered:.1f} s after "
        f"the loss; test {time.monotonic() - t0:.1f} s"
    )


def test_ephemeral_volume_every_pod_gets_a_new_volume_and_resumes_from_the_store(
    provider: LocalProvider, operator: OperatorProcess, store: ObjectStore
) -> None:
    """checkpoint.ephemeralVolume: no claim of the job's own; each trainer pod gets a fresh volume (a generic
    ephemeral volume, deleted with the pod), so a replacement is pinned to no disk's zone. A pod deleted
    mid-run: the next one resumes from the store and the adapter (final/, uploaded to the store) is the
    undisturbed run's."""
    p, t0 = provider, time.monotonic()
    sc.apply_job(p, store_job("plain", p.trainer_image, store))
    ephemeral = store_job("eph", p.trainer_image, store)
    ephemeral["spec"]["checkpoint"]["ephemeralVolume"] = True
    sc.apply_job(p, ephemeral)
    before = sc.wait_status(
        p,
        "eph",
        lambda s: (s.get("durableCheckpointStep") or 0) >= 8 and s.get("phase") == "Running",
        180,
        "eph: a checkpoint durable in the store",
    )
    victim = before["podName"]
    first_claim = p.kube.core.read_namespaced_persistent_volume_claim(f"{victim}-checkpoints", p.namespace)
    p.kube.core.delete_namespaced_pod(victim, p.namespace)

    s = sc.assert_succeeded(p, "eph", 24)
    assert s["attempt"] == 2 and s["restarts"]["preemption"] == 1, sc.summary(s)
    assert s["restarts"]["error"] == 0, sc.summary(s)
    claims = {
        c.metadata.name: c for c in p.kube.core.list_namespaced_persistent_volume_claim(p.namespace).items
    }
    assert "eph-checkpoints" not in claims, sorted(claims)  # no claim of the job's own
    second_claim = claims[f"{s['podName']}-checkpoints"]  # the pod's own, made by Kubernetes
    assert second_claim.metadata.owner_references[0].kind == "Pod"
    assert second_claim.spec.volume_name != first_claim.spec.volume_name
    prefix = run_prefix(p, "eph")
    assert s["startedFrom"].startswith(f"s3://{store.bucket}/{prefix}/checkpoint-"), sc.summary(s)
    assert "VolumeLost" not in {e.reason for e in sc.events(p, "eph")}
    # the trained adapter is in the store (the volume went with the pod)
    final = (store.bucket_dir / prefix / "final" / "adapter_model.safetensors").read_bytes()
    sc.assert_succeeded(p, "plain", 24)
    assert hashlib.sha256(final).hexdigest() == sc.final_adapter_sha256(p, "plain")
    print(f"\nephemeral volume: resumed from {s['startedFrom']}; test {time.monotonic() - t0:.1f} s")


def fast_upload_rule(path: Path) -> Path:
    """The shipped FineTuneJobCheckpointUploadsFailing rule, its window and `for` shortened."""
    (rule,) = [r for r in alerts.build_rules()["groups"][0]["rules"] if r["alert"] == UPLOAD_ALERT]
    window = f"[{alerts.UPLOAD_WINDOW}]"
    assert window in rule["expr"], rule["expr"]
    rule["expr"] = rule["expr"].replace(window, f"[{FAST_UPLOAD_WINDOW}]")
    rule["for"] = FAST_UPLOAD_FOR
    path.write_text(yaml.safe_dump({"groups": [{"name": "uploads.fast", "rules": [rule]}]}))
    return path


def alert_state(prom: LocalPrometheus, namespace: str, job: str) -> str | None:
    for a in prom.alerts():
        labels = a["labels"]
        if (labels["alertname"], labels.get("namespace"), labels.get("finetunejob")) == (
            UPLOAD_ALERT,
            namespace,
            job,
        ):
            return str(a["state"])
    return None


def series(
    prom: LocalPrometheus, metric: str, namespace: str, job: str, start: float, end: float | None = None
) -> list[float]:
    selector = f'{metric}{{namespace="{namespace}",finetunejob="{job}"}}'
    result = prom.query_range(selector, start, end or time.time())
    assert len(result) == 1, result
    return [float(v) for _, v in result[0]["values"]]


def test_object_store_down_for_a_minute_training_goes_on_and_uploads_catch_up(
    provider: LocalProvider, operator: OperatorProcess, store: ObjectStore, tmp_path: Path
) -> None:
    if not shutil.which("prometheus"):
        pytest.fail(INSTALL_HINT)
    p, job, t0 = provider, "outage", time.monotonic()
    with contextlib.ExitStack() as stack:
        discovery = TrainerDiscovery(p.kube.core, tmp_path / "trainers.json", [p.namespace]).start()
        stack.callback(discovery.stop)
        prom = LocalPrometheus(
            [],
            [fast_upload_rule(tmp_path / "uploads.rules.yml")],
            workdir=tmp_path / "prom",
            extra_scrape_configs=[trainer_scrape_config(tmp_path / "trainers.json")],
        )
        stack.enter_context(prom)
        # Long enough to outlive the outage and the alert clearing after it (≈ 2 min of training).
        steps = 360
        sc.apply_job(p, store_job(job, p.trainer_image, store, steps=steps, save_steps=10, step_sleep=0.3))
        up = sc.wait_status(
            p,
            job,
            lambda s: (s.get("durableCheckpointStep") or 0) >= 10 and s.get("phase") == "Running",
            180,
            f"{job}: a checkpoint durable in the store",
        )
        store.stop()
        stopped, stopped_wall = time.monotonic(), time.time()
        # Once a second until the job ends: its status and the alert's state; the store back after a minute.
        timeline: list[tuple[float, dict[str, Any], str | None]] = []
        at_restart: dict[str, Any] = {}
        back_at = 0.0
        while True:
            now = time.monotonic() - stopped
            s = sc.status(p, job)
            timeline.append((now, s, alert_state(prom, p.namespace, job)))
            if not at_restart and now >= OUTAGE_SECONDS:
                at_restart, back_at = s, now
                store.start()
            if s.get("phase") in ("Succeeded", "Failed") or now > 300:
                break
            time.sleep(1)
        shown = [(round(t), st.get("step"), st.get("durableCheckpointStep"), a) for t, st, a in timeline]

        assert s.get("phase") == "Succeeded", sc.summary(s)
        assert at_restart, shown
        # Training went on while the store was down: steps and local commits advanced, the durable copy not
        # (an upload in flight at the stop may still have landed).
        assert at_restart["step"] > up["step"] + 50, (sc.summary(up), sc.summary(at_restart))
        assert at_restart["durableCheckpointStep"] <= up["durableCheckpointStep"] + 10, shown
        assert at_restart["lastCheckpointStep"] >= at_restart["durableCheckpointStep"] + 20, shown
        # The alert fired during the outage, stayed until the store was back, and cleared after it while the
        # trainer still ran.
        fired = [t for t, _, state in timeline if state == "firing"]
        assert fired and fired[0] < back_at and fired[-1] >= back_at - 2, shown
        cleared = [
            t for t, st, state in timeline if t > fired[-1] and state is None and st["phase"] == "Running"
        ]
        assert cleared, shown
        # Caught up, nothing lost: every checkpoint retention keeps locally is committed in the store.
        prefix = run_prefix(p, job)
        assert s["durableCheckpointStep"] == steps, sc.summary(s)
        local, remote = local_committed(p, job), store.committed_steps(prefix)
        assert local == remote and remote[-1] == steps, (local, remote)
        # The series the alert reads, scraped from the trainer pod: up during the outage, flat from shortly
        # after the store is back; the durable step flat during the outage, then up to the last step.
        metric = "finetune_trainer_checkpoint_upload_failures_total"
        failures = series(prom, metric, p.namespace, job, stopped_wall - 5)
        after = series(prom, metric, p.namespace, job, stopped_wall + back_at + 10)
        assert failures[0] == 0 and failures[-1] > 0, failures
        assert min(after) == max(after) == failures[-1], after
        # (the last upload lands just before the trainer exits: its value may miss the last scrape)
        gauge = "finetune_trainer_durable_checkpoint_step"
        durable = series(prom, gauge, p.namespace, job, stopped_wall + 5, stopped_wall + back_at)
        caught_up = series(prom, gauge, p.namespace, job, stopped_wall + back_at)
        assert max(durable) <= up["durableCheckpointStep"] + 10 < max(caught_up) - 100, (durable, caught_up)
    print(
        f"\nstore down {OUTAGE_SECONDS:.0f} s at step {up['step']} (durable "
        f"{up['durableCheckpointStep']}); at its restart: step {at_restart['step']}, committed "
        f"{at_restart['lastCheckpointStep']}, durable "
        f"{at_restart['durableCheckpointStep']}; {failures[-1]:.0f} failed uploads; durable gauge "
        f"{max(durable):.0f} during the outage, {max(caught_up):.0f} after; alert firing "
        f"{fired[0]:.0f} s after the stop, cleared {cleared[0] - back_at:.0f} s after the restart; test "
        f"{time.monotonic() - t0:.1f} s"
    )
