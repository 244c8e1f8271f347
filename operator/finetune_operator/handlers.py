"""Thin kopf handlers: read the world, ask decisions.reconcile what to do, do it, repeat.

One kopf daemon per FineTuneJob runs that loop, so a job's decisions are serialized (no two handlers racing
on the same job). Pod events and relevant job changes wake the loop at once; otherwise it looks again when
`reconcile` asked (backoff deadline, pending timeout, node check) or every 30 s. All state that matters is
in the job's status (attempt, counters, budgets, the pending decision), so a restarted operator continues
where the previous one stopped.

Single writer: every status write of a pass is conditional on the resourceVersion the pass read (a merge
patch carrying metadata.resourceVersion), and a pass that touches pods before writing status first checks
that precondition with an empty conditional patch. A 409 means someone else (another operator replica, the
trainer) changed the job since: the pass stops and the next one re-reads and decides again. So a decision
computed on a stale read is never recorded and never counted twice. Leader election (leader.py, chart
default) keeps a second replica from acting at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from fnmatch import fnmatch
from typing import Any

import kopf
from finetune_api.models import GROUP, KIND, PLURAL, VERSION, FineTuneJob, FineTuneJobStatus
from finetune_api.trainer_config import InvalidManifest, parse_job
from kubernetes.client.rest import ApiException

from finetune_operator import builders, decisions, refusals, views
from finetune_operator.actions import (
    Action,
    AdoptPod,
    AnnotatePod,
    CreatePod,
    Decided,
    DeletePod,
    Event,
    PatchStatus,
    Recovered,
    ReleasePod,
    World,
)
from finetune_operator.names import KOPF_FINALIZER, LABEL_JOB, POD_FINALIZER, format_time
from finetune_operator.runtime import Runtime, runtime_of

log = logging.getLogger("finetune_operator")

IDLE_RECHECK_SECONDS = 30.0
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
    memo["orphan_sweep"] = asyncio.get_running_loop().create_task(_orphan_sweep_loop(runtime_of(memo)))


@kopf.on.cleanup()
async def stop_orphan_sweep(memo: kopf.Memo, **_: Any) -> None:
    task = memo.get("orphan_sweep")
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


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


def _fingerprint(body: kopf.Body) -> Any:
    status = body.get("status") or {}
    phase = status.get("phase")
    ckpt = status.get("lastCheckpoint") or {}
    return (
        body.get("metadata", {}).get("generation"),
        body.get("metadata", {}).get("deletionTimestamp"),
        phase,
        json.dumps(status.get("pending"), sort_keys=True),
        ckpt.get("time"),
        status.get("step") if phase in (None, "Pending", "Restarting") else None,
        status.get("podName"),
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
        return
    runtime.metrics.observe_job(namespace, name, dict(body.get("status") or {}))
    fingerprint = _fingerprint(body)
    if runtime.fingerprints.get(key) != fingerprint:
        runtime.fingerprints[key] = fingerprint
        wake = runtime.wakes.get(key)
        if wake is not None:
            wake.set()


@kopf.on.event("", "v1", "pods", labels={LABEL_JOB: kopf.PRESENT})
async def pod_event(
    body: kopf.Body, namespace: str | None, labels: kopf.Labels, memo: kopf.Memo, **_: Any
) -> None:
    runtime = runtime_of(memo)
    namespace = namespace or "default"
    key = (namespace, labels[LABEL_JOB])
    wake = runtime.wakes.get(key)
    if wake is not None:
        wake.set()
        return
    meta = body.get("metadata", {})
    if meta.get("deletionTimestamp") and POD_FINALIZER in (meta.get("finalizers") or []):
        # A pod whose job is gone (deleted with it): nobody will record its end, let it go.
        await asyncio.get_running_loop().run_in_executor(
            None, _release_orphan, runtime, dict(body), namespace
        )


def _release_orphan(runtime: Runtime, pod: dict[str, Any], namespace: str) -> None:
    core, custom, _ = runtime.apis()
    if orphaned(custom, namespace, pod, {}):
        _release(core, namespace, pod["metadata"]["name"])


def orphaned(custom: Any, namespace: str, pod: dict[str, Any], jobs: dict[str, Any]) -> bool:
    """Nobody will release this tracked pod: its job is gone, another job's, or being deleted; or the pod
    is deleting and its end is already recorded. `jobs` caches job reads (name → body or None)."""
    meta = pod["metadata"]
    job_name = (meta.get("labels") or {}).get(LABEL_JOB, "")
    if job_name not in jobs:
        try:
            jobs[job_name] = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, job_name)
        except ApiException as error:
            if error.status != 404:
                raise
            jobs[job_name] = None
    job = jobs[job_name]
    owners = {o.get("uid") for o in meta.get("ownerReferences") or []}
    if job is None or job["metadata"]["uid"] not in owners or job["metadata"].get("deletionTimestamp"):
        return True
    if not meta.get("deletionTimestamp"):
        return False  # its job lives: its loop handles the pod
    status = job.get("status") or {}
    attempt = views.pod_view(pod).attempt
    return (
        status.get("phase") in ("Succeeded", "Failed")
        or (status.get("pending") or {}).get("podName") == meta.get("name")
        or (attempt is not None and attempt < int(status.get("attempt") or 0))
    )


def release_job_pods(core: Any, namespace: str, name: str, uid: str | None) -> None:
    """Release every tracked pod of this job (it is being deleted: no end will be recorded)."""
    pods = _json(
        core.list_namespaced_pod(namespace, label_selector=f"{LABEL_JOB}={name}", _preload_content=False)
    )
    for pod in pods.get("items") or []:
        meta = pod.get("metadata") or {}
        owners = {o.get("uid") for o in meta.get("ownerReferences") or []}
        if POD_FINALIZER in (meta.get("finalizers") or []) and (uid is None or uid in owners):
            _release(core, namespace, meta["name"])


def _release_if_job_going(runtime: Runtime, namespace: str, name: str) -> None:
    core, custom, _ = runtime.apis()
    try:
        job = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    except ApiException as error:
        if error.status != 404:
            raise
        job = None
    if job is None or job["metadata"].get("deletionTimestamp"):
        release_job_pods(core, namespace, name, job["metadata"]["uid"] if job else None)
    if job is not None and job["metadata"].get("deletionTimestamp"):
        # Our daemon has stopped. In a terminating namespace kopf stops serving the namespace without
        # removing its finalizer, which would keep the job, and so the namespace, forever.
        _drop_kopf_finalizer(custom, job)


def _namespaces_in_scope(core: Any, namespaces: list[str]) -> list[str] | None:
    """The namespaces served: exact names, glob patterns matched against the cluster's; None = all."""
    if not namespaces:
        return None
    names = {n for n in namespaces if not any(c in n for c in "*?[")}
    patterns = [n for n in namespaces if n not in names]
    if patterns:
        listed = _json(core.list_namespace(_preload_content=False)).get("items") or []
        names |= {
            n["metadata"]["name"] for n in listed if any(fnmatch(n["metadata"]["name"], p) for p in patterns)
        }
    return sorted(names)


