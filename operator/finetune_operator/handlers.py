"""Thin kopf handlers: keep the watch cache, wake a job's loop, ask decisions.reconcile what to do, have
executor.py do it.

One kopf daemon per FineTuneJob runs that loop, so a job's decisions are serialized (no two handlers racing
on the same job). The loop sleeps until something it depends on changes: a pod event, a relevant job change,
a change of the node its pod runs on or of its claim (cache.py keeps what the watches say), or the time
`reconcile` asked for (backoff deadline, pending timeout, node-lost timeout, claim recheck). Each look first
decides on the cached World, which costs no request; only a look that would act, the first one, and one
after a failure read the job, its pods, nodes and claim from the API and decide again on that (`run_once`), at
most `max_concurrent_passes` such passes at once (Runtime.bounded). What the pass's writes return goes into
the cache, and a pass that acted ends with a cached look on that instead of a confirming read. So jobs at
rest cost no request, and the work follows the events. A safety resync every `resync_seconds` relists
everything once and drops from the cache what a watch missed the deletion of (a few LISTs, whatever the
number of jobs). All state that matters is in the job's status (attempt, counters, budgets, the pending
decision), so a restarted operator continues where the previous one stopped.

Single writer: every action is decided on a fresh API read, never on the cache (or, once per read, on that
read plus what the pass's own writes returned: `after_writes`); every status write of a pass is conditional on
the resourceVersion the pass read or its last write returned (a merge patch carrying
metadata.resourceVersion), and a pass that touches pods before writing status first checks that precondition
with an empty conditional patch. A 409 means someone else (another operator replica, the trainer) changed the
job since: the pass stops and the next one re-reads and decides again. So a decision computed on a stale read
is never recorded and never counted twice (executor.Fence). Leader election (leader.py, chart default) keeps a
second replica from acting at all. Pods no job loop will release: finalizers.py.

Over 400 lines: the kopf registrations, the per-job loop and the two ways its World is read (the
watch cache, the API with the job's Kueue Workload) share the runtime and the wake-ups. The API reads
(read_world, read_claim, read_workload) are the next piece to move out.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import kopf
from finetune_api.models import GROUP, PLURAL, VERSION, FineTuneJob, FineTuneJobStatus
from finetune_api.status import OperatorStatus
from finetune_api.trainer_config import InvalidManifest, parse_job
from kubernetes.client.rest import ApiException

from finetune_operator import builders, decisions, kueue, views
from finetune_operator.actions import (
    Action,
    AnnotatePod,
    Decided,
    DeletePod,
    Event,
    PatchStatus,
    Recovered,
    ReleasePod,
    Step,
    World,
)
from finetune_operator.cache import (
    Keys,
    assemble_world,
    cached_keys,
    cached_world,
    claim_needed,
    drop_ghosts,
    refresh_nodes,
    with_workload,
)
from finetune_operator.executor import StaleRead, Written, annotate_pod, execute
from finetune_operator.finalizers import (
    namespaces_in_scope,
    release_if_job_going,
    release_job_pods,
    release_orphan,
    release_orphans,
)
from finetune_operator.names import KOPF_FINALIZER, LABEL_JOB, POD_FINALIZER
from finetune_operator.runtime import Runtime, response_json, runtime_of

log = logging.getLogger("finetune_operator")
#: Time stamps along the path event → wake-up → API pass → actions (DEBUG; bench/scale reads them).
trace = logging.getLogger("finetune_operator.trace")
#: The handlers below register here on import (kopf's default registry); main.py runs kopf with it, which also
#: keeps the import of this module from looking unused.
REGISTRY = kopf.get_default_registry()

#: The look after a requeue of 0 (no particular time), as before the cache.
IDLE_RECHECK_SECONDS = 30.0
#: What a pass returns when `reconcile` asked for no timer: sleep until an event (or the safety resync).
UNTIL_WOKEN = math.inf
#: How often a job in a namespace being deleted reads the API (kopf no longer watches that namespace).
TERMINATING_RECHECK_SECONDS = 5.0
MAX_PASSES = 20  # reconcile passes per wake-up before yielding (a safety net against ping-pong)


# ============================================================================================ kopf setup


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    # Handler progress and the last-handled spec live in annotations, not in status: status belongs to the
    # job's own fields (and the trainer patches it).
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="finetune.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix="finetune.dev")
    settings.persistence.finalizer = KOPF_FINALIZER
    settings.posting.level = logging.WARNING  # our own Events say what happened; kopf posts only problems
    settings.execution.max_workers = 32
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.request_timeout = 60
    runtime_of(memo).apis()


@kopf.on.startup()
async def start_orphan_sweep(memo: kopf.Memo, **_: Any) -> None:
    """The background rounds: the orphan sweep and the cache's safety resync."""
    loop, runtime = asyncio.get_running_loop(), runtime_of(memo)
    memo["orphan_sweep"] = loop.create_task(_orphan_sweep_loop(runtime))
    memo["resync"] = loop.create_task(_resync_loop(runtime))


