"""Thin kopf handlers: read the world, ask decisions.reconcile what to do, have executor.py do it, repeat.

One kopf daemon per FineTuneJob runs that loop, so a job's decisions are serialized (no two handlers racing
on the same job). Pod events and relevant job changes wake the loop at once; otherwise it looks again when
`reconcile` asked (backoff deadline, pending timeout, node check) or every 30 s. All state that matters is
in the job's status (attempt, counters, budgets, the pending decision), so a restarted operator continues
where the previous one stopped.

Single writer: every status write of a pass is conditional on the resourceVersion the pass read (a merge
patch carrying metadata.resourceVersion), and a pass that touches pods before writing status first checks
that precondition with an empty conditional patch. A 409 means someone else (another operator replica, the
trainer) changed the job since: the pass stops and the next one re-reads and decides again. So a decision
computed on a stale read is never recorded and never counted twice (executor.Fence). Leader election
(leader.py, chart default) keeps a second replica from acting at all. Pods no job loop will release:
finalizers.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from datetime import UTC, datetime
from typing import Any

import kopf
from finetune_api.models import GROUP, PLURAL, VERSION, FineTuneJob, FineTuneJobStatus
from finetune_api.trainer_config import InvalidManifest, parse_job
from kubernetes.client.rest import ApiException

from finetune_operator import builders, decisions, kueue, views
from finetune_operator.actions import World
from finetune_operator.executor import StaleRead, execute
from finetune_operator.finalizers import (
    release_if_job_going,
    release_job_pods,
    release_orphan,
    release_orphans,
)
from finetune_operator.names import KOPF_FINALIZER, LABEL_JOB, POD_FINALIZER
from finetune_operator.runtime import Runtime, response_json, runtime_of

log = logging.getLogger("finetune_operator")
#: The handlers below register here on import (kopf's default registry); main.py runs kopf with it, which also
#: keeps the import of this module from looking unused.
REGISTRY = kopf.get_default_registry()

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
        await asyncio.get_running_loop().run_in_executor(None, release_orphan, runtime, dict(body), namespace)


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
        await loop.run_in_executor(None, release_if_job_going, runtime, namespace, name)


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
    node_trouble = any(n.exists and n.ready != "True" for n in nodes.values())
    claim: dict[str, Any] | None = None
    # Read once: the next pod needs it (a terminating claim), and a pod on a troubled node (is it shared?).
    if status.phase not in ("Succeeded", "Failed") or node_trouble:
        try:
            claim = response_json(
                core.read_namespaced_persistent_volume_claim(
                    builders.pvc_name(job), namespace, _preload_content=False
                )
            )
        except ApiException as error:
            if error.status != 404:
                raise
    shared_volume = node_trouble and checkpoint_volume_shared(job, claim)
    labels = meta.get("labels") or {}
    queue = labels.get(kueue.LABEL_QUEUE_NAME) or None
    workload, kueue_installed = (None, True)
    if queue is not None:
        workload, kueue_installed = read_workload(custom, namespace, kueue.workload_name(name))
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
        queue=queue,
        priority_class=labels.get(kueue.LABEL_PRIORITY_CLASS) or None,
        workload=workload,
        kueue_installed=kueue_installed,
        next_resources_key=kueue.resources_key(builders.trainer_resources(job, status.effective))
        if queue is not None
        else None,
    )
    return job, uid, world, str(meta.get("resourceVersion") or "")


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


def checkpoint_volume_shared(job: FineTuneJob, claim: dict[str, Any] | None) -> bool:
    """Whether the checkpoint claim may be mounted read-write on several nodes (ReadWriteMany requested, or
    offered by the bound volume: an NFS volume does not enforce a ReadWriteOnce request across nodes).
    `claim`: the claim as read (None: not there yet, the spec's access mode decides)."""
    if claim is None:
        return views.volume_shared([job.spec.checkpoint.access_mode])
    requested = (claim.get("spec") or {}).get("accessModes") or []
    offered = (claim.get("status") or {}).get("accessModes") or []
    return views.volume_shared([*requested, *offered] or [job.spec.checkpoint.access_mode])


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


__all__ = ["run_once"]
