"""cache.py and the loop's use of it: the World assembled from what the watches said is the World read from
the API; a job at rest is looked at without a request; a pass that would act, or one the cache cannot answer,
goes to the API; node changes wake exactly the jobs with a pod there; wake-up timing; the bound on
concurrent API passes."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import json
import math
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest
from finetune_operator import decisions, finalizers, handlers, views
from finetune_operator.cache import ACCESS_KINDS, WatchCache, cached_world
from finetune_operator.runtime import OperatorConfig, Runtime

from tests.unit.operator.test_handlers import NAME, NS, FakeCluster

KEY = (NS, NAME)
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def ready_node(name: str, ready: str = "True", **extra: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name, **extra},
        "status": {
            "conditions": [{"type": "Ready", "status": ready, "lastTransitionTime": "2026-01-01T00:00:00Z"}]
        },
    }


class CountingApi:
    """The fake cluster, counting every client call (the point: none while a job is at rest)."""

    def __init__(self, fake: FakeCluster) -> None:
        self.fake, self.calls = fake, 0

    def __getattr__(self, name: str) -> Any:
        target = getattr(self.fake, name)
        if not callable(target):
            return target

        def counted(*args: Any, **kw: Any) -> Any:
            self.calls += 1
            return target(*args, **kw)

        return counted


@pytest.fixture
def fake() -> FakeCluster:
    return FakeCluster()


@pytest.fixture
def api(fake: FakeCluster) -> CountingApi:
    return CountingApi(fake)


@pytest.fixture
def runtime(api: CountingApi, monkeypatch: pytest.MonkeyPatch) -> Runtime:
    state = Runtime(config=OperatorConfig(background_events=False))
    monkeypatch.setattr(state, "apis", lambda: (api, api, api))
    return state


def running(fake: FakeCluster, pod: str, node: str) -> None:
    fake.pods[pod]["spec"]["nodeName"] = node
    fake.pods[pod]["status"] = {
        "phase": "Running",
        "containerStatuses": [
            {"name": "trainer", "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}}
        ],
    }


def watch_everything(runtime: Runtime, fake: FakeCluster, nodes: dict[str, dict[str, Any]]) -> None:
    """What the kopf event handlers would have put into the cache by now."""
    runtime.cache.observe_job(KEY, copy.deepcopy(fake.job))
    runtime.cache.pods.pop(KEY, None)
    for pod in fake.pods.values():
        runtime.cache.observe_pod(KEY, copy.deepcopy(pod))
    for name, node in nodes.items():
        runtime.cache.observe_node(name, node)
    for key, obj in fake.other.items():
        kind = key.split("/", 1)[0]
        if kind == "PersistentVolumeClaim":
            runtime.cache.observe_claim(NS, copy.deepcopy(obj))
        elif kind in ACCESS_KINDS:
            runtime.cache.observe_access(KEY, kind, copy.deepcopy(obj))


def serve_nodes(fake: FakeCluster, monkeypatch: pytest.MonkeyPatch, nodes: dict[str, dict[str, Any]]) -> None:
    monkeypatch.setattr(fake, "read_node", lambda name, **_: SimpleNamespace(data=json.dumps(nodes[name])))


@pytest.mark.parametrize("ready", ["True", "Unknown"])
def test_the_cached_world_is_the_world_read_from_the_api(
    fake: FakeCluster, runtime: Runtime, monkeypatch: pytest.MonkeyPatch, ready: str
) -> None:
    nodes = {"n1": ready_node("n1", ready=ready), "other": ready_node("other")}
    serve_nodes(fake, monkeypatch, nodes)
    handlers.run_once(runtime, NS, NAME)  # attempt 1 created, with its claim
    running(fake, "job-1", "n1")
    fake.other["PersistentVolumeClaim/job-checkpoints"]["status"] = {"accessModes": ["ReadWriteMany"]}
    read = handlers.read_world(runtime, NS, NAME)
    assert read is not None
    watch_everything(runtime, fake, nodes)
    cached = cached_world(runtime.cache, KEY, now=read[2].now, node_lost_seconds=120.0)
    assert cached is not None
    assert cached.world == read[2]
    assert (cached.uid, cached.resource_version) == (read[1], read[3])
    assert cached.world.nodes == {"n1": runtime.cache.nodes["n1"]} and cached.world.pods[0].running
    assert cached.world.claim is not None and cached.world.claim.exists
    assert cached.world.shared_volume == (ready != "True")  # RWX offered by the volume, node in trouble


def test_a_job_at_rest_is_looked_at_without_a_request(
    fake: FakeCluster, api: CountingApi, runtime: Runtime
) -> None:
    handlers.run_once(runtime, NS, NAME)
    running(fake, "job-1", "n1")
    handlers.run_once(runtime, NS, NAME)  # phase Running recorded
    assert fake.status["phase"] == "Running"
    watch_everything(runtime, fake, {"n1": ready_node("n1")})
    before = api.calls
    for _ in range(3):  # decisions' own safety net for the node: a look in 30 s, from the cache too
        assert handlers.quiet_requeue(runtime, NS, NAME) == decisions.WATCH_NODE_SECONDS
    assert api.calls == before


def test_a_pass_that_would_act_goes_to_the_api(fake: FakeCluster, runtime: Runtime) -> None:
    handlers.run_once(runtime, NS, NAME)
    running(fake, "job-1", "n1")
    fake.end_pod("job-1", 75, evicted=True)
    watch_everything(runtime, fake, {"n1": ready_node("n1")})
    assert handlers.quiet_requeue(runtime, NS, NAME) is None  # the end would be recorded: read first
    handlers.run_once(runtime, NS, NAME)
    assert fake.status["restarts"]["preemption"] == 1 and fake.created == ["job-1", "job-2"]


def test_the_cache_stands_in_only_where_it_knows(fake: FakeCluster, runtime: Runtime) -> None:
    cache = WatchCache()
    look = lambda: cached_world(cache, KEY, now=NOW, node_lost_seconds=120.0)  # noqa: E731
    assert look() is None  # the job not seen yet
    handlers.run_once(runtime, NS, NAME)
    running(fake, "job-1", "n1")
    cache.observe_job(KEY, copy.deepcopy(fake.job))
    cache.observe_pod(KEY, copy.deepcopy(fake.pods["job-1"]))
    assert look() is None  # the pod's node not seen yet
    cache.observe_node("n1", ready_node("n1"))
    assert look() is not None
    deleting = copy.deepcopy(fake.job)
    deleting["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    cache.observe_job(KEY, deleting)
    assert look() is None  # releasing the pods of a deleting job is the API path's
    invalid = copy.deepcopy(fake.job)
    invalid["spec"]["training"]["max_steps"] = "many"
    invalid["metadata"]["generation"] += 1  # as the apiserver does on every spec change
    cache.observe_job(KEY, invalid)
    assert look() is None  # shown on the job by the API path
    cache.observe_job(KEY, {}, deleted=True)
    assert look() is None and KEY not in cache.pods
    managed = copy.deepcopy(fake.job)
    managed["metadata"]["managedFields"] = [{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}]
    cache.observe_job(KEY, managed)
    assert "managedFields" not in cache.jobs[KEY]["metadata"] and look() is not None


def test_a_queued_job_is_looked_at_from_the_cache_once_the_workload_watch_has_shown_its_workload(
    fake: FakeCluster,
) -> None:
    cache = WatchCache()
    queued = copy.deepcopy(fake.job)
    queued["metadata"]["labels"] = {"kueue.x-k8s.io/queue-name": "team-a"}
    cache.observe_job(KEY, queued)
    look = lambda: cached_world(cache, KEY, now=NOW, node_lost_seconds=120.0)  # noqa: E731
    assert look() is None  # no Workload seen: not created yet, or Kueue absent; the API says which
    workload = {
        "metadata": {"name": f"{NAME}-kueue", "labels": {"finetune.dev/job": NAME}},
        "spec": {"queueName": "team-a"},
        "status": {"conditions": [{"type": "Admitted", "status": "True"}]},
    }
    cache.observe_workload(KEY, workload)
    assembled = look()
    assert assembled is not None
    world = assembled.world
    assert (world.queue, world.workload_watched, world.kueue_installed) == ("team-a", True, True)
    assert world.workload is not None and world.workload.admitted and world.next_resources_key
    cache.observe_workload(KEY, {"metadata": {"name": "someone-else"}}, deleted=True)
    assert look() is not None  # a deletion of another name leaves it
    cache.observe_workload(KEY, workload, deleted=True)
    assert look() is None


def test_claim_events_keep_what_decisions_read_and_wake_the_job_using_it(fake: FakeCluster) -> None:
    runtime = Runtime(config=OperatorConfig(background_events=False))
    memo = {"runtime": runtime}
    runtime.wakes[KEY] = asyncio.Event()
    runtime.wakes[(NS, "other")] = asyncio.Event()
    runtime.cache.observe_job(KEY, copy.deepcopy(fake.job))
    shared = copy.deepcopy(fake.job)
    shared["spec"]["checkpoint"] = {"existingClaimName": "team-claim"}
    runtime.cache.observe_job((NS, "other"), shared)
    old = {
        "metadata": {
            "name": "job-checkpoints",
            "namespace": NS,
            "deletionTimestamp": "2026-01-01T00:00:00Z",
            "ownerReferences": [{"kind": "FineTuneJob", "uid": "previous", "name": NAME}],
            "annotations": {"big": "x" * 1000},
        },
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
        "status": {"phase": "Bound", "accessModes": ["ReadWriteOnce"]},
    }

    async def event(kind: str, claim: dict[str, Any]) -> None:
        name = claim["metadata"]["name"]
        await handlers.claim_event(event={"type": kind, "object": claim}, namespace=NS, name=name, memo=memo)

    asyncio.run(event("MODIFIED", old))
    assert runtime.wakes[KEY].is_set() and not runtime.wakes[(NS, "other")].is_set()
    kept = runtime.cache.claims[(NS, "job-checkpoints")]
    assert "annotations" not in kept["metadata"]
    assert views.claim_view("job-checkpoints", kept) == views.claim_view("job-checkpoints", old)
    runtime.wakes[KEY].clear()
    asyncio.run(event("DELETED", old))
    assert runtime.wakes[KEY].is_set() and (NS, "job-checkpoints") not in runtime.cache.claims
    asyncio.run(event("ADDED", {"metadata": {"name": "team-claim"}}))
    assert runtime.wakes[(NS, "other")].is_set()


def test_pod_events_keep_the_pods_of_each_job() -> None:
    cache = WatchCache()
    pod = {"metadata": {"name": "job-1"}, "spec": {"nodeName": "n1"}, "status": {"phase": "Running"}}
    cache.observe_pod(KEY, pod)
    cache.observe_pod((NS, "other"), {**pod, "metadata": {"name": "other-1"}})
    assert [p.name for p in cache.pods[KEY].values()] == ["job-1"]
    assert sorted(cache.jobs_on_node("n1")) == [(NS, "job"), (NS, "other")]
    cache.observe_pod(KEY, pod, deleted=True)
    assert KEY not in cache.pods and cache.jobs_on_node("n1") == [(NS, "other")]


def test_only_node_changes_that_decisions_see_wake_jobs() -> None:
    cache = WatchCache()
    assert cache.observe_node("n1", ready_node("n1"))  # first sight
    heartbeat = ready_node("n1", resourceVersion="2")
    heartbeat["status"]["conditions"][0]["lastHeartbeatTime"] = "2026-01-01T00:05:00Z"
    assert not cache.observe_node("n1", heartbeat)  # kubelet status report, nothing changed
    assert cache.observe_node("n1", ready_node("n1", ready="Unknown"))
    tainted = ready_node("n1", ready="Unknown")
    tainted["spec"] = {"taints": [{"key": "node.kubernetes.io/out-of-service", "effect": "NoExecute"}]}
    assert cache.observe_node("n1", tainted)
    assert cache.observe_node("n1", None) and "n1" not in cache.nodes
    assert not cache.observe_node("n1", None)


def test_node_event_wakes_the_jobs_on_that_node() -> None:
    runtime = Runtime(config=OperatorConfig(background_events=False))
    memo = {"runtime": runtime}
    for job, node in (("a", "n1"), ("b", "n2")):
        runtime.wakes[(NS, job)] = asyncio.Event()
        runtime.cache.observe_pod((NS, job), {"metadata": {"name": f"{job}-1"}, "spec": {"nodeName": node}})

    async def event(kind: str, node: dict[str, Any]) -> None:
        await handlers.node_event(event={"type": kind, "object": node}, name="n1", memo=memo)

    asyncio.run(event("ADDED", ready_node("n1")))
    assert runtime.wakes[(NS, "a")].is_set() and not runtime.wakes[(NS, "b")].is_set()
    runtime.wakes[(NS, "a")].clear()
    asyncio.run(event("MODIFIED", ready_node("n1", resourceVersion="9")))
    assert not runtime.wakes[(NS, "a")].is_set()  # a status report that changes nothing we look at
    asyncio.run(event("DELETED", ready_node("n1")))
    assert runtime.wakes[(NS, "a")].is_set()


def test_sleep_until_the_time_asked_for_or_an_event() -> None:
    assert handlers.sleep_seconds(5.0) == 5.0
    assert handlers.sleep_seconds(handlers.UNTIL_WOKEN) == math.inf  # no timer: only an event wakes it
    assert handlers.sleep_seconds(0.0) == handlers.IDLE_RECHECK_SECONDS


class ListingCluster(FakeCluster):
    """The fake cluster, plus the LISTs of the resync."""

    def __init__(self) -> None:
        super().__init__()
        self.nodes = ["n1"]
        self.node_bodies: dict[str, dict[str, Any]] = {}
        self.workloads: list[dict[str, Any]] = []

    def list_namespaced_custom_object(self, group: str, version: str, ns: str, plural: str, **_: Any) -> Any:
        if plural == "workloads":
            return SimpleNamespace(data=json.dumps({"items": self.workloads}))
        return {"items": [copy.deepcopy(self.job)]}

    def list_namespaced_persistent_volume_claim(self, namespace: str, **_: Any) -> Any:
        claims = [v for k, v in self.other.items() if k.startswith("PersistentVolumeClaim/")]
        return SimpleNamespace(data=json.dumps({"items": claims}))

    def list_node(self, **_: Any) -> Any:
        items = [self.node_bodies.get(n) or ready_node(n) for n in self.nodes]
        return SimpleNamespace(data=json.dumps({"items": items}))

    def _kind(self, kind: str) -> Any:
        items = [v for k, v in self.other.items() if k.startswith(f"{kind}/")]
        return SimpleNamespace(data=json.dumps({"items": items}))

    def list_namespaced_service_account(self, namespace: str, **_: Any) -> Any:
        return self._kind("ServiceAccount")

    def list_namespaced_role(self, namespace: str, **_: Any) -> Any:
        return self._kind("Role")

    def list_namespaced_role_binding(self, namespace: str, **_: Any) -> Any:
        return self._kind("RoleBinding")


def test_the_resync_drops_what_a_watch_missed_and_has_those_jobs_read_the_api(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = ListingCluster()
    runtime = Runtime(config=OperatorConfig(namespaces=[NS]))
    monkeypatch.setattr(runtime, "apis", lambda: (fake, fake, fake))
    handlers.run_once(runtime, NS, NAME)
    running(fake, "job-1", "n1")
    watch_everything(runtime, fake, {"n1": ready_node("n1"), "gone-node": ready_node("gone-node")})
    # a Workload deleted while the Workload watch was down, and one that is still there
    kept = {"metadata": {"name": "idle-kueue", "namespace": NS, "labels": {"finetune.dev/job": "idle"}}}
    fake.workloads = [kept]
    runtime.cache.observe_workload((NS, "idle"), kept)
    runtime.cache.observe_workload(
        (NS, "deleted-meanwhile"), {"metadata": {"name": "deleted-meanwhile-kueue"}}
    )
    ghost_pod = copy.deepcopy(fake.pods["job-1"])
    ghost_pod["metadata"]["name"] = "job-0"  # deleted while the pod watch was down: no DELETED event
    runtime.cache.observe_pod(KEY, ghost_pod)
    runtime.cache.observe_job((NS, "deleted-meanwhile"), copy.deepcopy(fake.job))
    del fake.other["Role/job-trainer"]  # deleted while the Role watch was down
    for key in (KEY, (NS, "deleted-meanwhile"), (NS, "idle")):
        runtime.wakes[key] = asyncio.Event()
    before = handlers.cached_keys(runtime.cache)
    listed = handlers.list_keys(runtime, [NS])
    assert listed.pods == {(KEY, "job-1")} and listed.jobs == {KEY} and listed.nodes == {"n1"}
    assert listed.claims == {(NS, "job-checkpoints")} and listed.workloads == {((NS, "idle"), "idle-kueue")}
    runtime.cache.observe_pod(KEY, {**ghost_pod, "metadata": {"name": "job-2"}})  # added after the list
    woken = handlers.resync(runtime, before, listed)
    assert woken == [(NS, "deleted-meanwhile"), KEY]
    assert runtime.reread == {(NS, "deleted-meanwhile"), KEY} and not runtime.wakes[(NS, "idle")].is_set()
    assert sorted(runtime.cache.pods[KEY]) == ["job-1", "job-2"]  # the ghost gone, the newcomer kept
    assert (NS, "deleted-meanwhile") not in runtime.cache.jobs and set(runtime.cache.nodes) == {"n1"}
    assert set(runtime.cache.workloads) == {(NS, "idle")}
    assert set(runtime.cache.access[KEY]) == {"ServiceAccount", "RoleBinding"}  # the Role dropped
    assert not runtime.cache.has_trainer_access(KEY, "job-trainer", "uid-1")
    now_listed = dataclasses.replace(listed, pods=listed.pods | {(KEY, "job-2")})
    assert handlers.resync(runtime, handlers.cached_keys(runtime.cache), now_listed) == []  # nothing else


def test_the_resync_catches_a_node_change_the_watch_missed(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = ListingCluster()
    fake.nodes = ["n1", "n2"]
    runtime = Runtime(config=OperatorConfig(namespaces=[NS]))
    monkeypatch.setattr(runtime, "apis", lambda: (fake, fake, fake))
    handlers.run_once(runtime, NS, NAME)
    running(fake, "job-1", "n1")
    watch_everything(runtime, fake, {"n1": ready_node("n1"), "n2": ready_node("n2")})
    runtime.wakes[KEY] = asyncio.Event()
    # n1 went NotReady and n2 got the out-of-service taint, and the node watch said nothing
    fake.node_bodies["n1"] = ready_node("n1", ready="False")
    fake.node_bodies["n2"] = {**ready_node("n2"), "spec": {"taints": [{"key": views.OUT_OF_SERVICE_TAINT}]}}
    before = handlers.cached_keys(runtime.cache)
    listed = handlers.list_keys(runtime, [NS])
    # meanwhile an event brought n2 back to what the cache had: newer than the list, it stays
    runtime.cache.observe_node("n2", {**ready_node("n2"), "metadata": {"name": "n2", "labels": {"x": "y"}}})
    assert handlers.resync(runtime, before, listed) == [KEY]  # the job with a pod on n1
    assert (
        runtime.cache.nodes["n1"].ready == "False" and runtime.wakes[KEY].is_set() and KEY in runtime.reread
    )
    assert not runtime.cache.nodes["n2"].out_of_service
    # the same relist again: nothing new
    runtime.reread.clear()
    assert handlers.resync(runtime, handlers.cached_keys(runtime.cache), listed) == []


def test_api_passes_run_within_the_bound_and_a_slow_one_holds_only_its_slot() -> None:
    runtime = Runtime(config=OperatorConfig(max_concurrent_passes=4))
    lock = threading.Lock()
    active = peak = 0
    finished: list[str] = []

    def api_pass(name: str, seconds: float) -> str:
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
        time.sleep(seconds)
        with lock:
            active -= 1
            finished.append(name)
        return name

    async def burst() -> list[str]:
        slow = asyncio.ensure_future(runtime.bounded(api_pass, "slow", 1.0))
        await asyncio.sleep(0.01)  # the slow call holds its slot first
        fast = [runtime.bounded(api_pass, f"pod-{i}", 0.02) for i in range(40)]
        return list(await asyncio.gather(slow, *fast))

    started = time.monotonic()
    results = asyncio.run(burst())
    took = time.monotonic() - started
    assert results[0] == "slow" and len(results) == 41
    assert peak == 4  # never more than the bound at once, and the bound is used
    assert finished[-1] == "slow"  # 40 passes went through the other 3 slots meanwhile
    assert took < 1.5  # ≈ max(1.0, 40 * 0.02 / 3): the slow call did not serialize the rest


def kopf_stop_flag() -> tuple[Any, Any]:
    """kopf's own daemon stop flag (what it passes as `stopped`) and the setter kopf keeps."""
    from kopf._cogs.aiokits import aioenums
    from kopf._core.intents import stoppers

    setter = stoppers.DaemonStopper()
    return aioenums.AsyncFlagWaiter(setter), setter