def _scoped_pods(core: Any, namespaces: list[str]) -> list[dict[str, Any]]:
    """Trainer pods (those with the job label) in the namespaces served."""
    scope = _namespaces_in_scope(core, namespaces)
    if scope is None:
        found = _json(core.list_pod_for_all_namespaces(label_selector=LABEL_JOB, _preload_content=False))
        return list(found.get("items") or [])
    items: list[dict[str, Any]] = []
    for namespace in scope:
        found = _json(core.list_namespaced_pod(namespace, label_selector=LABEL_JOB, _preload_content=False))
        items += found.get("items") or []
    return items


def release_orphans(runtime: Runtime, namespaces: list[str]) -> list[str]:
    """Release tracked trainer pods that no job loop will release (see `orphaned`); returns their names."""
    core, custom, _ = runtime.apis()
    released: list[str] = []
    jobs_by_ns: dict[str, dict[str, Any]] = {}
    for pod in _scoped_pods(core, namespaces):
        meta = pod["metadata"]
        if POD_FINALIZER not in (meta.get("finalizers") or []):
            continue
        namespace = meta["namespace"]
        if orphaned(custom, namespace, pod, jobs_by_ns.setdefault(namespace, {})):
            _release(core, namespace, meta["name"])
            released.append(f"{namespace}/{meta['name']}")
    return released