@kopf.on.cleanup()
async def stop_orphan_sweep(memo: kopf.Memo, **_: Any) -> None:
    for name in ("orphan_sweep", "resync"):
        task = memo.get(name)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def _resync_loop(runtime: Runtime) -> None:
    """Every `resync_seconds`: relist, drop from the cache what a watch missed the deletion of, and have
    the jobs concerned read the API (cache.drop_ghosts). A few LISTs a round, whatever the number of jobs."""
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(runtime.config.resync_seconds)
        try:
            before = cached_keys(runtime.cache)
            listed = await loop.run_in_executor(None, list_keys, runtime, runtime.config.namespaces)
            resync(runtime, before, listed)
        except Exception as error:  # the next round tries again
            log.warning("cache resync failed: %s: %s", error.__class__.__name__, error)


def resync(runtime: Runtime, before: Keys, listed: Keys) -> list[tuple[str, str]]:
    """Apply a relist to the cache; the jobs whose loop will read the API next."""
    woken = []
    concerned = drop_ghosts(runtime.cache, before, listed) | refresh_nodes(runtime.cache, before, listed)
    for key in sorted(concerned):
        if _wake(runtime, key):
            runtime.reread.add(key)
            woken.append(key)
    if woken:
        log.info(
            "cache resync: %d job(s) read again", len(woken), extra={"jobs": ",".join(map("/".join, woken))}
        )
    return woken


def list_keys(runtime: Runtime, namespaces: list[str]) -> Keys:
    """What exists now in the served namespaces: jobs, trainer pods (by the job label), nodes, claims,
    Kueue Workloads, the trainers' ServiceAccounts, Roles and RoleBindings (by the job label)."""
    core, custom, rbac = runtime.apis()
    scope = namespaces_in_scope(core, namespaces)
    jobs: list[dict[str, Any]] = []
    pods: list[dict[str, Any]] = []
    claims: list[dict[str, Any]] = []
    access: list[tuple[str, dict[str, Any]]] = []  # (kind, object)
    if scope is None:
        jobs = custom.list_cluster_custom_object(GROUP, VERSION, PLURAL)["items"]
        pods = response_json(
            core.list_pod_for_all_namespaces(label_selector=LABEL_JOB, _preload_content=False)
        )["items"]
        claims = response_json(core.list_persistent_volume_claim_for_all_namespaces(_preload_content=False))[
            "items"
        ]
        for kind, list_all in (
            ("ServiceAccount", core.list_service_account_for_all_namespaces),
            ("Role", rbac.list_role_for_all_namespaces),
            ("RoleBinding", rbac.list_role_binding_for_all_namespaces),
        ):
            listed = response_json(list_all(label_selector=LABEL_JOB, _preload_content=False))["items"]
            access += [(kind, item) for item in listed]
    else:
        for namespace in scope:
            jobs += custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"]
            pods += response_json(
                core.list_namespaced_pod(namespace, label_selector=LABEL_JOB, _preload_content=False)
            )["items"]
            claims += response_json(
                core.list_namespaced_persistent_volume_claim(namespace, _preload_content=False)
            )["items"]
            for kind, list_in in (
                ("ServiceAccount", core.list_namespaced_service_account),
                ("Role", rbac.list_namespaced_role),
                ("RoleBinding", rbac.list_namespaced_role_binding),
            ):
                listed = response_json(list_in(namespace, label_selector=LABEL_JOB, _preload_content=False))[
                    "items"
                ]
                access += [(kind, item) for item in listed]
    nodes = response_json(core.list_node(_preload_content=False))["items"]
    workloads = list_workloads(custom, scope)

    def ns_name(item: dict[str, Any]) -> tuple[str, str]:
        meta = item.get("metadata") or {}
        return str(meta.get("namespace") or "default"), str(meta.get("name") or "")

    def job_label_key(item: dict[str, Any]) -> tuple[str, str]:
        """The namespace and the object's job label: the key the cache keeps it under."""
        return ns_name(item)[0], str(((item.get("metadata") or {}).get("labels") or {}).get(LABEL_JOB))

    return Keys(
        jobs=frozenset(ns_name(j) for j in jobs),
        pods=frozenset((job_label_key(p), ns_name(p)[1]) for p in pods),
        nodes=frozenset(str((n.get("metadata") or {}).get("name")) for n in nodes),
        claims=frozenset(ns_name(c) for c in claims),
        workloads=frozenset((job_label_key(w), ns_name(w)[1]) for w in workloads),
        access=frozenset((job_label_key(o), kind, ns_name(o)[1]) for kind, o in access),
        node_views=tuple(
            (name, views.node_view(name, n))
            for n in nodes
            for name in [str((n.get("metadata") or {}).get("name"))]
        ),
    )


