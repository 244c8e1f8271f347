"""handlers.run_once (with executor.py and finalizers.py) against an in-memory fake API: the action executor,
409 → adopt, finalizer release, idempotence under repeated passes (duplicate events, an operator restart)."""

from __future__ import annotations

import copy
import json
from types import SimpleNamespace
from typing import Any

import pytest
from finetune_operator import actions, decisions, executor, finalizers, handlers
from finetune_operator.names import POD_FINALIZER
from finetune_operator.runtime import Runtime
from kubernetes.client.rest import ApiException

from tests.unit.operator.decision_helpers import pod as decision_pod
from tests.unit.operator.decision_helpers import world as decision_world

NS, NAME, UID = "ns", "job", "uid-1"


def merge(target: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """RFC 7386 JSON merge patch."""
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            merge(target[key], value)
        else:
            target[key] = copy.deepcopy(value)
    return target


def obj(d: dict[str, Any]) -> Any:
    meta = d.get("metadata", {})
    owners = [SimpleNamespace(uid=o["uid"]) for o in meta.get("ownerReferences") or []]
    return SimpleNamespace(
        metadata=SimpleNamespace(
            name=meta.get("name"),
            finalizers=list(meta.get("finalizers") or []),
            owner_references=owners,
            annotations=meta.get("annotations") or {},
        )
    )


class FakeCluster:
    def __init__(self) -> None:
        self.job: dict[str, Any] = {
            "apiVersion": "finetune.dev/v1alpha1",
            "kind": "FineTuneJob",
            "metadata": {
                "name": NAME,
                "namespace": NS,
                "uid": UID,
                "generation": 1,
                "resourceVersion": "1",
            },
            "spec": {
                "model": {"name_or_path": "/m"},
                "dataset": {"path": "/d.jsonl"},
                "training": {"max_steps": 10, "save_steps": 2},
                "resources": {"gpus": 0},
            },
        }
        self.pods: dict[str, dict[str, Any]] = {}
        self.created: list[str] = []
        self.events: list[dict[str, Any]] = []
        self.patched: list[str] = []  # pods whose finalizer a JSON patch removed
        self.reads: list[str] = []  # pods read one by one (GET)
        self.other: dict[str, dict[str, Any]] = {}

    # --- CustomObjectsApi ---------------------------------------------------------------
    def get_namespaced_custom_object(self, *args: Any) -> dict[str, Any]:
        return copy.deepcopy(self.job)

    def patch_namespaced_custom_object_status(self, *args: Any, **kw: Any) -> dict[str, Any]:
        # As the apiserver does: a resourceVersion in the patch is a precondition (409 when stale), and
        # every write that changes the object gives it a new one.
        body = args[-1]
        meta = self.job["metadata"]
        wanted = (body.get("metadata") or {}).get("resourceVersion")
        if wanted is not None and wanted != meta["resourceVersion"]:
            raise ApiException(status=409, reason="Conflict")
        before = copy.deepcopy(self.job.get("status"))
        merge(self.job.setdefault("status", {}), body["status"])
        if self.job["status"] != before:
            meta["resourceVersion"] = str(int(meta["resourceVersion"]) + 1)
        return copy.deepcopy(self.job)

    # --- CoreV1Api: pods ----------------------------------------------------------------
    def list_namespaced_pod(self, namespace: str, **kw: Any) -> Any:
        return SimpleNamespace(data=json.dumps({"items": list(self.pods.values())}))

    def read_node(self, name: str, **kw: Any) -> Any:
        node = {"status": {"conditions": [{"type": "Ready", "status": "True"}]}}
        return SimpleNamespace(data=json.dumps(node))

    def create_namespaced_pod(self, namespace: str, body: dict[str, Any], **kw: Any) -> Any:
        name = body["metadata"]["name"]
        if name in self.pods:
            raise ApiException(status=409)
        pod = copy.deepcopy(body)
        pod["metadata"]["uid"] = f"pod-{name}"
        pod["status"] = {"phase": "Pending"}
        self.pods[name] = pod
        self.created.append(name)
        return SimpleNamespace(data=json.dumps(pod))

    def read_namespaced_pod(self, name: str, namespace: str) -> Any:
        self.reads.append(name)
        if name not in self.pods:
            raise ApiException(status=404)
        return obj(self.pods[name])

    def patch_namespaced_pod(self, name: str, namespace: str, body: Any, **kw: Any) -> Any:
        if name not in self.pods:
            raise ApiException(status=404)
        pod = self.pods[name]
        if isinstance(body, list):  # JSON patch: test + remove of our finalizer (422 when the test fails)
            index = int(body[0]["path"].rsplit("/", 1)[1])
            finalizers = pod["metadata"].get("finalizers") or []
            if index >= len(finalizers) or finalizers[index] != body[0]["value"]:
                raise ApiException(status=422, reason="Unprocessable Entity")
            del finalizers[index]
            self.patched.append(name)
            self._maybe_gone(name)
        else:
            merge(pod, body)
        return SimpleNamespace(data=json.dumps(pod))

    def delete_namespaced_pod(
        self, name: str, namespace: str, grace_period_seconds: int | None = None, **kw: Any
    ) -> Any:
        if name not in self.pods:
            raise ApiException(status=404)
        pod = self.pods[name]
        meta = pod["metadata"]
        meta.setdefault("deletionTimestamp", "2026-01-01T00:00:00Z")
        meta["deletionGracePeriodSeconds"] = 0 if grace_period_seconds == 0 else 30
        self._maybe_gone(name)
        return SimpleNamespace(data=json.dumps(pod))

    def _maybe_gone(self, name: str) -> None:
        meta = self.pods[name]["metadata"]
        if (
            meta.get("deletionTimestamp")
            and not meta.get("finalizers")
            and meta.get("deletionGracePeriodSeconds") == 0
        ):
            del self.pods[name]

    # --- the rest ------------------------------------------------------------------------
    def read_namespaced_persistent_volume_claim(self, name: str, namespace: str, **_: Any) -> Any:
        key = f"PersistentVolumeClaim/{name}"
        if key not in self.other:
            raise ApiException(status=404)
        return SimpleNamespace(data=json.dumps(self.other[key]))

    def _create(self, namespace: str, body: dict[str, Any]) -> None:
        key = f"{body['kind']}/{body['metadata']['name']}"
        if key in self.other:
            raise ApiException(status=409)
        self.other[key] = body
        if body["kind"] == "PersistentVolumeClaim":
            self.other[body["metadata"]["name"]] = body

    create_namespaced_persistent_volume_claim = _create
    create_namespaced_service_account = _create
    create_namespaced_role = _create
    create_namespaced_role_binding = _create
    create_namespaced_config_map = _create

    def replace_namespaced_config_map(self, name: str, namespace: str, body: dict[str, Any]) -> None:
        self.other[f"ConfigMap/{name}"] = body

    def create_namespaced_event(self, namespace: str, body: dict[str, Any]) -> None:
        self.events.append(body)

    # --- helpers for the test ---------------------------------------------------------------
    def end_pod(self, name: str, exit_code: int, *, evicted: bool = False) -> None:
        pod = self.pods[name]
        pod["status"] = {
            "phase": "Failed",
            "conditions": [{"type": "DisruptionTarget", "status": "True", "reason": "EvictionByEvictionAPI"}]
            if evicted
            else [],
            "containerStatuses": [
                {"name": "trainer", "state": {"terminated": {"exitCode": exit_code, "reason": "Error"}}}
            ],
        }
        if evicted:
            pod["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
            pod["metadata"]["deletionGracePeriodSeconds"] = 30

    @property
    def status(self) -> dict[str, Any]:
        return dict(self.job.get("status") or {})

    def reasons(self) -> list[str]:
        return [e["reason"] for e in self.events]


@pytest.fixture
def fake() -> FakeCluster:
    return FakeCluster()


@pytest.fixture
def runtime(fake: FakeCluster, monkeypatch: pytest.MonkeyPatch) -> Runtime:
    """The operator's state for these tests, its API clients all the fake cluster."""
    state = Runtime()
    state.config.background_events = False  # posted in the pass: the tests read them right after
    monkeypatch.setattr(state, "apis", lambda: (fake, fake, fake))
    return state


def test_first_attempt_creates_everything_once(fake: FakeCluster, runtime: Runtime) -> None:
    handlers.run_once(runtime, NS, NAME)
    assert fake.created == ["job-1"]
    assert set(fake.other) >= {
        "PersistentVolumeClaim/job-checkpoints",
        "ServiceAccount/job-trainer",
        "Role/job-trainer",
        "RoleBinding/job-trainer",
        "ConfigMap/job-trainer-config",
    }
    s = fake.status
    assert (s["attempt"], s["podName"], s["phase"], s["observedGeneration"]) == (1, "job-1", "Pending", 1)
    assert fake.pods["job-1"]["metadata"]["finalizers"] == [POD_FINALIZER]
    # duplicate events / an operator restart: nothing new
    handlers.run_once(runtime, NS, NAME)
    handlers.run_once(runtime, NS, NAME)
    assert fake.created == ["job-1"] and fake.reasons() == ["AttemptCreated"]


def test_preemption_cycle_counts_once_and_replaces_the_pod(fake: FakeCluster, runtime: Runtime) -> None:
    handlers.run_once(runtime, NS, NAME)
    fake.end_pod("job-1", 75, evicted=True)
    handlers.run_once(runtime, NS, NAME)
    s = fake.status
    assert s["restarts"]["preemption"] == 1 and s["attempt"] == 2 and s["podName"] == "job-2"
    assert "pending" not in s and s["phase"] == "Restarting"
    assert fake.created == ["job-1", "job-2"] and "job-1" not in fake.pods
    assert fake.reasons() == ["AttemptCreated", "RestartPreemption", "AttemptCreated"]
    args = fake.pods["job-2"]["spec"]["containers"][0]["args"]
    assert args[args.index("--resume") + 1] == "auto"
    handlers.run_once(runtime, NS, NAME)
    assert fake.status["restarts"]["preemption"] == 1 and fake.created == ["job-1", "job-2"]


def test_a_replacement_costs_few_round_trips(
    fake: FakeCluster, runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A burst of preemptions is mostly API round trips (bench/scale): the restart decision releases the
    ended pod in its own pass, and a replacement neither re-creates the claim its pass read nor tries to
    create its ConfigMap before replacing it."""
    handlers.run_once(runtime, NS, NAME)
    fake.end_pod("job-1", 75, evicted=True)
    calls: list[str] = []
    for method in (
        "get_namespaced_custom_object",
        "list_namespaced_pod",
        "read_namespaced_pod",
        "create_namespaced_persistent_volume_claim",
        "create_namespaced_config_map",
        "replace_namespaced_config_map",
    ):
        original = getattr(fake, method)

        def recorded(*args: Any, _name: str = method, _original: Any = original, **kw: Any) -> Any:
            calls.append(_name)
            return _original(*args, **kw)

        monkeypatch.setattr(fake, method, recorded)
    handlers.run_once(runtime, NS, NAME, lambda: handlers.quiet_requeue(runtime, NS, NAME))
    assert fake.status["attempt"] == 2 and fake.created == ["job-1", "job-2"]
    # One read: the restart decision (+ release and delete), then the replacement decided on that read plus
    # what the writes returned, then a cached look (the writes' responses are in the cache) that says what
    # a confirming read would. Before: three reads, and the release took a pass and a read of its own.
    assert calls.count("get_namespaced_custom_object") == 1 and calls.count("list_namespaced_pod") == 1
    assert calls.count("read_namespaced_pod") == 0  # the release takes the finalizer list the pass read
    assert "create_namespaced_persistent_volume_claim" not in calls
    assert "create_namespaced_config_map" not in calls and calls.count("replace_namespaced_config_map") == 1


def test_error_backoff_is_waited_for_in_status(fake: FakeCluster, runtime: Runtime) -> None:
    handlers.run_once(runtime, NS, NAME)
    fake.end_pod("job-1", 1)
    requeue = handlers.run_once(runtime, NS, NAME)
    s = fake.status
    assert s["restarts"]["error"] == 1 and s["pending"]["cause"] == "error" and s["phase"] == "Restarting"
    assert requeue is not None and 9 < requeue <= 10  # backoffSeconds 10
    assert "job-1" not in fake.pods and fake.created == ["job-1"]  # the ended pod is gone, no new one yet


def test_pod_created_before_a_crash_is_adopted(fake: FakeCluster, runtime: Runtime) -> None:
    handlers.run_once(runtime, NS, NAME)
    # an earlier operator recorded the decision, removed job-1, created job-2 and died before recording it
    merge(
        fake.job.setdefault("status", {}),
        {
            "phase": "Restarting",
            "restarts": {"preemption": 1},
            "restartsTotal": 1,
            "pending": {
                "action": "restart",
                "cause": "preemption",
                "reason": "EvictionByEvictionAPI",
                "podName": "job-1",
            },
        },
    )
    del fake.pods["job-1"]
    fake.create_namespaced_pod(
        NS, {"metadata": {"name": "job-2", "ownerReferences": [{"uid": UID}]}, "spec": {}}
    )
    handlers.run_once(runtime, NS, NAME)
    s = fake.status
    assert s["podName"] == "job-2" and s["attempt"] == 2 and "pending" not in s
    assert s["restarts"]["preemption"] == 1 and fake.created == ["job-1", "job-2"]


def test_attempt_event_survives_a_status_write_that_loses_a_race(
    fake: FakeCluster, runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pod is created, then the job changes (kopf's own patch, a trainer's report) before the status
    write: the write is refused as stale and the next pass adopts the pod. The AttemptCreated Event was
    still posted, once (found lost in a chart run: 1 of 2 AttemptCreated Events)."""
    create = fake.create_namespaced_pod

    def create_then_someone_writes(namespace: str, body: dict[str, Any], **kw: Any) -> Any:
        created = create(namespace, body, **kw)
        meta = fake.job["metadata"]
        meta["resourceVersion"] = str(int(meta["resourceVersion"]) + 1)
        return created

    monkeypatch.setattr(fake, "create_namespaced_pod", create_then_someone_writes)
    handlers.run_once(runtime, NS, NAME)
    assert fake.created == ["job-1"] and fake.status["podName"] == "job-1"
    assert fake.reasons() == ["AttemptCreated"]


def test_create_conflict_with_a_foreign_pod_raises(
    fake: FakeCluster, runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = handlers.read_world(runtime, NS, NAME)
    assert job is not None
    fake.pods["job-1"] = {"metadata": {"name": "job-1", "ownerReferences": [{"uid": "other"}]}, "spec": {}}
    action = actions.CreatePod(1, False, {}, "AttemptCreated", "x")
    with pytest.raises(RuntimeError, match="belongs to someone else"):
        executor._create_attempt(runtime, job[0], UID, job[2], action, executor.Written())


def test_a_decision_made_on_a_stale_read_is_refused(fake: FakeCluster, runtime: Runtime) -> None:
    """Two operators: B read the job before A recorded the pod's end and created the next attempt. B's
    decision (the same end, counted again, `pending` for the replaced pod) must not be written, and B must
    not touch the new pod; B re-reads and finds nothing to do."""
    handlers.run_once(runtime, NS, NAME)
    fake.end_pod("job-1", 75, evicted=True)
    stale = handlers.read_world(runtime, NS, NAME)  # replica B reads ...
    assert stale is not None
    step = decisions.reconcile(stale[2])
    handlers.run_once(runtime, NS, NAME)  # ... replica A decides, cleans up and creates job-2
    assert fake.status["podName"] == "job-2" and fake.status["restarts"]["preemption"] == 1
    with pytest.raises(executor.StaleRead):
        executor.execute(runtime, stale[0], stale[1], stale[2], step.actions, stale[3])
    s = fake.status
    assert s["restarts"]["preemption"] == 1 and s["restartsTotal"] == 1 and "pending" not in s
    assert "deletionTimestamp" not in fake.pods["job-2"]["metadata"]
    assert fake.reasons() == ["AttemptCreated", "RestartPreemption", "AttemptCreated"]
    handlers.run_once(runtime, NS, NAME)  # B's next pass, on a fresh read
    assert fake.status["restarts"]["preemption"] == 1 and fake.created == ["job-1", "job-2"]


def test_pod_actions_wait_for_a_current_read(fake: FakeCluster, runtime: Runtime) -> None:
    """A pass that deletes or releases pods before writing status first proves its read is current."""
    handlers.run_once(runtime, NS, NAME)
    fake.pods["job-0"] = {  # a stray from an earlier attempt, still running
        "metadata": {"name": "job-0", "ownerReferences": [{"uid": UID}], "finalizers": [POD_FINALIZER]},
        "spec": {},
        "status": {"phase": "Running"},
    }
    stale = handlers.read_world(runtime, NS, NAME)
    assert stale is not None
    step = decisions.reconcile(stale[2])
    assert any(isinstance(a, actions.DeletePod) for a in step.actions)
    fake.patch_namespaced_custom_object_status(NS, NAME, {"status": {"step": 3}})  # the trainer reports
    with pytest.raises(executor.StaleRead):
        executor.execute(runtime, stale[0], stale[1], stale[2], step.actions, stale[3])
    assert "deletionTimestamp" not in fake.pods["job-0"]["metadata"]


def _pod(name: str, attempt: int, owner: str = UID, deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "namespace": NS,
        "labels": {"finetune.dev/job": NAME, "finetune.dev/attempt": str(attempt)},
        "ownerReferences": [{"uid": owner}],
        "finalizers": [POD_FINALIZER],
    }
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {"metadata": meta, "spec": {}, "status": {"phase": "Running"}}


def test_orphaned_pods(fake: FakeCluster) -> None:
    fake.job["status"] = {"attempt": 3, "podName": "job-3", "phase": "Running"}
    is_orphan = lambda pod: finalizers.orphaned(fake, NS, pod, {})  # noqa: E731
    assert not is_orphan(_pod("job-3", 3))  # the current attempt
    assert not is_orphan(_pod("job-3", 3, deleting=True))  # its end is not recorded yet
    assert is_orphan(_pod("job-2", 2, deleting=True))  # an earlier attempt: decided already
    assert not is_orphan(_pod("job-2", 2))  # not deleting: the job's loop cleans it up
    assert is_orphan(_pod("job-3", 3, owner="an-earlier-job-of-that-name"))
    fake.job["status"]["pending"] = {"action": "restart", "podName": "job-3"}
    assert is_orphan(_pod("job-3", 3, deleting=True))  # its end is recorded
    fake.job["status"] = {"attempt": 3, "podName": "job-3", "phase": "Succeeded"}
    assert is_orphan(_pod("job-3", 3, deleting=True))
    fake.job["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    fake.job["status"] = {"attempt": 3, "podName": "job-3", "phase": "Running"}
    assert is_orphan(_pod("job-3", 3))  # the job is being deleted: nobody will record anything
    del fake.job["metadata"]["deletionTimestamp"]
    fake.get_namespaced_custom_object = lambda *a: (_ for _ in ()).throw(ApiException(status=404))  # type: ignore[method-assign]
    assert is_orphan(_pod("job-3", 3))  # the job is gone


def test_a_deleting_job_releases_its_pods(fake: FakeCluster, runtime: Runtime) -> None:
    handlers.run_once(runtime, NS, NAME)
    fake.job["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    fake.delete_namespaced_pod("job-1", NS)  # the cascade / namespace deletion
    assert handlers.run_once(runtime, NS, NAME) is None
    assert "job-1" not in fake.pods or not fake.pods["job-1"]["metadata"]["finalizers"]


def _status_error(code: int, reason: str, message: str) -> ApiException:
    error = ApiException(status=code, reason=reason)
    error.body = json.dumps({"kind": "Status", "status": "Failure", "reason": reason, "message": message})
    return error


def test_refused_pod_is_shown_on_the_job_and_tried_again(
    fake: FakeCluster, runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A missing PriorityClass: Pending with the reason and one Warning, rechecked; then it exists."""
    refuse = _status_error(
        403, "Forbidden", 'pods "job-1" is forbidden: no PriorityClass with name x was found'
    )
    create = fake.create_namespaced_pod

    def refused(namespace: str, body: dict[str, Any], **kw: Any) -> None:
        raise refuse

    monkeypatch.setattr(fake, "create_namespaced_pod", refused)
    wait = handlers.run_once(runtime, NS, NAME)
    assert wait == 15.0
    s = fake.status
    assert (s["phase"], s["reason"], s.get("attempt", 0)) == ("Pending", "PriorityClassNotFound", 0)
    assert "no PriorityClass with name x" in s["message"]
    assert fake.reasons() == ["PriorityClassNotFound"] and fake.events[0]["type"] == "Warning"
    assert handlers.run_once(runtime, NS, NAME) == 15.0 and fake.reasons() == ["PriorityClassNotFound"]
    monkeypatch.setattr(fake, "create_namespaced_pod", create)  # the PriorityClass was created
    handlers.run_once(runtime, NS, NAME)
    s = fake.status
    assert (s["phase"], s["reason"], s["attempt"]) == ("Pending", "Created", 1)
    assert fake.created == ["job-1"]


def test_refused_config_map_fails_the_job(
    fake: FakeCluster, runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    too_big = 'ConfigMap "job-trainer-config" is invalid: []: Too long: must have at most 1048576 bytes'

    def refused(namespace: str, body: dict[str, Any]) -> None:
        raise _status_error(422, "Invalid", too_big)

    monkeypatch.setattr(fake, "create_namespaced_config_map", refused)
    handlers.run_once(runtime, NS, NAME)
    s = fake.status
    assert (s["phase"], s["reason"]) == ("Failed", "CreateRefused") and "1048576" in s["message"]
    assert fake.reasons() == ["CreateRefused"] and fake.created == []
    handlers.run_once(runtime, NS, NAME)
    assert fake.reasons() == ["CreateRefused"]


def test_unavailable_apiserver_is_retried_by_the_loop(
    fake: FakeCluster, runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unavailable(namespace: str, body: dict[str, Any], **kw: Any) -> None:
        raise _status_error(503, "ServiceUnavailable", "the server is currently unable to handle the request")

    monkeypatch.setattr(fake, "create_namespaced_pod", unavailable)
    with pytest.raises(ApiException):
        handlers.run_once(runtime, NS, NAME)
    assert "phase" not in fake.status and fake.events == []


def test_release_with_a_finalizer_list_changed_since_the_read_reads_the_pod(fake: FakeCluster) -> None:
    """The pass's own read of the finalizers saves a GET; if they changed since (another controller added
    one in front of ours), the guarded patch fails and the pod is read and patched again."""
    fake.pods["p"] = {"metadata": {"name": "p", "finalizers": ["example.com/other", POD_FINALIZER]}}
    released = executor.release_pod(fake, NS, "p", (POD_FINALIZER,))
    assert fake.pods["p"]["metadata"]["finalizers"] == ["example.com/other"]
    assert fake.reads == ["p"] and fake.patched == ["p"]
    assert released is not None and released["metadata"]["finalizers"] == ["example.com/other"]
    fake.reads.clear()
    assert executor.release_pod(fake, NS, "p", ("example.com/other",)) is None  # ours is not there: no call
    assert fake.reads == [] and fake.patched == ["p"]


def test_a_replacement_skips_the_trainers_access_objects_the_watches_show(
    fake: FakeCluster, runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ServiceAccount, Role and RoleBinding exist (the watches showed them, owned by this job): a
    replacement does not create them again. Not shown, or owned by an earlier job of that name: created.
    And a ServiceAccount deleted unseen: the pod is refused (403), the three are made and the pod again."""
    handlers.run_once(runtime, NS, NAME)
    access = {
        k: v for k, v in fake.other.items() if k.split("/")[0] in ("ServiceAccount", "Role", "RoleBinding")
    }
    assert len(access) == 3
    for key, obj in access.items():
        runtime.cache.observe_access((NS, NAME), key.split("/")[0], obj)
    creates: list[str] = []
    original = fake._create

    def recorded(namespace: str, body: dict[str, Any]) -> None:
        creates.append(body["kind"])
        original(namespace, body)

    for method in ("service_account", "role", "role_binding"):
        monkeypatch.setattr(fake, f"create_namespaced_{method}", recorded)
    fake.end_pod("job-1", 75, evicted=True)
    handlers.run_once(runtime, NS, NAME)
    assert fake.created == ["job-1", "job-2"] and creates == []

    # The ServiceAccount deleted while the watch was away: the apiserver refuses the pod.
    del fake.other["ServiceAccount/job-trainer"]
    create_pod = fake.create_namespaced_pod

    def needs_its_service_account(namespace: str, body: dict[str, Any], **kw: Any) -> Any:
        if "ServiceAccount/job-trainer" not in fake.other:
            raise ApiException(status=403, reason="Forbidden")
        return create_pod(namespace, body, **kw)

    monkeypatch.setattr(fake, "create_namespaced_pod", needs_its_service_account)
    fake.end_pod("job-2", 75, evicted=True)
    handlers.run_once(runtime, NS, NAME)
    assert fake.created == ["job-1", "job-2", "job-3"] and creates == [
        "ServiceAccount",
        "Role",
        "RoleBinding",
    ]

    # A job of that name deleted and applied again: the objects the cache shows belong to the old one.
    creates.clear()
    fake.job["metadata"]["uid"] = "uid-2"
    assert not runtime.cache.has_trainer_access((NS, NAME), "job-trainer", "uid-2")


def test_a_job_changed_after_the_writes_stops_the_following_step(
    fake: FakeCluster, runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The replacement decided on the pass's read plus its writes' results: its status write is conditional
    on what the pass's last write returned. Someone writes the job meanwhile (here: during the release):
    409, the API is read again, and the pod already created is adopted, not created twice."""
    handlers.run_once(runtime, NS, NAME)
    fake.end_pod("job-1", 75, evicted=True)
    patch_pod = fake.patch_namespaced_pod

    def release_then_someone_writes(name: str, namespace: str, body: Any, **kw: Any) -> Any:
        released = patch_pod(name, namespace, body, **kw)
        meta = fake.job["metadata"]
        meta["resourceVersion"] = str(int(meta["resourceVersion"]) + 1)
        return released

    monkeypatch.setattr(fake, "patch_namespaced_pod", release_then_someone_writes)
    reads: list[str] = []
    get = fake.get_namespaced_custom_object
    monkeypatch.setattr(fake, "get_namespaced_custom_object", lambda *a: reads.append(a[-1]) or get(*a))
    handlers.run_once(runtime, NS, NAME, lambda: handlers.quiet_requeue(runtime, NS, NAME))
    assert reads == [NAME, NAME]  # the pass's read, and the one after the 409
    assert fake.created == ["job-1", "job-2"] and fake.status["attempt"] == 2
    assert fake.status["podName"] == "job-2" and fake.status["restarts"]["preemption"] == 1


def test_what_the_writes_return_says_enough_only_for_status_and_pod_ends() -> None:
    """after_writes: the World after a step's writes, only where they show everything that changed."""
    world = decision_world(pods=[decision_pod("job-1", exit_code=75, deleted=True)])
    job = {"metadata": {"generation": world.generation, "resourceVersion": "7"}, "status": {"attempt": 3}}
    ends = [actions.PatchStatus({}), actions.ReleasePod("job-1"), actions.DeletePod("job-1", 0, True)]
    following = handlers.after_writes(world, ends, executor.Written(job=job, pods={"job-1": None}), world.now)
    assert following is not None and following[1] == "7"
    assert following[0].status.attempt == 3 and following[0].pods == ()
    assert handlers.after_writes(world, ends, executor.Written(), world.now) is None  # no status write
    created = [*ends, actions.CreatePod(2, "run", {}, "AttemptCreated", "")]  # the read cannot show the pod
    assert handlers.after_writes(world, created, executor.Written(job=job), world.now) is None
    edited = {**job, "metadata": {"generation": world.generation + 1, "resourceVersion": "8"}}
    assert handlers.after_writes(world, ends, executor.Written(job=edited), world.now) is None  # spec changed