def _drop_kopf_finalizer(custom: Any, job: dict[str, Any]) -> bool:
    """Remove kopf's finalizer from a job whose daemon no longer runs (True if removed)."""
    meta = job["metadata"]
    finalizers = list(meta.get("finalizers") or [])
    if KOPF_FINALIZER not in finalizers:
        return False
    # A merge patch (the client sends custom-object patches as such) replacing the list, conditional on
    # the resourceVersion so that a concurrent change of the finalizers is not overwritten.
    body = {
        "metadata": {
            "finalizers": [f for f in finalizers if f != KOPF_FINALIZER],
            "resourceVersion": meta["resourceVersion"],
        }
    }
    try:
        custom.patch_namespaced_custom_object(GROUP, VERSION, meta["namespace"], PLURAL, meta["name"], body)
    except ApiException as error:
        if error.status not in (404, 409, 422):
            raise
        return False
    return True


def release_all_finalizers(runtime: Runtime, namespaces: list[str]) -> tuple[list[str], list[str]]:
    """Uninstall: with no operator left, release every trainer pod and drop kopf's finalizer from every
    FineTuneJob in scope, so deleting or draining them later does not hang. Returns (pods, jobs)."""
    core, custom, _ = runtime.apis()
    pods = []
    for pod in _scoped_pods(core, namespaces):
        meta = pod["metadata"]
        if POD_FINALIZER in (meta.get("finalizers") or []):
            _release(core, meta["namespace"], meta["name"])
            pods.append(f"{meta['namespace']}/{meta['name']}")
    jobs = []
    scope = _namespaces_in_scope(core, namespaces)
    if scope is None:
        listed = custom.list_cluster_custom_object(GROUP, VERSION, PLURAL)["items"]
    else:
        listed = [
            job
            for namespace in scope
            for job in custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"]
        ]
    for job in listed:
        if _drop_kopf_finalizer(custom, job):
            jobs.append(f"{job['metadata']['namespace']}/{job['metadata']['name']}")
    return pods, jobs


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
    loop = asyncio.get_running_loop()
    failures = 0
    try:
        while not stopped:
            wake.clear()
            try:
                requeue = await loop.run_in_executor(None, run_once, runtime, namespace, name)
                failures = 0
            except Exception as error:  # keep the loop alive; the API may be briefly unavailable
                failures += 1
                requeue = min(60.0, 1.0 * 2**failures)
                logger.warning(
                    f"reconcile failed ({error.__class__.__name__}: {error}); again in {requeue:g} s"
                )
            if requeue is None:  # the job is gone or being deleted
                break
            deadline = time.monotonic() + (IDLE_RECHECK_SECONDS if requeue <= 0 else requeue)
            while not stopped and not wake.is_set() and (left := deadline - time.monotonic()) > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), timeout=min(1.0, left))
    finally:
        runtime.wakes.pop(key, None)
    # Stopped because the job is deleted (namespace deletion, a cascade)? Its pods may already be deleting
    # and their events went to this loop: release them now, or they stay Terminating. (Later pod events
    # take the orphan path in pod_event, as the wake-up is gone.)
    with contextlib.suppress(Exception):
        await loop.run_in_executor(None, _release_if_job_going, runtime, namespace, name)


def run_once(runtime: Runtime, namespace: str, name: str) -> float | None:
    """Reconcile until nothing is left to do; the seconds until the next look (None: the job is gone)."""
    for _ in range(MAX_PASSES):
        world = read_world(runtime, namespace, name)
        if world is None:
            return None
        job, uid, state, resource_version = world
        step = decisions.reconcile(state)
        if not step.actions:
            return step.requeue_seconds if step.requeue_seconds is not None else IDLE_RECHECK_SECONDS
        try:
            wait = execute(runtime, job, uid, state, step.actions, resource_version)
        except StaleRead as stale:
            log.info("%s; reading it again", stale, extra={"finetunejob": f"{namespace}/{name}"})
            continue
        if wait is not None:  # the apiserver refused the next attempt: shown on the job, look again later
            return wait
    return 1.0