def list_workloads(custom: Any, scope: list[str] | None) -> list[dict[str, Any]]:
    """The Kueue Workloads the operator owns (by the job label) in scope (None: every namespace); none
    where Kueue is not installed (404) or the operator may not list them (an older chart: 403)."""
    try:
        if scope is None:
            return list(
                response_json(
                    custom.list_cluster_custom_object(
                        kueue.GROUP,
                        kueue.VERSION,
                        kueue.PLURAL,
                        label_selector=LABEL_JOB,
                        _preload_content=False,
                    )
                )["items"]
            )
        found: list[dict[str, Any]] = []
        for namespace in scope:
            found += response_json(
                custom.list_namespaced_custom_object(
                    kueue.GROUP,
                    kueue.VERSION,
                    namespace,
                    kueue.PLURAL,
                    label_selector=LABEL_JOB,
                    _preload_content=False,
                )
            )["items"]
        return found
    except ApiException as error:
        if error.status in (403, 404):
            return []
        raise


async def _orphan_sweep_loop(runtime: Runtime) -> None:
    """At start-up and then periodically: release trainer pods whose job can no longer do it."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            released = await loop.run_in_executor(None, release_orphans, runtime, runtime.config.namespaces)
            if released:
                log.info(
                    "released %d orphaned trainer pod(s)", len(released), extra={"pods": ",".join(released)}
                )
        except Exception as error:  # the next round tries again
            log.warning("orphan sweep failed: %s: %s", error.__class__.__name__, error)
        if runtime.config.orphan_sweep_seconds <= 0:
            return
        await asyncio.sleep(runtime.config.orphan_sweep_seconds)


@kopf.on.probe(id="jobs")
def probe_jobs(memo: kopf.Memo, **_: Any) -> int:
    return len(runtime_of(memo).wakes)


# ============================================================================================ events


def _fingerprint(body: kopf.Body, status: FineTuneJobStatus) -> Any:
    phase = status.phase
    pending = status.pending
    return (
        body.get("metadata", {}).get("generation"),
        body.get("metadata", {}).get("deletionTimestamp"),
        phase,
        json.dumps(pending.model_dump(by_alias=True) if pending else None, sort_keys=True),
        status.last_checkpoint.time if status.last_checkpoint else None,
        status.step if phase in (None, "Pending", "Restarting") else None,
        status.pod_name,
    )


@kopf.on.event(GROUP, VERSION, PLURAL)
async def job_event(
    event: kopf.RawEvent,
    body: kopf.Body,
    namespace: str | None,
    name: str,
    memo: kopf.Memo,
    **_: Any,
) -> None:
    runtime = runtime_of(memo)
    namespace = namespace or "default"
    key = (namespace, name)
    if event.get("type") == "DELETED":
        runtime.metrics.forget_job(namespace, name)
        runtime.fingerprints.pop(key, None)
        runtime.cache.observe_job(key, {}, deleted=True)
        return
    runtime.cache.observe_job(key, dict(event.get("object") or body))
    status = FineTuneJobStatus.model_validate(body.get("status") or {})
    runtime.metrics.observe_job(namespace, name, status)
    fingerprint = _fingerprint(body, status)
    if runtime.fingerprints.get(key) != fingerprint:
        runtime.fingerprints[key] = fingerprint
        _wake(runtime, key)


@kopf.on.event("", "v1", "pods", labels={LABEL_JOB: kopf.PRESENT})
async def pod_event(
    event: kopf.RawEvent,
    body: kopf.Body,
    namespace: str | None,
    labels: kopf.Labels,
    memo: kopf.Memo,
    **_: Any,
) -> None:
    runtime = runtime_of(memo)
    namespace = namespace or "default"
    key = (namespace, labels[LABEL_JOB])
    runtime.cache.observe_pod(key, dict(event.get("object") or body), deleted=event.get("type") == "DELETED")
    if trace.isEnabledFor(logging.DEBUG):
        trace.debug(
            "pod event %s %s%s",
            event.get("type"),
            body.get("metadata", {}).get("name"),
            " deleting" if body.get("metadata", {}).get("deletionTimestamp") else "",
            extra={"finetunejob": "/".join(key)},
        )
    if _wake(runtime, key):
        return
    meta = body.get("metadata", {})
    if meta.get("deletionTimestamp") and POD_FINALIZER in (meta.get("finalizers") or []):
        # A pod whose job is gone (deleted with it): nobody will record its end, let it go.
        await asyncio.get_running_loop().run_in_executor(None, release_orphan, runtime, dict(body), namespace)


@kopf.on.event("", "v1", "nodes")
async def node_event(event: kopf.RawEvent, name: str, memo: kopf.Memo, **_: Any) -> None:
    """A node's readiness, out-of-service taint or existence changed: wake the jobs with a pod there (a
    taint or the Node's deletion sends no pod event). Only the few facts in views.NodeView are kept."""
    runtime = runtime_of(memo)
    node = None if event.get("type") == "DELETED" else dict(event.get("object") or {})
    if runtime.cache.observe_node(name, node):
        for key in runtime.cache.jobs_on_node(name):
            _wake(runtime, key)