def test_the_loop_sleeps_until_woken_and_reads_the_api_only_to_act(
    fake: FakeCluster, api: CountingApi, runtime: Runtime
) -> None:
    """The daemon itself: first look from the API, then quiet until an event; an event that changes nothing
    costs no request; an event that needs action reads the API and acts."""

    async def scenario() -> tuple[int, int, int]:
        stopped, setter = kopf_stop_flag()
        memo = {"runtime": runtime}
        logger = __import__("logging").getLogger("test")
        loop_task = asyncio.ensure_future(
            handlers.job_loop(namespace=NS, name=NAME, stopped=stopped, logger=logger, memo=memo)
        )
        for _ in range(200):  # attempt 1 created by the first (API) pass
            await asyncio.sleep(0.01)
            if fake.created:
                break
        await asyncio.sleep(0.2)
        running(fake, "job-1", "n1")
        watch_everything(runtime, fake, {"n1": ready_node("n1")})
        runtime.wakes[KEY].set()
        await asyncio.sleep(0.2)  # phase Running recorded (a read and a write) ...
        assert fake.status["phase"] == "Running"
        watch_everything(runtime, fake, {"n1": ready_node("n1")})  # ... and the watch delivered it
        at_rest = api.calls
        for _ in range(5):  # events that change nothing the decisions act on
            runtime.wakes[KEY].set()
            await asyncio.sleep(0.05)
        after_quiet_events = api.calls
        fake.end_pod("job-1", 75, evicted=True)
        watch_everything(runtime, fake, {})
        runtime.wakes[KEY].set()
        for _ in range(200):
            await asyncio.sleep(0.01)
            if len(fake.created) == 2:
                break
        setter.set()  # kopf stops the daemon: the loop ends at once, not after a poll
        await asyncio.wait_for(loop_task, 1)
        return at_rest, after_quiet_events, len(fake.created)

    at_rest, after_quiet_events, created = asyncio.run(scenario())
    assert after_quiet_events == at_rest
    assert created == 2 and fake.status["restarts"]["preemption"] == 1