def read_world(runtime: Runtime, namespace: str, name: str) -> tuple[FineTuneJob, str, World, str] | None:
    """The job, its uid, the World to decide on and the job's resourceVersion (None: the job is going)."""
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
    uid = meta["uid"]
    try:
        job = parse_job({**body, "status": None}, f"{namespace}/{name}")
    except InvalidManifest as error:
        _fail_invalid(custom, namespace, name, body, str(error))
        return None
    job.metadata.namespace = namespace
    status = FineTuneJobStatus.model_validate(body.get("status") or {})
    pods_raw = _json(
        core.list_namespaced_pod(namespace, label_selector=f"{LABEL_JOB}={name}", _preload_content=False)
    )
    pods = tuple(views.pod_view(p) for p in pods_raw.get("items") or [])
    nodes: dict[str, views.NodeView] = {}
    for pod in pods:
        if pod.node_name and pod.node_name not in nodes:
            try:
                node = _json(core.read_node(pod.node_name, _preload_content=False))
            except ApiException as error:
                if error.status != 404:
                    raise
                node = None
            nodes[pod.node_name] = views.node_view(pod.node_name, node)
    node_trouble = any(n.exists and n.ready != "True" for n in nodes.values())
    claim: dict[str, Any] | None = None
    # Read once: the next pod needs it (a terminating claim), and a pod on a troubled node (is it shared?).
    if status.phase not in ("Succeeded", "Failed") or node_trouble:
        try:
            claim = _json(
                core.read_namespaced_persistent_volume_claim(
                    builders.pvc_name(job), namespace, _preload_content=False
                )
            )
        except ApiException as error:
            if error.status != 404:
                raise
    shared_volume = node_trouble and checkpoint_volume_shared(job, claim)
    world = World(
        name=name,
        uid=uid,
        generation=int(meta.get("generation") or 0),
        spec=job.spec,
        status=status,
        pods=pods,
        nodes=nodes,
        now=datetime.now(UTC),
        claim=views.claim_view(builders.pvc_name(job), claim),
        node_lost_seconds=runtime.config.node_lost_seconds,
        shared_volume=shared_volume,
    )
    return job, uid, world, str(meta.get("resourceVersion") or "")


def checkpoint_volume_shared(job: FineTuneJob, claim: dict[str, Any] | None) -> bool:
    """Whether the checkpoint claim may be mounted read-write on several nodes (ReadWriteMany requested, or
    offered by the bound volume: an NFS volume does not enforce a ReadWriteOnce request across nodes).
    `claim`: the claim as read (None: not there yet, the spec's access mode decides)."""
    if claim is None:
        return views.volume_shared([job.spec.checkpoint.access_mode])
    requested = (claim.get("spec") or {}).get("accessModes") or []
    offered = (claim.get("status") or {}).get("accessModes") or []
    return views.volume_shared([*requested, *offered] or [job.spec.checkpoint.access_mode])


def _json(response: Any) -> dict[str, Any]:
    return dict(json.loads(response.data))


def _fail_invalid(custom: Any, namespace: str, name: str, body: dict[str, Any], text: str) -> None:
    status = body.get("status") or {}
    if status.get("phase") == "Failed" and status.get("reason") == "InvalidSpec":
        return
    custom.patch_namespaced_custom_object_status(
        GROUP,
        VERSION,
        namespace,
        PLURAL,
        name,
        {
            "metadata": {"resourceVersion": body["metadata"]["resourceVersion"]},
            "status": {"phase": "Failed", "reason": "InvalidSpec", "message": text[:1024]},
        },
    )


# ============================================================================================ actions


class StaleRead(Exception):
    """A conditional write got 409: the job changed since this pass read it. Re-read and decide again."""


@dataclass
class Fence:
    """The job's resourceVersion this pass decided on. Every status write is conditional on it."""

    custom: Any
    namespace: str
    name: str
    resource_version: str
    vouched: bool = False  # a conditional write of this pass succeeded: the read was current then

    def patch_status(self, patch: dict[str, Any]) -> None:
        body: dict[str, Any] = {"status": patch}
        if self.resource_version:
            body["metadata"] = {"resourceVersion": self.resource_version}
        try:
            result = self.custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, self.namespace, PLURAL, self.name, body
            )
        except ApiException as error:
            if error.status == 409:
                raise StaleRead(
                    f"job {self.namespace}/{self.name} changed since resourceVersion {self.resource_version}"
                ) from None
            raise
        if isinstance(result, dict) and result.get("metadata", {}).get("resourceVersion"):
            self.resource_version = result["metadata"]["resourceVersion"]
        self.vouched = True

    def check(self) -> None:
        """Before touching pods: an empty conditional patch fails with 409 if the read is stale."""
        if not self.vouched:
            self.patch_status({})


_POD_ACTIONS = (CreatePod, DeletePod, ReleasePod, AnnotatePod)