@kopf.on.event("", "v1", "persistentvolumeclaims")
async def claim_event(
    event: kopf.RawEvent, namespace: str | None, name: str, memo: kopf.Memo, **_: Any
) -> None:
    """A checkpoint claim appeared, changed or went (a job waiting for the previous job's claim to go)."""
    runtime = runtime_of(memo)
    namespace = namespace or "default"
    claim = dict(event.get("object") or {})
    runtime.cache.observe_claim(namespace, claim, deleted=event.get("type") == "DELETED")
    for key in runtime.cache.jobs_using_claim(namespace, name):
        _wake(runtime, key)


@kopf.on.event(kueue.GROUP, kueue.VERSION, kueue.PLURAL, labels={LABEL_JOB: kopf.PRESENT})
async def workload_event(
    event: kopf.RawEvent, namespace: str | None, labels: kopf.Labels, memo: kopf.Memo, **_: Any
) -> None:
    """Kueue admitted, evicted, deactivated or finished a job's Workload: wake the job (admission and
    eviction send no job or pod event). kopf watches Workloads only where Kueue's CRD is installed, and
    starts when it is installed later."""
    runtime = runtime_of(memo)
    key = (namespace or "default", labels[LABEL_JOB])
    workload = dict(event.get("object") or {})
    runtime.cache.observe_workload(key, workload, deleted=event.get("type") == "DELETED")
    _wake(runtime, key)


@kopf.on.event("", "v1", "serviceaccounts", labels={LABEL_JOB: kopf.PRESENT})
async def service_account_event(
    event: kopf.RawEvent, namespace: str | None, labels: kopf.Labels, memo: kopf.Memo, **_: Any
) -> None:
    """The trainer's ServiceAccount, Role and RoleBinding (these three handlers): known to exist, a
    replacement pod does not create them again (cache.ACCESS_KINDS). Nothing to wake: no decision uses
    them."""
    _observe_access(event, namespace, labels, memo, "ServiceAccount")


