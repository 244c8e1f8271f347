"""FineTuneJobs through the real Kueue (issue 15) on the local cluster: one quota, two jobs — one runs (on
its admitted flavor's node labels and toleration), the other waits Queued and runs when the first finishes
(its Workload Finished frees the quota); a high-priority
job preempts a running low-priority one through Kueue (emergency checkpoint, Queued, resumed, one preemption
counted) and finishes with the adapter of the same job run undisturbed. Tiny jobs
(tests/scenarios/operator_scenarios.py): each test takes about a minute."""

from __future__ import annotations

import pytest

from tests.harness.kube import wait_for
from tests.harness.kueue import GROUP, VERSION, Kueue, _condition_true
from tests.integration.operator.conftest import LocalProvider
from tests.scenarios import operator_scenarios as sc

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.timeout(420)]
#: The tiny trainer pod asks for 1 cpu and 1536Mi: this quota holds one at a time.
ONE_JOB = {"cpu": "1", "memory": "2Gi"}


def _queued_job(name: str, image: str, queue: str, priority: str | None = None, **kw: object) -> dict:
    job = sc.tiny_job(name, image, **kw)  # type: ignore[arg-type]
    job["metadata"]["labels"] = {"kueue.x-k8s.io/queue-name": queue}
    if priority:
        job["metadata"]["labels"]["kueue.x-k8s.io/priority-class"] = priority
    return job


def _reasons(p: LocalProvider, name: str) -> list[str]:
    return [e.reason for e in sc.events(p, name)]


#: The flavor's placement, which the trainer pod must carry: a label every node has here, a toleration.
FLAVOR_TOLERATION = {"key": "fto.dev/kueue-flavor", "operator": "Exists", "effect": "NoSchedule"}


def test_one_quota_two_jobs_one_waits_queued_then_runs(provider: LocalProvider, kueue: Kueue) -> None:
    p = provider
    node_labels = {"kubernetes.io/os": "linux"}
    flavor = {"nodeLabels": node_labels, "tolerations": [FLAVOR_TOLERATION]}
    queue = kueue.queue(p.namespace, ONE_JOB, flavor_spec=flavor)
    sc.apply_job(p, _queued_job("first", p.trainer_image, queue, steps=8, save_steps=4, step_sleep=0.1))
    sc.wait_status(p, "first", lambda s: s.get("phase") in ("Pending", "Running"), 60, "first admitted")
    # admitted on the flavor: the trainer pod carries its node labels and toleration
    (trainer,) = wait_for(lambda: sc.pods(p, "first"), 30, what="first's trainer pod")
    assert node_labels.items() <= (trainer.spec.node_selector or {}).items(), trainer.spec.node_selector
    tolerations = [t.to_dict() for t in trainer.spec.tolerations or []]
    assert any(
        (t["key"], t["operator"], t["effect"]) == ("fto.dev/kueue-flavor", "Exists", "NoSchedule")
        for t in tolerations
    ), tolerations
    sc.apply_job(p, _queued_job("second", p.trainer_image, queue, steps=8, save_steps=4, step_sleep=0.1))
    waiting = sc.wait_phase(p, "second", "Queued", timeout=60)
    assert waiting["reason"] == "WaitingForAdmission" and queue in waiting["message"], sc.summary(waiting)
    columns = sc.printer_columns(p, "second")
    assert (columns["PHASE"], columns["QUEUE"]) == ("Queued", queue), columns
    assert not sc.pods(p, "second"), "no trainer pod before admission"
    assert "Admitted" in _reasons(p, "first")

    sc.assert_succeeded(p, "first", 8)

    # the first one's Workload is marked Finished (by the pass after the one that wrote Succeeded, so the
    # test waits for it): its quota admits the second, which then runs to the end
    def first_finished() -> bool:
        wl = p.kube.custom.get_namespaced_custom_object(
            GROUP, VERSION, p.namespace, "workloads", "first-kueue"
        )
        return _condition_true(wl, "Finished")

    wait_for(first_finished, 30, what="first's Workload Finished")
    sc.assert_succeeded(p, "second", 8)
    assert "Admitted" in _reasons(p, "second")
    assert (sc.status(p, "second").get("restarts") or {}).get("preemption", 0) == 0


def test_high_priority_preempts_low_through_kueue(provider: LocalProvider, kueue: Kueue) -> None:
    p = provider
    queue = kueue.queue(p.namespace, ONE_JOB, preemption={"withinClusterQueue": "LowerPriority"})
    low = kueue.priority_class(f"fto-low-{kueue.suffix}", 10)
    high = kueue.priority_class(f"fto-high-{kueue.suffix}", 1000)
    sc.apply_job(p, _queued_job("low", p.trainer_image, queue, low, steps=16, save_steps=4, step_sleep=0.25))
    sc.wait_checkpoint(p, "low", 4, timeout=120)
    sc.apply_job(p, _queued_job("high", p.trainer_image, queue, high, steps=4, save_steps=4, step_sleep=0.1))
    # Kueue evicts the low one: it commits an emergency checkpoint and waits Queued
    evicted = sc.wait_status(
        p, "low", lambda s: s.get("phase") == "Queued" and s.get("reason") == "Evicted", 90, "low evicted"
    )
    assert evicted["restarts"]["preemption"] == 1, sc.summary(evicted)
    assert evicted.get("lastEmergencySave", {}).get("inTime") is True, evicted.get("lastEmergencySave")
    assert "Evicted" in _reasons(p, "low")
    sc.assert_succeeded(p, "high", 4)
    s = sc.assert_succeeded(p, "low", 16)
    restarts = s["restarts"]
    assert restarts["preemption"] == 1 and sum(restarts.values()) == 1, restarts
    # the same job undisturbed (outside Kueue, now that the quota's pods are gone) trains the same adapter
    sc.apply_job(p, sc.tiny_job("low-undisturbed", p.trainer_image, steps=16, save_steps=4, step_sleep=0.05))
    sc.assert_succeeded(p, "low-undisturbed", 16)
    assert sc.final_adapter_sha256(p, "low") == sc.final_adapter_sha256(p, "low-undisturbed")


def test_typos_in_the_queue_or_priority_class_are_shown_on_the_job(
    provider: LocalProvider, kueue: Kueue
) -> None:
    """A LocalQueue that does not exist (Kueue's own words), a WorkloadPriorityClass that does not exist:
    the job waits Queued with a Warning saying which, and runs nothing."""
    p = provider
    queue = kueue.queue(p.namespace, ONE_JOB)
    sc.apply_job(p, _queued_job("noqueue", p.trainer_image, "team-typo", steps=4))
    waiting = sc.wait_status(p, "noqueue", lambda s: s.get("reason") == "Inadmissible", 60, "inadmissible")
    assert waiting["phase"] == "Queued", sc.summary(waiting)
    assert waiting["message"] == "Kueue cannot queue it: LocalQueue team-typo doesn't exist", waiting[
        "message"
    ]
    sc.apply_job(p, _queued_job("noclass", p.trainer_image, queue, "no-such-class", steps=4))
    missing = sc.wait_status(
        p, "noclass", lambda s: s.get("reason") == "PriorityClassNotFound", 60, "priority class not found"
    )
    assert missing["phase"] == "Queued" and "'no-such-class'" in missing["message"], sc.summary(missing)
    for name in ("noqueue", "noclass"):
        assert "Warning" in {e.type for e in sc.events(p, name)}
        assert not sc.pods(p, name)