class CreateRefusedError(Exception):
    """The apiserver refused one of the attempt's objects with a 4xx that is not a conflict."""

    def __init__(self, refusal: refusals.Refusal, error: ApiException):
        super().__init__(f"{refusal.kind} {refusal.name}: {error.status} {refusal.message}")
        self.refusal, self.error = refusal, error


def execute(
    runtime: Runtime,
    job: FineTuneJob,
    uid: str,
    world: World,
    actions: list[Action],
    resource_version: str = "",
) -> float | None:
    """Carry out `actions`; a number means: stop this pass and look again after that many seconds."""
    core, custom, _ = runtime.apis()
    namespace, name = job.metadata.namespace or "default", job.metadata.name
    fence = Fence(custom, namespace, name, resource_version)
    for action in actions:
        if isinstance(action, _POD_ACTIONS):
            fence.check()
        if isinstance(action, PatchStatus):
            fence.patch_status(action.patch)
        elif isinstance(action, CreatePod):
            try:
                created = _create_attempt(runtime, job, uid, world, action)
            except CreateRefusedError as refused:
                step = refusals.refused_step(world, refused.refusal)
                if not step.actions and step.requeue_seconds is None:
                    raise refused.error from None  # transient: the loop's backoff retries
                log.warning(
                    "create refused: %s",
                    refused,
                    extra={"finetunejob": f"{namespace}/{name}", "attempt": action.attempt},
                )
                execute(runtime, job, uid, world, step.actions, fence.resource_version)
                return step.requeue_seconds
            if created:  # before the status write: should that lose a race, the next pass adopts silently
                _event(
                    core,
                    runtime.config.instance,
                    job,
                    uid,
                    "Normal",
                    action.event_reason,
                    action.event_message,
                )
            fence.patch_status(action.status_patch)
            log.info(
                "created pod",
                extra={
                    "finetunejob": f"{namespace}/{name}",
                    "attempt": action.attempt,
                    "run_directory": action.run_directory,
                },
            )
        elif isinstance(action, AdoptPod):
            fence.patch_status(action.status_patch)
            log.info("adopted pod %s", action.name, extra={"finetunejob": f"{namespace}/{name}"})
        elif isinstance(action, DeletePod):
            _delete_pod(core, namespace, action)
        elif isinstance(action, ReleasePod):
            _release(core, namespace, action.name)
        elif isinstance(action, Event):
            _event(core, runtime.config.instance, job, uid, action.type, action.reason, action.message)
        elif isinstance(action, AnnotatePod):
            try:
                core.patch_namespaced_pod(
                    action.name, namespace, {"metadata": {"annotations": action.annotations}}
                )
            except ApiException as error:
                if error.status != 404:
                    raise
        elif isinstance(action, Decided):
            log.info(
                "decision: %s (%s) → %s",
                action.outcome.reason,
                action.outcome.end,
                action.plan.action,
                extra={
                    "finetunejob": f"{namespace}/{name}",
                    "cause": action.plan.cause,
                    "change": action.plan.change,
                    "lost_steps": action.plan.lost_steps,
                    "delay_seconds": action.plan.delay_seconds,
                },
            )
        elif isinstance(action, Recovered):
            runtime.metrics.observe_recovery(namespace, name, action.seconds)
            log.info("recovered after %.1f s", action.seconds, extra={"finetunejob": f"{namespace}/{name}"})
    return None


def _refused(kind: str, body: dict[str, Any], error: ApiException) -> CreateRefusedError | None:
    """A 4xx other than 409 (conflict) and 404/429 (namespace going away, throttling): a refusal."""
    if error.status is None or not 400 <= error.status < 500 or error.status in (404, 409, 429):
        return None
    name = str((body.get("metadata") or {}).get("name", ""))
    return CreateRefusedError(refusals.refusal_from_response(kind, name, error.status, error.body), error)


def _create_or_keep(create: Any, namespace: str, body: dict[str, Any]) -> None:
    try:
        create(namespace, body)
    except ApiException as error:
        if error.status == 409:
            return
        raise _refused(body["kind"], body, error) or error from None