@kopf.on.event("rbac.authorization.k8s.io", "v1", "roles", labels={LABEL_JOB: kopf.PRESENT})
async def role_event(
    event: kopf.RawEvent, namespace: str | None, labels: kopf.Labels, memo: kopf.Memo, **_: Any
) -> None:
    _observe_access(event, namespace, labels, memo, "Role")


@kopf.on.event("rbac.authorization.k8s.io", "v1", "rolebindings", labels={LABEL_JOB: kopf.PRESENT})
async def role_binding_event(
    event: kopf.RawEvent, namespace: str | None, labels: kopf.Labels, memo: kopf.Memo, **_: Any
) -> None:
    _observe_access(event, namespace, labels, memo, "RoleBinding")


def _observe_access(
    event: kopf.RawEvent, namespace: str | None, labels: kopf.Labels, memo: kopf.Memo, kind: str
) -> None:
    key = (namespace or "default", labels[LABEL_JOB])
    obj = dict(event.get("object") or {})
    runtime_of(memo).cache.observe_access(key, kind, obj, deleted=event.get("type") == "DELETED")


@kopf.on.event("", "v1", "namespaces")
async def namespace_event(event: kopf.RawEvent, name: str, memo: kopf.Memo, **_: Any) -> None:
    """A namespace being deleted: kopf stops watching it, so its jobs' loops would hear nothing more (no job
    or pod event; the namespace controller deletes the job some time later). Until the namespace is gone
    its loops read the API every TERMINATING_RECHECK_SECONDS: a deleting job releases its pods and kopf's
    finalizer."""
    runtime = runtime_of(memo)
    meta = (event.get("object") or {}).get("metadata") or {}
    if event.get("type") == "DELETED":
        runtime.terminating.discard(name)
    elif meta.get("deletionTimestamp") and name not in runtime.terminating:
        runtime.terminating.add(name)  # from now on its loops read the API every few seconds
        for key in [k for k in runtime.wakes if k[0] == name]:
            _wake(runtime, key)


def _wake(runtime: Runtime, key: tuple[str, str]) -> bool:
    """Wake the job's loop; False when it has none (the job is gone or not served)."""
    wake = runtime.wakes.get(key)
    if wake is None:
        return False
    if not wake.is_set():
        runtime.woken_at.setdefault(key, time.monotonic())
    wake.set()
    return True


# ============================================================================================ the loop


@kopf.daemon(GROUP, VERSION, PLURAL, cancellation_timeout=10.0, id="reconcile")
async def job_loop(
    namespace: str | None,
    name: str,
    stopped: kopf.DaemonStopped,
    logger: kopf.Logger,
    memo: kopf.Memo,
    **_: Any,
) -> None:
    runtime = runtime_of(memo)
    namespace = namespace or "default"
    key = (namespace, name)
    wake = runtime.wakes.setdefault(key, asyncio.Event())
    stop = asyncio.ensure_future(_until_stopped(stopped.wait()))
    loop = asyncio.get_running_loop()
    failures = 0
    fresh = True  # the first look reads the API
    try:
        while not stopped:
            wake.clear()
            if key in runtime.reread:  # the resync dropped something of this job from the cache
                runtime.reread.discard(key)
                fresh = True
            terminating = namespace in runtime.terminating  # no watch events come from there any more
            fresh = fresh or terminating
            woken_at = runtime.woken_at.pop(key, None)
            try:
                look = None if fresh else cached_step(runtime, namespace, name)
                if look is not None and not look.actions:
                    requeue: float | None = _requeue(look)  # the cached World needs nothing: no request
                elif look is not None and all(isinstance(a, AnnotatePod) for a in look.actions):
                    # a new checkpoint to show on the pod: one patch, no read (annotations_only)
                    requeue = await runtime.bounded(annotations_only, runtime, namespace, look)
                else:  # act, or the cache cannot say: read the API and decide on that
                    if woken_at is not None and trace.isEnabledFor(logging.DEBUG):
                        trace.debug(
                            "look wants the API, %.3f s after the wake-up",
                            time.monotonic() - woken_at,
                            extra={"finetunejob": f"{namespace}/{name}"},
                        )
                    settle = None if terminating else _cached_look(runtime, namespace, name)
                    requeue = await runtime.bounded(run_once, runtime, namespace, name, settle)
                failures, fresh = 0, False
            except Exception as error:  # keep the loop alive; the API may be briefly unavailable
                failures += 1
                requeue = min(60.0, 1.0 * 2**failures)
                fresh = True  # and then read the API again
                logger.warning(
                    f"reconcile failed ({error.__class__.__name__}: {error}); again in {requeue:g} s"
                )
            if requeue is None:  # the job is gone or being deleted
                # Forget it (a re-created job of that name comes back with its next event; until then a
                # look reads the API).
                runtime.cache.observe_job(key, {}, deleted=True)
                break
            seconds = sleep_seconds(requeue)
            await _woken(wake, stop, min(seconds, TERMINATING_RECHECK_SECONDS) if terminating else seconds)
    finally:
        runtime.wakes.pop(key, None)
        stop.cancel()
    # Stopped because the job is deleted (namespace deletion, a cascade)? Its pods may already be deleting
    # and their events went to this loop: release them now, or they stay Terminating. (Later pod events
    # take the orphan path in pod_event, as the wake-up is gone.)
    with contextlib.suppress(Exception):
        await loop.run_in_executor(None, release_if_job_going, runtime, namespace, name)