def test_the_orphan_sweep_reads_only_the_jobs_of_pods_that_may_be_orphans(
    fake: FakeCluster, runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    handlers.run_once(runtime, NS, NAME)
    runtime.cache = WatchCache()  # the pass put what its writes returned in it; a sweep at start-up has none
    reads: list[str] = []
    get = fake.get_namespaced_custom_object

    def counted_get(*args: Any) -> dict[str, Any]:
        reads.append(args[-1])
        return get(*args)

    monkeypatch.setattr(fake, "get_namespaced_custom_object", counted_get)
    assert finalizers.release_orphans(runtime, [NS]) == [] and reads == [NAME]  # cache empty: read
    watch_everything(runtime, fake, {})
    reads.clear()
    assert finalizers.release_orphans(runtime, [NS]) == [] and reads == []  # its job looks after it
    fake.delete_namespaced_pod("job-1", NS)  # deleting: is its end recorded? only the job can say
    assert finalizers.release_orphans(runtime, [NS]) == [] and reads == [NAME]
    reads.clear()
    fake.pods["job-1"]["metadata"].pop("deletionTimestamp")
    fake.pods["job-1"]["metadata"]["ownerReferences"] = [{"uid": "an-earlier-job-of-that-name"}]
    assert finalizers.release_orphans(runtime, [NS]) == [f"{NS}/job-1"] and reads == [NAME]


class Fleet:
    """Many jobs, each its own FakeCluster, behind one API whose every call takes `delay` seconds (`slow`'s
    calls `slow_delay`); counts how many calls are in flight at once."""

    SUFFIXES = ("-trainer-config", "-checkpoints", "-trainer")

    def __init__(self, names: list[str], delay: float, slow: str, slow_delay: float) -> None:
        self.fakes: dict[str, FakeCluster] = {}
        for name in names:
            fake = FakeCluster()
            fake.job["metadata"].update(name=name, uid=f"uid-{name}")
            self.fakes[name] = fake
        self.delay, self.slow, self.slow_delay = delay, slow, slow_delay
        self.lock = threading.Lock()
        self.in_flight = self.peak = 0

    def job_of(self, method: str, args: tuple[Any, ...], kw: dict[str, Any]) -> str:
        if method.endswith("custom_object") or method.endswith("custom_object_status"):
            return str(args[4])
        if method == "list_namespaced_pod":
            return str(kw["label_selector"].split("=", 1)[1])
        if method in ("create_namespaced_event",):
            return str(args[1]["involvedObject"]["name"])
        name = str(args[1]["metadata"]["name"] if method.startswith("create") else args[0])
        for suffix in self.SUFFIXES:
            if name.endswith(suffix):
                return name[: -len(suffix)]
        return name.rsplit("-", 1)[0]  # a pod <job>-<attempt>

    def __getattr__(self, method: str) -> Any:
        def call(*args: Any, **kw: Any) -> Any:
            if method == "read_node":
                return SimpleNamespace(data=json.dumps(ready_node(args[0])))
            job = self.job_of(method, args, kw)
            with self.lock:
                self.in_flight += 1
                self.peak = max(self.peak, self.in_flight)
            try:
                time.sleep(self.slow_delay if job == self.slow else self.delay)
                return getattr(self.fakes[job], method)(*args, **kw)
            finally:
                with self.lock:
                    self.in_flight -= 1

        return call


def test_a_burst_of_pod_ends_is_handled_concurrently_within_the_bound() -> None:
    """40 jobs' pods end at once (a drained pool); every API call takes 5 ms, one job's take 0.15 s. The
    loops act in parallel up to the bound, never beyond it, and the slow job holds up nobody."""
    names = [f"j{i:02d}" for i in range(40)]
    fleet = Fleet(names, delay=0.005, slow="", slow_delay=0.15)
    runtime = Runtime(config=OperatorConfig(max_concurrent_passes=8))
    runtime.apis = lambda: (fleet, fleet, fleet)  # type: ignore[method-assign]

    def observe_all() -> None:
        for name, fake in fleet.fakes.items():
            key = (NS, name)
            runtime.cache.observe_job(key, copy.deepcopy(fake.job))
            runtime.cache.pods.pop(key, None)
            for pod in fake.pods.values():
                runtime.cache.observe_pod(key, copy.deepcopy(pod))
        runtime.cache.observe_node("n1", ready_node("n1"))

    async def until(done: Callable[[], bool], timeout: float) -> float:
        started = time.monotonic()
        while not done():
            assert time.monotonic() - started < timeout, "timed out"
            await asyncio.sleep(0.01)
        return time.monotonic() - started

    async def scenario() -> tuple[float, float]:
        flags = [kopf_stop_flag() for _ in names]
        logger = __import__("logging").getLogger("test")
        memo = {"runtime": runtime}
        loops = [
            asyncio.ensure_future(
                handlers.job_loop(namespace=NS, name=name, stopped=flag, logger=logger, memo=memo)
            )
            for name, (flag, _) in zip(names, flags, strict=True)
        ]
        await until(lambda: all(f.created for f in fleet.fakes.values()), 30)
        for fake in fleet.fakes.values():
            pod = next(iter(fake.pods))
            running(fake, pod, "n1")
            fake.job["status"]["phase"] = "Running"
        observe_all()
        await asyncio.sleep(0.5)  # at rest
        fleet.slow = "j00"  # from now on one job's calls are slow
        for fake in fleet.fakes.values():
            fake.end_pod(next(iter(fake.pods)), 75, evicted=True)  # all at once
        observe_all()
        for name in names:
            runtime.wakes[(NS, name)].set()
        others = await until(lambda: all(len(fleet.fakes[n].created) == 2 for n in names[1:]), 30)
        slow_still_busy = len(fleet.fakes["j00"].created) < 2
        fleet.slow_delay = fleet.delay  # let it finish
        await until(lambda: len(fleet.fakes["j00"].created) == 2, 30)
        for _, setter in flags:
            setter.set()
        await asyncio.wait_for(asyncio.gather(*loops), 5)
        return others, slow_still_busy

    others, slow_still_busy = asyncio.run(scenario())
    print(f"39 replacements in {others:.2f} s, peak {fleet.peak} calls at once")
    # never more calls at once than the passes allowed (each pass reads its claim beside its pods) and the
    # Event threads
    assert fleet.peak <= 8 * 2 + 4
    assert fleet.peak >= 6  # and the bound is used: the burst is not worked off one by one
    # 39 replacements, each about 25 calls of 5 ms: about 5 s one after another, 0.6 s eight at a time. The
    # slow job's pass (about 25 calls of 0.15 s) runs meanwhile in its own slot and ends last.
    assert others < 2.5, others
    assert slow_still_busy
    for name in names:
        status = fleet.fakes[name].status
        assert status["restarts"]["preemption"] == 1 and status["attempt"] == 2, name


def test_a_namespace_being_deleted_has_its_jobs_read_the_api() -> None:
    """kopf stops watching a terminating namespace: no job or pod event comes, so the namespace's own event
    must wake its jobs (on the cluster: test_deleting_the_namespace_of_a_running_job_completes_promptly)."""
    runtime = Runtime(config=OperatorConfig(background_events=False))
    memo = {"runtime": runtime}
    for key in ((NS, "a"), (NS, "b"), ("other", "a")):
        runtime.wakes[key] = asyncio.Event()

    async def event(kind: str, meta: dict[str, Any]) -> None:
        body = {"metadata": {"name": NS, **meta}}
        await handlers.namespace_event(event={"type": kind, "object": body}, name=NS, memo=memo)

    asyncio.run(event("MODIFIED", {"labels": {"x": "y"}}))
    assert not any(w.is_set() for w in runtime.wakes.values()) and not runtime.terminating
    asyncio.run(event("MODIFIED", {"deletionTimestamp": "2026-01-01T00:00:00Z"}))
    assert runtime.terminating == {NS}  # its loops now read the API every few seconds
    assert [k for k, w in runtime.wakes.items() if w.is_set()] == [(NS, "a"), (NS, "b")]
    asyncio.run(event("DELETED", {"deletionTimestamp": "2026-01-01T00:00:00Z"}))
    assert not runtime.terminating


def test_a_new_checkpoint_is_shown_on_the_pod_with_one_patch_and_no_read(
    fake: FakeCluster, api: CountingApi, runtime: Runtime
) -> None:
    """Each checkpoint of a running job: the cached look's only action annotates the pod. It is carried out
    without a read (before: a full read, the patch, a confirming read), and what the patch returned puts
    the cache at rest again."""
    handlers.run_once(runtime, NS, NAME)
    running(fake, "job-1", "n1")
    fake.job["status"].update(
        phase="Running", lastCheckpoint={"step": 6, "time": "2026-01-01T00:01:00Z", "path": "checkpoint-6"}
    )
    watch_everything(runtime, fake, {"n1": ready_node("n1")})
    step = handlers.cached_step(runtime, NS, NAME)
    assert step is not None and [type(a).__name__ for a in step.actions] == ["AnnotatePod"]
    before = api.calls
    handlers.annotations_only(runtime, NS, step)
    assert api.calls - before == 1
    annotations = fake.pods["job-1"]["metadata"]["annotations"]
    assert annotations["finetune.dev/last-checkpoint-time"] == "2026-01-01T00:01:00Z"
    assert annotations["finetune.dev/last-checkpoint-step"] == "6"
    again = handlers.cached_step(runtime, NS, NAME)
    assert again is not None and again.actions == []