def _create_attempt(runtime: Runtime, job: FineTuneJob, uid: str, world: World, action: CreatePod) -> bool:
    """Create the attempt's objects and pod; False when the pod already existed (ours: adopted)."""
    core, _, rbac = runtime.apis()
    namespace = job.metadata.namespace or "default"
    effective = world.status.effective
    pvc = builders.build_pvc(job, uid)
    if pvc is not None:
        _create_or_keep(core.create_namespaced_persistent_volume_claim, namespace, pvc)
    _create_or_keep(
        core.create_namespaced_service_account, namespace, builders.build_service_account(job, uid)
    )
    _create_or_keep(rbac.create_namespaced_role, namespace, builders.build_role(job, uid))
    _create_or_keep(rbac.create_namespaced_role_binding, namespace, builders.build_role_binding(job, uid))
    cm = builders.build_config_map(job, uid, effective)
    try:
        try:
            core.create_namespaced_config_map(namespace, cm)
        except ApiException as error:
            if error.status != 409:
                raise
            core.replace_namespaced_config_map(cm["metadata"]["name"], namespace, cm)
    except ApiException as error:
        raise _refused("ConfigMap", cm, error) or error from None
    ckpt = world.status.last_checkpoint
    pending = world.status.pending
    pod = builders.build_pod(
        job,
        uid,
        action.attempt,
        effective=effective,
        run_directory=action.run_directory,
        last_checkpoint_time=ckpt.time if ckpt else None,
        last_checkpoint_step=ckpt.step if ckpt else None,
        unreachable_toleration_seconds=runtime.config.unreachable_toleration_seconds,
        cause=(pending.cause or pending.reason) if pending else None,
        avoid_node=pending.avoid_node if pending else None,
    )
    try:
        core.create_namespaced_pod(namespace, pod)
    except ApiException as error:
        if error.status != 409:
            raise _refused("Pod", pod, error) or error from None
        existing = core.read_namespaced_pod(pod["metadata"]["name"], namespace)
        owners = {o.uid for o in existing.metadata.owner_references or []}
        if uid not in owners:
            raise RuntimeError(f"pod {pod['metadata']['name']} exists and belongs to someone else") from None
        return False  # ours (created by an earlier pass whose status write was lost): adopt it
    return True


def _delete_pod(core: Any, namespace: str, action: DeletePod) -> None:
    try:
        if action.grace_seconds is None:
            core.delete_namespaced_pod(action.name, namespace)
        else:
            core.delete_namespaced_pod(action.name, namespace, grace_period_seconds=action.grace_seconds)
    except ApiException as error:
        if error.status != 404:
            raise


def _release(core: Any, namespace: str, name: str) -> None:
    """Remove our finalizer with a JSON patch guarded by a test op (other finalizers are left alone)."""
    for _ in range(5):
        try:
            pod = core.read_namespaced_pod(name, namespace)
        except ApiException as error:
            if error.status == 404:
                return
            raise
        finalizers = list(pod.metadata.finalizers or [])
        if POD_FINALIZER not in finalizers:
            return
        index = finalizers.index(POD_FINALIZER)
        ops = [
            {"op": "test", "path": f"/metadata/finalizers/{index}", "value": POD_FINALIZER},
            {"op": "remove", "path": f"/metadata/finalizers/{index}"},
        ]
        try:
            core.patch_namespaced_pod(name, namespace, ops)
            return
        except ApiException as error:
            if error.status == 404:
                return
            if error.status not in (409, 422):
                raise


def _event(
    core: Any, instance: str, job: FineTuneJob, uid: str, type_: str, reason: str, message: str
) -> None:
    namespace = job.metadata.namespace or "default"
    now = datetime.now(UTC)
    body = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{job.metadata.name}.", "namespace": namespace},
        "involvedObject": {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": KIND,
            "name": job.metadata.name,
            "namespace": namespace,
            "uid": uid,
        },
        "type": type_,
        "reason": reason[:128],
        "message": message[:1024],
        "firstTimestamp": format_time(now),
        "lastTimestamp": format_time(now),
        "count": 1,
        "action": "Reconcile",
        "source": {"component": "finetune-operator"},
        "reportingComponent": "finetune.dev/operator",
        "reportingInstance": instance[:128],
    }
    try:
        core.create_namespaced_event(namespace, body)
    except ApiException as error:  # an Event is worth a log line, never a failed reconcile
        log.warning("could not post event %s: %s", reason, error.reason)
    log.info("event %s: %s", reason, message, extra={"finetunejob": f"{namespace}/{job.metadata.name}"})


__all__ = ["run_once"]