async def _until_stopped(flag: Awaitable[Any]) -> None:
    await flag


async def _woken(wake: asyncio.Event, stop: asyncio.Future[Any], timeout: float) -> bool:
    """Wait for the wake-up, the daemon's stop, or the timeout; True if the wake-up came."""
    if wake.is_set() or timeout <= 0:
        return wake.is_set()
    waiter: asyncio.Future[Any] = asyncio.ensure_future(wake.wait())
    try:
        await asyncio.wait(
            {waiter, stop},
            timeout=None if math.isinf(timeout) else timeout,
            return_when=asyncio.FIRST_COMPLETED,
        )
    finally:
        waiter.cancel()
    return wake.is_set()


def sleep_seconds(requeue: float) -> float:
    """How long the loop sleeps unless woken: the time `reconcile` asked for (UNTIL_WOKEN: none), a requeue
    of 0 meaning no particular time (the old periodic look)."""
    return IDLE_RECHECK_SECONDS if requeue <= 0 else requeue


def cached_step(runtime: Runtime, namespace: str, name: str) -> Step | None:
    """Decide on the cached World (no request made); None when the cache cannot stand in for a read
    (cache.cached_world)."""
    assembled = cached_world(
        runtime.cache,
        (namespace, name),
        now=datetime.now(UTC),
        node_lost_seconds=runtime.config.node_lost_seconds,
    )
    return None if assembled is None else decisions.reconcile(assembled.world)


def quiet_requeue(runtime: Runtime, namespace: str, name: str) -> float | None:
    """The cached World's requeue when there is nothing to do (no request made); None when the API must be
    read: the decision would act (actions are decided on a fresh read), or the cache cannot say."""
    step = cached_step(runtime, namespace, name)
    return None if step is None or step.actions else _requeue(step)


def annotations_only(runtime: Runtime, namespace: str, step: Step) -> float:
    """A cached look whose only actions annotate the pod with the job's last checkpoint (a projection of
    status for schedulers that pick victims, never read back by a decision): carried out without a read.
    A stale cache writes an older checkpoint that the next job event corrects; a pod gone meanwhile is a 404.
    Before, each checkpoint of each running job cost a full read, the patch and a confirming read."""
    for action in step.actions:
        if isinstance(action, AnnotatePod):
            annotate_pod(runtime, namespace, action)
    return _requeue(step)


def _cached_look(runtime: Runtime, namespace: str, name: str) -> Callable[[], float | None]:
    """For run_once, after it acted: quiet_requeue on the event loop's thread, where the cache lives (the
    pass's own writes reach the cache before it: Runtime.observe and on_loop keep their order)."""
    return lambda: runtime.on_loop(quiet_requeue, runtime, namespace, name)


def _requeue(step: Step) -> float:
    return step.requeue_seconds if step.requeue_seconds is not None else UNTIL_WOKEN


def run_once(
    runtime: Runtime, namespace: str, name: str, settle: Callable[[], float | None] | None = None
) -> float | None:
    """Read the API and reconcile until nothing is left to do; the seconds until the next look (UNTIL_WOKEN:
    none asked; None: the job is gone).

    `settle`: after acting, decide on the cache instead of reading the API again (what the writes returned
    is in it: a pass whose work is done ends without a confirming read); its requeue, or None when that look
    would act (or cannot say). Then the pass decides once more on its own read plus what its writes returned
    (`after_writes`: a preempted pod's decision and release, then its replacement, with no read between),
    and after that reads the API again."""
    tracing = trace.isEnabledFor(logging.DEBUG)
    if tracing:
        trace.debug("API pass starts", extra={"finetunejob": f"{namespace}/{name}"})
    following: tuple[World, str] | None = None  # the World after the previous step's writes
    for _ in range(MAX_PASSES):
        started = time.monotonic()
        if following is None:
            world = read_world(runtime, namespace, name)
            if world is None:
                return None
            job, uid, state, resource_version = world
            vouched = False
        else:
            (state, resource_version), vouched, following = following, True, None
        step = decisions.reconcile(state)
        if tracing:
            read = time.monotonic()
            actions = ",".join(type(a).__name__ for a in step.actions) or "-"
        if not step.actions:
            if tracing:
                trace.debug(
                    "pass: read %.3f s, nothing to do",
                    read - started,
                    extra={"finetunejob": f"{namespace}/{name}"},
                )
            return _requeue(step)
        written = Written()
        try:
            wait = execute(runtime, job, uid, state, step.actions, resource_version, written, vouched)
        except StaleRead as stale:
            log.info("%s; reading it again", stale, extra={"finetunejob": f"{namespace}/{name}"})
            continue
        finally:
            if tracing:
                trace.debug(
                    "pass: read %.3f s, acted %.3f s: %s",
                    read - started,
                    time.monotonic() - read,
                    actions,
                    extra={"finetunejob": f"{namespace}/{name}"},
                )
        if wait is not None:  # the apiserver refused the next attempt: shown on the job, look again later
            return wait
        if settle is not None and (quiet := settle()) is not None:
            if tracing:
                trace.debug(
                    "pass: done, the cached look agrees", extra={"finetunejob": f"{namespace}/{name}"}
                )
            return quiet
        if not vouched and settle is not None:
            following = after_writes(state, step.actions, written, datetime.now(UTC))
    return 1.0


#: The actions whose writes' results show all they changed: status, Events, logs and metrics, pod ends.
_ENDS_ONLY = (PatchStatus, Event, Decided, Recovered, ReleasePod, DeletePod)


def after_writes(
    world: World, actions: list[Action], written: Written, now: datetime
) -> tuple[World, str] | None:
    """The World a step's `actions` leave: its read, with the job as the last status write returned it and
    each pod as its write returned it (or gone), and that job's resourceVersion. None where the writes do
    not say enough: no status write, a changed spec, a queued job, or an action other than status, Events and
    pod ends (a pod created or adopted, an annotation, Kueue's Workload: the read cannot show what those
    changed)."""
    body = written.job
    if body is None or world.queue is not None or not all(isinstance(a, _ENDS_ONLY) for a in actions):
        return None
    meta = body.get("metadata") or {}
    if int(meta.get("generation") or 0) != world.generation or not meta.get("resourceVersion"):
        return None
    pods = [p for p in world.pods if p.name not in written.pods]
    pods += [views.pod_view(pod) for pod in written.pods.values() if pod is not None]
    status = FineTuneJobStatus.model_validate(body.get("status") or {})
    following = dataclasses.replace(
        world, status=status, pods=tuple(sorted(pods, key=lambda p: p.name)), now=now
    )
    return following, str(meta["resourceVersion"])


def read_world(runtime: Runtime, namespace: str, name: str) -> tuple[FineTuneJob, str, World, str] | None:
    """The job, its uid, the World to decide on and the job's resourceVersion, read from the API (None: the
    job is going)."""
    core, custom, _ = runtime.apis()
    try:
        body = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    except ApiException as error:
        if error.status == 404:
            return None
        raise
    meta = body.get("metadata", {})
    if meta.get("deletionTimestamp"):
        # The garbage collector takes the pods (owner references) and, if asked, the volume; nobody will
        # record how the pods end, so they must not wait for us (foreground deletion waits for them).
        release_job_pods(core, namespace, name, meta.get("uid"))
        return None
    try:
        job = parse_job({**body, "status": None}, f"{namespace}/{name}")
    except InvalidManifest as error:
        _fail_invalid(custom, namespace, name, body, str(error))
        return None
    job.metadata.namespace = namespace
    # After the job (a pod list older than the job's status could miss the attempt it names), the reads are
    # independent: the claim (a job that may create a pod needs it) and the Workload go beside the pods.
    labels = meta.get("labels") or {}
    phase = (body.get("status") or {}).get("phase")
    claim_read = None
    if builders.has_job_claim(job) and claim_needed(phase, {}):  # needed whatever the nodes say
        claim_read = runtime.read_concurrently(read_claim, core, namespace, builders.pvc_name(job))
    workload_read = None
    if labels.get(kueue.LABEL_QUEUE_NAME):
        workload_read = runtime.read_concurrently(read_workload, custom, namespace, kueue.workload_name(name))
    pods_raw = response_json(
        core.list_namespaced_pod(namespace, label_selector=f"{LABEL_JOB}={name}", _preload_content=False)
    )
    pods = tuple(views.pod_view(p) for p in pods_raw.get("items") or [])
    nodes: dict[str, views.NodeView] = {}
    for pod in pods:
        if pod.node_name and pod.node_name not in nodes:
            try:
                node = response_json(core.read_node(pod.node_name, _preload_content=False))
            except ApiException as error:
                if error.status != 404:
                    raise
                node = None
            nodes[pod.node_name] = views.node_view(pod.node_name, node)
    claim: dict[str, Any] | None = None
    # Read once: the next pod needs it (a terminating claim), and a pod on a troubled node (is it shared?).
    if claim_read is not None:
        claim = claim_read.result()
    elif builders.has_job_claim(job) and claim_needed(phase, nodes):
        claim = read_claim(core, namespace, builders.pvc_name(job))
    read = assemble_world(
        name,
        body,
        job,
        pods,
        nodes,
        claim,
        now=datetime.now(UTC),
        node_lost_seconds=runtime.config.node_lost_seconds,
    )
    world = read.world
    if workload_read is not None:
        # A queued job: what Kueue decides, its Workload read from the API (a pass that may act decides
        # on fresh reads; cached looks take it from the watch).
        workload, kueue_installed = workload_read.result()
        world = with_workload(world, read.job, labels, workload, installed=kueue_installed, watched=False)
    return read.job, read.uid, world, read.resource_version


def read_claim(core: Any, namespace: str, name: str) -> dict[str, Any] | None:
    """The checkpoint claim as the API has it (None: there is none)."""
    try:
        return response_json(
            core.read_namespaced_persistent_volume_claim(name, namespace, _preload_content=False)
        )
    except ApiException as error:
        if error.status != 404:
            raise
        return None


def read_workload(custom: Any, namespace: str, name: str) -> tuple[kueue.WorkloadView | None, bool]:
    """The job's Kueue Workload, and whether Kueue's Workload API exists at all (a 404 for the object
    names it in the Status details; a 404 for the resource type does not)."""
    try:
        body = response_json(
            custom.get_namespaced_custom_object(
                kueue.GROUP, kueue.VERSION, namespace, kueue.PLURAL, name, _preload_content=False
            )
        )
    except ApiException as error:
        if error.status != 404:
            raise
        try:
            details = (json.loads(error.body or "{}") or {}).get("details") or {}
        except ValueError:
            details = {}
        if details.get("name") == name:
            return kueue.workload_view(name, None), True
        return None, False
    return kueue.workload_view(name, body), True


def _fail_invalid(custom: Any, namespace: str, name: str, body: dict[str, Any], text: str) -> None:
    status = FineTuneJobStatus.model_validate(body.get("status") or {})
    if status.phase == "Failed" and status.reason == "InvalidSpec":
        return
    custom.patch_namespaced_custom_object_status(
        GROUP,
        VERSION,
        namespace,
        PLURAL,
        name,
        {
            "metadata": {"resourceVersion": body["metadata"]["resourceVersion"]},
            "status": OperatorStatus.patch(phase="Failed", reason="InvalidSpec", message=text[:1024]),
        },
    )


__all__ = ["run_once"]
